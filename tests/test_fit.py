"""``python -m training.fit`` end to end, the router it saves, and the strict loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.artifact import manifest_path
from training.fit import main, parse_args
from training.router import Router, load_router
from training.synthetic import make_benchmark


@pytest.fixture(scope="module")
def fitted(fitted_artifact):
    return fitted_artifact


def test_fit_writes_report_plot_artifact_and_manifest(fitted):
    out, report_dir = fitted
    report = json.loads((report_dir / "report.json").read_text())
    assert [b["budget"] for b in report["budgets"]] == [0.0004, 0.001]
    for row in report["budgets"]:
        assert row["calibration_cost"] <= row["budget"] or row["calibration_status"] != "met"
        assert row["test_cost"] > 0 and 0 <= row["test_quality"] <= 1
        assert row["best_single_model"] in report["models"]
    assert set(report["auc"]) == {"cascade_routing", "linear"}
    assert report["n_train"] + report["n_calibration"] + report["n_test"] == 700
    assert (report_dir / "quality_cost.png").stat().st_size > 1000
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["models"] == report["models"]
    assert manifest["budgets"] == [0.0004, 0.001]
    assert manifest["data_fingerprint"] == report["data_fingerprint"]


def test_loaded_router_decides_exactly_as_before_saving(fitted):
    out, _ = fitted
    router = load_router(out)
    assert isinstance(router, Router)
    frame = make_benchmark(40, seed=7)
    queries = frame.drop_duplicates("query_id")
    prompts, tasks, subtasks = list(queries["prompt"]), list(queries["task"]), list(queries["subtask"])
    first = router.decide(prompts, tasks=tasks, subtasks=subtasks)
    again = load_router(out).decide(prompts, tasks=tasks, subtasks=subtasks)
    assert first == again
    assert all(name in router.models_ for name in first if name is not None)
    # Drive one query's cascade with the logged answers standing in for model calls.
    row = frame[frame["query_id"] == queries["query_id"].iloc[0]].set_index("model")
    observed: dict = {}
    for _ in range(len(router.models_)):
        nxt = router.decide(prompts[:1], [observed], tasks=tasks[:1], subtasks=subtasks[:1])[0]
        if nxt is None:
            break
        observed[nxt] = {"response": row.loc[nxt, "response"], "cost": float(row.loc[nxt, "cost_usd"])}
    assert observed, "the policy always runs at least one model"
    assert router.select(prompts[:1], [observed], tasks=tasks[:1], subtasks=subtasks[:1])[0] in observed


def test_router_refuses_bad_observations(fitted):
    router = load_router(fitted[0])
    with pytest.raises(ValueError, match="unknown model 'gpt-9'"):
        router.decide(["hi"], [{"gpt-9": {"cost": 0.1}}], tasks=["code"], subtasks=[""])
    with pytest.raises(ValueError, match="has no 'cost'"):
        router.decide(["hi"], [{router.models_[0]: {"response": "A"}}], tasks=["code"], subtasks=[""])
    with pytest.raises(ValueError, match="below every fitted budget"):
        router.decide(["hi"], budget=1e-9, tasks=["code"], subtasks=[""])


def test_corrupted_artifact_and_wrong_manifest_are_refused(fitted, tmp_path):
    out, _ = fitted
    copy = tmp_path / "router.joblib"
    copy.write_bytes(out.read_bytes())
    manifest = json.loads(manifest_path(out).read_text())
    manifest["artifact_file"] = copy.name
    manifest_path(copy).write_text(json.dumps(manifest))
    assert load_router(copy).models_ == tuple(manifest["models"])
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_router(copy)
    copy.write_bytes(out.read_bytes())
    manifest_path(copy).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        load_router(copy)


def _write(frame: pd.DataFrame, folder: Path) -> str:
    path = folder / "table.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("corrupt, message", [
    (lambda f: f.drop(columns=["cost_usd"]), "cost_usd"),
    (lambda f: pd.concat([f, f.iloc[[0]]]), "occur more than once"),
    (lambda f: f.assign(cost_usd=np.where(np.arange(len(f)) == 3, -1.0, f["cost_usd"])), "row 3"),
])
def test_bad_data_exits_2_with_one_line(tmp_path, capsys, corrupt, message):
    path = _write(corrupt(make_benchmark(100, seed=1)), tmp_path)
    code = main(["--data", path, "--out", str(tmp_path / "r.joblib"), "--report", str(tmp_path), "--quiet"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(error) == 1 and error[0].startswith("error:") and message in error[0]


def test_unknown_model_and_missing_file_exit_2(tmp_path, capsys):
    path = _write(make_benchmark(100, seed=1), tmp_path)
    assert main(["--data", path, "--models", "nope", "--quiet"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "missing.csv"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_help_explains_every_flag_and_the_exit_codes(capsys):
    assert main(["--help"]) == 0  # returned, not raised
    text = capsys.readouterr().out
    for flag in ("--data", "--prices", "--models", "--budget", "--strategy", "--max-depth",
                 "--estimator", "--seed", "--out", "--report", "--quiet"):
        assert flag in text
    assert "default" in text
    assert "exit status: 0 on success" in text and "2 on bad input" in text
    assert "1 if an output" in " ".join(text.split())


@pytest.mark.parametrize("argv", [["--max-depth", "0"], ["--budget", "-1"], ["--no-such-flag"],
                                  ["--fractions", "0.5", "0.5", "0.5"]])
def test_usage_errors_return_2_without_raising(argv, capsys):
    assert main(argv) == 2  # a SystemExit escaping main would fail the test
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--out", "--report"])
def test_an_output_that_cannot_be_written_exits_1(tmp_path, capsys, flag):
    blocker = tmp_path / "some_file"
    blocker.write_text("a regular file, not a directory")
    target = blocker / ("out.joblib" if flag == "--out" else "report")
    paths = {"--out": tmp_path / "r.joblib", "--report": tmp_path / "report", flag: target}
    code = main(["--n-queries", "200", "--estimator", "linear", "--budget", "0.001", "--curve-points", "2",
                 "--quiet", *[str(part) for name, path in paths.items() for part in (name, path)]])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(error) == 1 and error[0].startswith(f"error: cannot write {flag} {target}")


def test_the_three_command_lines_agree(capsys):
    """One flag hides the progress bars, every --help lists the same exit codes, and the max_depth
    defaults of fit and evaluate differ only with the reason stated in both --help texts."""
    from training import evaluate
    from training.serving import batch as score
    fit_args = parse_args(["--quiet"])
    evaluate_args = evaluate.build_parser().parse_args(["--data", "t.csv", "--quiet"])
    score_args = score.parse_args(["--artifact", "a", "--input", "i", "--output", "o", "--quiet"])
    assert fit_args.quiet and evaluate_args.quiet and score_args.quiet
    texts = {}
    for name, run in (("fit", main), ("evaluate", evaluate.main), ("score", score.main)):
        assert run(["--help"]) == 0
        texts[name] = " ".join(capsys.readouterr().out.split())
    for text in texts.values():
        assert "exit status: 0 on success" in text and "2 on bad input" in text and "1 if an output" in text
        assert "--no-progress" not in text
    assert fit_args.max_depth == 3 and evaluate_args.max_depth == 5
    assert "python -m training.evaluate defaults to 5" in texts["fit"]
    assert "python -m training.fit saves routers with 3" in texts["evaluate"]


@pytest.mark.slow
def test_routerbench_budget_is_met_on_test_within_ten_percent(routerbench_subset, tmp_path):
    data = routerbench_subset / "routerbench_subset.parquet"
    report_dir = tmp_path / "report"
    code = main(["--data", str(data), "--budget", "0.001", "--out", str(tmp_path / "r.joblib"),
                 "--report", str(report_dir), "--quiet", "--curve-points", "2"])
    assert code == 0
    row = json.loads((report_dir / "report.json").read_text())["budgets"][0]
    # Never more than 10 % over. Under: within 15 %, since estimates that start from per-task means put
    # many queries at nearly the same estimate, so the share a λ sends to gpt-4 on calibration moves
    # more on test (2026-12-02: 11.2 % under at 0.001, the policy routing one model per query).
    assert -0.15 <= row["test_cost"] / 0.001 - 1 <= 0.10


@pytest.mark.slow
def test_fit_router_is_the_fit_the_command_line_saves(fitted):
    """The library call with the CLI's settings gives the saved router's policies, report rows and decisions."""
    from training.fit import FitReport, fit_router
    from training.synthetic import default_table, synthetic_prices

    out, report_dir = fitted  # conftest: --n-queries 700 --estimator linear --budget 0.0004 0.001
    router, fitted_report = fit_router(default_table(700, seed=0), [0.0004, 0.001], estimator="linear",
                                       prices=synthetic_prices())
    assert isinstance(router, Router) and isinstance(fitted_report, FitReport)
    saved = load_router(out, warm_up=False)
    assert router.budgets == saved.budgets and router.models_ == saved.models_
    for mine, theirs in zip(router.policies, saved.policies, strict=True):
        assert mine.rule.__class__ is theirs.rule.__class__
        for name, value in vars(theirs).items():
            if name != "search_evaluations":
                np.testing.assert_array_equal(getattr(mine, name), value, err_msg=name)
    written = json.loads((report_dir / "report.json").read_text())
    assert json.loads(json.dumps(fitted_report.metrics["budgets"])) == written["budgets"]
    assert fitted_report.metrics["auc"] == written["auc"]
    assert len(fitted_report.test) == written["n_test"]
    queries = make_benchmark(40, seed=5).drop_duplicates("query_id")
    inputs = {"tasks": list(queries["task"]), "subtasks": list(queries["subtask"])}
    for budget in router.budgets:
        assert router.decide(list(queries["prompt"]), budget=budget, **inputs) == \
            saved.decide(list(queries["prompt"]), budget=budget, **inputs)
