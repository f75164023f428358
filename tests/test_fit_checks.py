"""Issue 12: every bad input to ``training.fit`` gets a clear answer, and no router is silently worse
than the obvious choice (budgets it cannot meet, rivals on calibration, losses on test, checks before work)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.artifact import load_artifact, manifest_path
from training.data import read_table
from training.fit import main, split
from training.splits import prompt_groups

N_QUERIES = 600
FRACTIONS = (0.5, 0.25, 0.25)
MODELS = ("cheap", "mid", "dear")
COSTS = (1e-4, 5e-4, 3e-3)


def three_models(n: int = N_QUERIES, *, test_loss: bool = False, seed: int = 0) -> pd.DataFrame:
    """Three models where ``mid`` dominates at a budget between its cost and ``dear``'s.

    ``mid`` answers 80 % of the queries, ``cheap`` 40 %, ``dear`` 50 % at six
    times mid's price. With ``test_loss`` the test queries (those of
    :func:`training.fit.split` for seed 0) flip: only ``cheap`` is right there,
    so whatever calibration picks, the router must lose to ``cheap`` on test.
    """
    rng = np.random.default_rng(seed)
    right = np.stack([rng.random(n) < 0.4, rng.random(n) < 0.8, rng.random(n) < 0.5], axis=1)
    prompts = np.array([f"question {q % 37} about {q % 11}" for q in range(n)], dtype=object)
    if test_loss:  # training.fit keeps queries with one prompt in one part (issue 29)
        test = split(n, FRACTIONS, 0, groups=prompt_groups(prompts))[2]
        right[test] = [True, False, False]
    rows = []
    for q in range(n):
        for m, (model, cost) in enumerate(zip(MODELS, COSTS, strict=True)):
            rows.append({"query_id": f"q{q:04d}", "model": model, "quality": float(right[q, m]),
                         "cost_usd": cost * (1 + 0.1 * rng.random()), "prompt": prompts[q],
                         "task": f"task{q % 3}"})
    return pd.DataFrame(rows)


def fit(tmp_path: Path, frame: pd.DataFrame | None, *extra: str) -> tuple[int, Path]:
    data = tmp_path / "data.parquet"
    if frame is not None:
        frame.to_parquet(data)
    code = main(["--data", str(data), "--estimator", "linear", "--out", str(tmp_path / "r.joblib"),
                 "--report", str(tmp_path / "report"), "--quiet", *extra])
    return code, tmp_path / "report" / "report.json"


@pytest.mark.slow
def test_budget_below_the_cheapest_policy_exits_2_naming_its_cost(tmp_path, capsys):
    code, _ = fit(tmp_path, three_models(), "--budget", "1e-5")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--budget 1e-05 cannot be met" in err and "--allow-over-budget" in err
    cheapest = float(err.split("policy costs ")[1].split()[0])
    # No policy spends less than calling the cheapest model on every calibration query.
    table = read_table(three_models())
    calibration = split(table.n_queries, FRACTIONS, 0, groups=prompt_groups(table.prompts))[1]
    assert cheapest >= table.cost[calibration].mean(axis=0).min() * (1 - 1e-5)  # printed with 6 significant digits
    assert not (tmp_path / "r.joblib").exists()


@pytest.mark.slow
def test_allow_over_budget_fits_and_says_how_much_over(tmp_path, capsys):
    code, report_path = fit(tmp_path, three_models(), "--budget", "1e-5", "--allow-over-budget")
    out = capsys.readouterr().out
    assert code == 0
    row = json.loads(report_path.read_text())["budgets"][0]
    assert row["calibration_status"] == "below_min"
    over = row["calibration_cost"] / 1e-5 - 1
    assert f"{over:.0%} over the budget" in out and "[below_min]" in out


@pytest.mark.slow
def test_budget_above_what_the_router_can_use_is_said_in_words(tmp_path, capsys):
    code, report_path = fit(tmp_path, three_models(), "--budget", "1e300")
    out = capsys.readouterr().out
    assert code == 0
    row = json.loads(report_path.read_text())["budgets"][0]
    assert row["calibration_status"] == "above_max"
    assert "budget 1e+300: above what the router can use" in out and "stays unspent" in out
    spenders = [c["calibration_cost"] for c in row["candidates"] if c["calibration_status"] == "above_max"]
    assert row["most_the_router_spends"] == max(spenders) < 1e300  # the λ = 0 candidates: all worth spending
    assert f"costs {max(spenders):.4g} per query" in out
    # Whatever won, every candidate fits in 1e300, and it is within the tie rule's noise of the best.
    kept = next(c for c in row["candidates"] if c["kept"])
    best = max(c["calibration_quality"] for c in row["candidates"])
    assert row["calibration_quality"] >= best - kept["standard_error"] - 1e-12


@pytest.fixture(scope="module")
def forced_loss(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loss")
    frame = three_models(test_loss=True)
    code, report_path = fit(folder, frame, "--budget", "0.001")
    return code, json.loads(report_path.read_text()), frame


def test_calibration_choice_among_the_hull_and_every_depth(forced_loss):
    """ALGORITHM.md §4 point 4: the constant-estimate hull, then cascade routing at depths 1 (routing) .. 3."""
    code, report, frame = forced_loss
    assert code == 0
    table = read_table(frame)
    calibration = split(table.n_queries, FRACTIONS, 0, groups=prompt_groups(table.prompts))[1]
    means_cost, means_quality = table.cost[calibration].mean(0), table.quality[calibration].mean(0)
    for row in report["curve"] + report["budgets"]:
        names = [c["name"] for c in row["candidates"]]
        depths = ["routing", "cascade_routing depth 2", "cascade_routing depth 3"]
        assert [n.split(",")[0] for n in names[-3:]] == depths
        within = [c for c in row["candidates"] if c["within_budget"]]
        if not within:  # a curve budget below every candidate: the cheapest, clamped, stays
            assert row["calibration_status"] == "below_min"
            continue
        assert all(c["calibration_cost"] <= row["budget"] for c in within)
        if means_cost.min() <= row["budget"]:  # the hull: the best mix of single models, from the calibration means
            assert names[0].startswith("hull")
            hull = row["candidates"][0]
            slope = [(means_quality[b] - means_quality[a]) / (means_cost[b] - means_cost[a])
                     for a, b in ((0, 1), (1, 2), (0, 2))]
            best_mix = max(
                [means_quality[m] for m in range(3) if means_cost[m] <= row["budget"]]
                + [means_quality[a] + s * (row["budget"] - means_cost[a]) for (a, b), s in
                   zip(((0, 1), (1, 2), (0, 2)), slope, strict=True) if means_cost[a] <= row["budget"] < means_cost[b]])
            assert hull["calibration_quality"] == pytest.approx(best_mix, abs=3 / len(calibration) + 1e-9)
            assert row["calibration_quality"] >= hull["calibration_quality"]
        best = max(c["calibration_quality"] for c in within)
        simpler_best = -np.inf
        for c in within:  # the rule: the first (simplest) within one standard error that no simpler one beats
            assert c["gap_to_best"] == pytest.approx(best - c["calibration_quality"], abs=1e-12)
            if c["gap_to_best"] <= c["standard_error"] + 1e-12 and c["calibration_quality"] >= simpler_best:
                assert c["kept"] and row["chosen"] == c["name"]
                break
            simpler_best = max(simpler_best, c["calibration_quality"])
        others = [c["calibration_quality"] for c in within if not c["kept"]]
        if others:
            assert row["calibration_margin"] == pytest.approx(row["calibration_quality"] - max(others))
    budget_row = report["budgets"][0]
    assert budget_row["test_status"] == ("met" if budget_row["test_cost"] <= budget_row["budget"] else "over")
    mid = means_quality[1]  # mid alone fits 0.001 and is a mix the hull offers
    assert budget_row["calibration_quality"] >= mid - 1e-12


def test_a_forced_test_loss_is_flagged_in_summary_and_report(forced_loss, tmp_path, capsys):
    code, report, frame = forced_loss
    row = report["budgets"][0]
    assert row["best_single_model"] == "cheap" and row["best_single_quality"] == 1.0
    assert row["test_quality"] < 1.0 and row["test_loss_to_best_single"] is True
    from training.fit import summary
    report["artifact"], report["seconds"] = {"path": "r", "manifest": "m", "signed": False}, 0
    text = summary(report)
    assert "[loses on test]" in text and "loses to cheap alone (1.000)" in text
    assert "legend:" in text and "[above_max]" in text and "calibration" in text
    over = {**row, "test_cost": 2 * row["budget"], "test_status": "over"}
    assert "[over on test]" in summary({**report, "budgets": [over]})


def test_one_model_needs_at_least_two(tmp_path, capsys):
    frame = three_models()
    code, _ = fit(tmp_path, frame[frame["model"] == "mid"])
    assert code == 2 and "need at least two models" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--out", "--report"])
def test_outputs_are_checked_before_the_data_is_read(tmp_path, capsys, flag):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    target = {"--out": str(blocker / "r.joblib"), "--report": str(blocker / "report")}
    argv = ["--data", str(tmp_path / "missing.parquet"), "--quiet", "--out", str(tmp_path / "r.joblib"),
            "--report", str(tmp_path / "report")]
    argv[argv.index(flag) + 1] = target[flag]
    # The data does not exist: exit 1 (not 2) shows the output was refused before reading it.
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {flag}") and "writable directory" in err


def test_report_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "report").write_text("x")
    assert main(["--quiet", "--report", str(tmp_path / "report"), "--out", str(tmp_path / "r.joblib")]) == 1
    assert "it is a file" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [None, 7])
def test_fit_refuses_prompts_that_are_not_strings(tmp_path, capsys, bad):
    frame = three_models()
    frame["prompt"] = frame["prompt"].astype(object)
    frame.loc[frame["query_id"] == "q0003", "prompt"] = bad
    with pytest.raises(TypeError, match=r"prompt must be a string.*row 9: " + type(bad).__name__):
        read_table(frame)
    if bad is None:  # parquet holds a string column with a null
        code, _ = fit(tmp_path, frame)
        err = capsys.readouterr().err
        assert code == 2 and "prompt must be a string" in err and "row 9" in err


@pytest.mark.slow
def test_quality_on_another_scale_needs_quality_range(tmp_path, capsys):
    frame = three_models()
    frame["quality"] *= 100
    code, _ = fit(tmp_path, frame, "--budget", "0.001")
    err = capsys.readouterr().err
    assert code == 2 and "quality must be a number in [0, 1]" in err
    assert "quality_range" in err
    code, report_path = fit(tmp_path, frame, "--budget", "0.001", "--quality-range", "0,100")
    assert code == 0 and json.loads(report_path.read_text())["budgets"][0]["test_quality"] > 1


def test_bad_quality_range_is_a_usage_error(capsys):
    assert main(["--quality-range", "1"]) == 2
    assert "LO,HI" in capsys.readouterr().err


def test_help_names_the_required_columns_and_the_prompt_slice(capsys):
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "query_id, model, quality, cost_usd" in text
    assert "prompt, task, subtask" in text and "32,768 characters" in text
    assert "--allow-over-budget" in text and "--quality-range" in text


def test_renamed_artifact_and_manifest_are_named_as_such(fitted_artifact, tmp_path):
    out, _ = fitted_artifact
    moved = tmp_path / "renamed.joblib"
    moved.write_bytes(out.read_bytes())
    manifest_path(moved).write_text(manifest_path(out).read_text())
    with pytest.raises(ValueError, match="renamed") as caught:
        load_artifact(moved)
    assert "'router.joblib'" in str(caught.value) and "share a manifest" not in str(caught.value)
