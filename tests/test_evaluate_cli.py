"""End-to-end tests of ``python -m training.evaluate`` through ``main(argv)``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from training.evaluate import build_parser, main

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

MODELS = ("small", "medium", "large")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def long_table(n_queries: int = 200, seed: int = 0) -> pd.DataFrame:
    """A long-format benchmark: per-query difficulty shared by three models, costs 1 : 4 : 20."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n_queries)
    skill = np.array([0.35, 0.6, 0.85])
    quality = (rng.random((n_queries, 3)) < np.clip(skill + 0.5 - difficulty[:, None], 0, 1)).astype(float)
    cost = np.array([1e-4, 4e-4, 2e-3]) * rng.uniform(0.8, 1.2, (n_queries, 3))
    return pd.DataFrame({
        "query_id": np.repeat([f"q{i:04d}" for i in range(n_queries)], 3),
        "model": np.tile(MODELS, n_queries),
        "quality": quality.ravel(),
        "cost_usd": cost.ravel(),
    })


@pytest.fixture
def csv_path(tmp_path):
    path = tmp_path / "bench.csv"
    long_table().to_csv(path, index=False)
    return path


def run(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.mark.slow
def test_end_to_end_writes_json_and_plot(csv_path, tmp_path, capsys):
    out_json, out_png = tmp_path / "report.json", tmp_path / "curves.png"
    code = run("--data", csv_path, "--calibration-fraction", 0.5, "--bootstrap", 30, "--seed", 3,
               "--json", out_json, "--plot", out_png, "--quiet")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(out_json.read_text())
    assert report["models"] == list(MODELS)
    assert report["n_calibration"] == 100 and report["n_test"] == 100
    assert report["seed"] == 3 and report["noise"] == "low"
    assert set(report["auc"]) == {"linear", "routing", "threshold_cascade", "cascade", "cascade_routing"}
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    for name in ("hull", "routing", "threshold_cascade", "cascade", "cascade_routing"):  # the hull: key 'linear'
        assert f"{name} " in captured.out
    assert f"{report['auc']['cascade_routing']:.2f}" in captured.out
    assert "seconds:" in captured.out


@pytest.mark.slow
def test_models_flag_selects_the_pool(csv_path, tmp_path, capsys):
    out_json = tmp_path / "report.json"
    code = run("--data", csv_path, "--models", "large,small", "--calibration-fraction", 0.5,
               "--bootstrap", 10, "--noise", "high", "--max-depth", 2, "--json", out_json, "--quiet")
    assert code == 0, capsys.readouterr().err
    report = json.loads(out_json.read_text())
    assert report["models"] == ["small", "large"]
    assert report["noise"] == "high"
    assert set(report["max_depth"].values()) == {2}


def test_help_explains_every_flag_with_its_default(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    parser = build_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        flag = action.option_strings[0]
        assert flag in text
        shown = parser._get_formatter()._expand_help(action)  # with the default the formatter appends
        assert action.help and ("default" in shown or action.required or action.nargs == 0), flag
    assert "exit status: 0 on success" in text and "2 on bad input" in text
    assert "1 if an output" in " ".join(text.split())


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_an_output_that_cannot_be_written_exits_1(csv_path, tmp_path, capsys, flag):
    blocker = tmp_path / "some_file"
    blocker.write_text("a regular file, not a directory")
    target = blocker / ("out.json" if flag == "--json" else "out.png")
    code = run("--data", csv_path, "--calibration-fraction", 0.5, "--bootstrap", 10, "--quiet", flag, target)
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith(f"error: cannot write {flag} {target}")


def bad(frame: pd.DataFrame, tmp_path):
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("spoil", "message"), [
    (lambda f: f.drop(columns="cost_usd"), "cost_usd"),
    (lambda f: f.drop(index=4), "are not logged; use a learned estimator"),
    (lambda f: f.assign(cost_usd=f["cost_usd"].where(f.index != 7, -0.5)), "cost"),
    (lambda f: f.assign(cost_usd=f["cost_usd"].astype(object).where(f.index != 2, "cheap")), "cost"),
    (lambda f: f.assign(quality=f["quality"].where(f.index != 5, 7.0)), "quality"),
])
def test_bad_data_exits_2_with_one_line(spoil, message, tmp_path, capsys):
    code = run("--data", bad(spoil(long_table(20)), tmp_path), "--quiet")
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert message in err


def test_unknown_model_name_exits_2(csv_path, capsys):
    code = run("--data", csv_path, "--models", "small,huge", "--quiet")
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "huge" in err


def test_missing_file_exits_2(tmp_path, capsys):
    code = run("--data", tmp_path / "absent.csv")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "absent.csv" in err


def test_too_few_queries_for_the_split_exits_2(tmp_path, capsys):
    code = run("--data", bad(long_table(10), tmp_path), "--calibration-fraction", 0.05, "--quiet")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "calibration" in err


@pytest.mark.parametrize("argv", [
    ["--no-such-flag"],
    ["--no-progress"],  # the old name of --quiet
    ["--noise", "extreme"],
    ["--calibration-fraction", "1.5"],
    ["--max-depth", "0"],
    ["--bootstrap", "many"],
    ["--models", "a,,b"],
])
def test_bad_arguments_exit_2(argv, csv_path, capsys):
    assert run("--data", csv_path, *argv) == 2  # returned: a SystemExit escaping main would fail the test
    assert "error:" in capsys.readouterr().err


def test_missing_required_argument_exits_2(capsys):
    assert main([]) == 2
    assert "--data" in capsys.readouterr().err
