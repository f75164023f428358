"""ALGORITHM.md §4 point 4: candidates per budget, chosen on calibration (issues 27.4, 28.1, 29).

Depth 1 (routing) … ``max_depth`` and the constant-estimate hull compete on the calibration queries; the
best quality within the budget is kept, or the simplest candidate inside the noise of it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernel
from estimators.estimator import Estimates
from training.episodes import TableEpisodes
from training.metrics import upper_hull
from training.policy import (
    TIE_STANDARD_ERRORS,
    Policy,
    choose_policy,
    describe,
    fit_candidates,
    hull_policy,
    single_outcomes,
)

MODELS = ("cheap", "mid", "dear")


def episodes_from(ante, post, truth, cost, latency=None) -> TableEpisodes:
    """Table episodes: ex-ante estimates ``ante``, post-hoc ``post`` (σ 0 once run), true quality and cost."""
    sigma = np.full_like(ante, 0.3)
    lat = None if latency is None else (np.tile(latency.mean(0), (len(latency), 1)), latency, latency)
    return TableEpisodes(ante, sigma, np.tile(cost.mean(0), (len(cost), 1)), post, np.zeros_like(post),
                         cost, truth, cost, parallel=False, latency=lat)


def two_models(n: int, *, ante: str, seed: int = 0):
    """``cheap`` right on 50 % of the queries, ``dear`` (ten times dearer) on 90 %, post-hoc estimates exact.

    ``ante`` sets what the router knows before any model runs: ``"exact"`` (graded qualities, known exactly:
    routing is as good as it gets), ``"blind"`` (each model's mean: only a cascade, which sees ``cheap``'s answer,
    can do better than the hull) or ``"inverted"`` (one minus the truth, and the post-hoc estimates inverted too:
    every learned decision misleads, so the hull wins).
    """
    rng = np.random.default_rng(seed)
    if ante == "exact":  # graded answers: exact estimates rarely tie, so routing can spend any budget
        truth = np.stack([rng.random(n), rng.uniform(0.3, 1.0, n)], axis=1)
    else:
        truth = np.stack([rng.random(n) < 0.5, rng.random(n) < 0.9], axis=1).astype(float)
    cost = np.tile([1.0, 10.0], (n, 1))
    post = truth.copy()
    if ante == "exact":
        estimate = truth.copy()
    elif ante == "blind":
        estimate = np.tile(truth.mean(0), (n, 1))
    else:
        estimate = 1.0 - truth
        post = 1.0 - truth
    return episodes_from(estimate, post, truth, cost), truth, cost


def choose(episodes, budget, **options):
    return choose_policy(episodes, fit_candidates(episodes, budget, max_depth=2, **options))


def test_depth_one_is_kept_where_routing_wins_on_calibration():
    episodes, _, _ = two_models(400, ante="exact")
    choice = choose(episodes, 5.0)
    assert describe(choice.policy, MODELS[::2]) == "routing"
    assert choice.policy.strategy == "routing" and choice.policy.constant_estimates is None
    # Exact ex-ante estimates: nothing beats routing on them, so depth 2 is at best tied and routing is simpler.
    names = [describe(p, MODELS[::2]) for p in choice.candidates]
    assert names[1:] == ["routing", "cascade_routing depth 2"]
    assert choice.candidates[2].calibration_quality <= choice.policy.calibration_quality + 1e-12


def test_a_deeper_cascade_is_kept_where_routing_loses_on_calibration():
    episodes, truth, _ = two_models(400, ante="blind")
    choice = choose(episodes, 6.5)
    assert choice.policy.strategy == "cascade_routing" and choice.policy.max_depth == 2
    routing = next(p for p in choice.candidates if p.strategy == "routing" and p.constant_estimates is None)
    # Routing on blind estimates is at best a fixed mix of the two: 0.5 + (0.9 - 0.5)·(6.5 - 1)/9 on average;
    # running cheap, then dear only where cheap was wrong, gets 0.5 + 0.5·0.9 at cost 1 + 10·0.5 = 6.
    cheap, dear = truth.mean(0)
    assert routing.calibration_quality <= cheap + (dear - cheap) * 5.5 / 9 + 0.01
    assert choice.policy.calibration_quality > routing.calibration_quality + 0.1


def test_the_hull_is_kept_where_the_learned_policy_loses_on_calibration_and_not_where_it_wins():
    misled, _, cost = two_models(400, ante="inverted")
    choice = choose(misled, 5.0)
    assert choice.policy.constant_estimates is not None
    gamma = (5.0 - cost[:, 0].mean()) / (cost[:, 1].mean() - cost[:, 0].mean())
    assert choice.policy.gamma == pytest.approx(gamma, abs=0.01)
    assert describe(choice.policy, ("cheap", "dear")) == f"hull mix: cheap + dear (γ {choice.policy.gamma:.3g} to dear)"
    assert choice.policy.calibration_cost <= 5.0
    assert choice.policy.calibration_quality > max(p.calibration_quality for p in choice.candidates[1:]) + 0.1
    informed, _, _ = two_models(400, ante="exact")
    won = choose(informed, 5.0)
    assert won.policy.constant_estimates is None and won.candidates[0].constant_estimates is not None
    assert won.policy.calibration_quality > won.candidates[0].calibration_quality + 0.05


def test_equal_quality_keeps_the_cheapest_model():
    rng = np.random.default_rng(3)
    n = 300
    right = (rng.random(n) < 0.6).astype(float)
    truth = np.tile(right[:, None], (1, 3))
    cost = np.tile([1.0, 3.0, 9.0], (n, 1))
    noisy = np.clip(truth + rng.normal(0, 0.4, truth.shape), 0, 1)
    episodes = episodes_from(noisy, truth, truth, cost)
    for budget in (2.0, 5.0, 20.0):
        choice = choose(episodes, budget)
        assert describe(choice.policy, MODELS) == "hull: single model cheap"
        assert choice.policy.calibration_cost == pytest.approx(1.0)


def test_the_hull_is_the_best_mix_of_two_neighbouring_hull_models():
    rng = np.random.default_rng(5)
    n = 500
    truth = (rng.random((n, 4)) < [0.3, 0.55, 0.5, 0.8]).astype(float)
    cost = np.tile([1.0, 2.0, 4.0, 8.0], (n, 1))
    episodes = episodes_from(truth, truth, truth, cost)
    singles = single_outcomes(episodes)
    assert [o.mean_quality for o in singles] == pytest.approx(truth.mean(0).tolist())
    assert [o.mean_cost for o in singles] == pytest.approx([1.0, 2.0, 4.0, 8.0])
    hull = upper_hull(cost.mean(0), truth.mean(0)).tolist()
    assert 2 not in hull  # model 2 is dominated by model 1
    for budget in (1.5, 3.0, 6.0, 8.0, 12.0):
        policy = hull_policy(episodes, budget, singles=singles)
        # Independently: the LP over mixes of single models, on the calibration means.
        left = max(m for m in hull if cost[0, m] <= budget)
        right = min((m for m in hull if cost[0, m] > budget), default=None)
        share = 0.0 if right is None else (budget - cost[0, left]) / (cost[0, right] - cost[0, left])
        expected = truth[:, left].mean() + (0 if right is None else share * (truth[:, right].mean()
                                                                             - truth[:, left].mean()))
        assert policy.calibration_cost <= budget
        assert policy.calibration_quality == pytest.approx(expected, abs=2.5 / n + 0.02)
    assert hull_policy(episodes, 0.5, singles=singles) is None  # below the cheapest model


def test_a_served_hull_mix_calls_the_dear_model_with_probability_gamma():
    k, n, gamma = 4, 20_000, 0.3
    quality = np.array([0.4, 0.6, 0.55, 0.8])
    cost = np.array([1.0, 2.0, 3.0, 6.0])
    lam = (quality[3] - quality[1]) / (cost[3] - cost[1])
    policy = Policy(strategy="routing", lambdas=np.array([lam]), thresholds=None, gamma=gamma, max_depth=1,
                    force_order=False, n_samples=64, budget=3.0, constant_estimates=np.vstack([quality, cost]))
    assert describe(policy, "abcd") == "hull mix: b + d (γ 0.3 to d)"
    from training.router import prompt_uniforms
    u = prompt_uniforms([f"prompt {i}" for i in range(n)])
    # Whatever the estimator says: the constants decide.
    noise = np.random.default_rng(0).random((n, k))
    chosen, _ = policy.plan(Estimates(noise, noise, noise), np.zeros((n, k), bool), u, parallel=False)
    assert set(np.unique(chosen)) == {1, 3}
    assert (chosen == 3).mean() == pytest.approx(gamma, abs=4 * math.sqrt(gamma * (1 - gamma) / n))
    # A query that already ran a model stops (routing); a repeated prompt gets the same model.
    again, _ = policy.plan(Estimates(noise, None, noise), np.zeros((n, k), bool), u, parallel=True)
    assert (again == chosen).all()
    run = np.zeros((n, k), bool)
    run[:, 1] = True
    stop, _ = policy.plan(Estimates(noise, None, noise), run, u, parallel=False)
    assert (stop == kernel.STOP).all()


def test_a_served_hull_mix_through_the_router_and_its_exclusions(fitted_artifact):
    from training.router import Router, load_router
    from training.synthetic import make_benchmark
    router = load_router(fitted_artifact[0], warm_up=False)
    k = len(router.models_)
    quality, cost = np.linspace(0.3, 0.9, k), np.geomspace(1.0, 50.0, k)
    hull = upper_hull(cost, quality)
    a, b = int(hull[0]), int(hull[1])
    lam = (quality[b] - quality[a]) / (cost[b] - cost[a])
    policy = Policy(strategy="routing", lambdas=np.array([lam]), thresholds=None, gamma=0.25, max_depth=1,
                    force_order=False, n_samples=64, budget=1.0, constant_estimates=np.vstack([quality, cost]))
    served = Router(router.estimator, (policy,), router.models_)
    frame = make_benchmark(3000, seed=11).drop_duplicates("query_id")
    prompts, tasks, subtasks = list(frame["prompt"]), list(frame["task"]), list(frame["subtask"])
    chosen = served.decide(prompts, tasks=tasks, subtasks=subtasks)
    assert set(chosen) == {router.models_[a], router.models_[b]}
    share = np.mean([c == router.models_[b] for c in chosen])
    assert share == pytest.approx(0.25, abs=4 * math.sqrt(0.25 * 0.75 / len(prompts)))
    # Excluding the dear model of the mix routes on the constants of the models that remain.
    excluded = served.decide(prompts[:50], tasks=tasks[:50], subtasks=subtasks[:50],
                             excluded=[[router.models_[b]]] * 50)
    rest = [m for m in range(k) if m != b]
    best = rest[int(np.argmax(quality[rest] - lam * cost[rest]))]
    assert set(excluded) == {router.models_[best]}
    # Batch scoring replays logged traffic through the same policy: each query runs the model decide chose.
    from training.serving.replay import score_batch
    logged = make_benchmark(200, seed=12)
    scored = score_batch(served, logged, parallel=False).set_index("query_id")
    queries = logged.drop_duplicates("query_id")
    live = served.decide(list(queries["prompt"]), tasks=list(queries["task"]), subtasks=list(queries["subtask"]))
    assert [list(scored.loc[q, "models_run"]) for q in queries["query_id"]] == [[m] for m in live]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(20, 120), st.integers(2, 4), st.floats(0.05, 1.0))
def test_the_kept_candidate_is_never_below_the_calibration_hull(seed, n, k, where):
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, k)) < rng.uniform(0.2, 0.9, k)).astype(float)
    cost = np.geomspace(1.0, 20.0, k) * rng.lognormal(0, 0.2, (n, k))
    ante = np.clip(rng.uniform(-1, 1) * truth + rng.normal(0.5, 0.3, truth.shape), 0, 1)
    episodes = episodes_from(ante, np.clip(truth + rng.normal(0, 0.3, truth.shape), 0, 1), truth, cost)
    means = cost.mean(0)
    budget = float(means.min() + where * (means.max() - means.min()))
    choice = choose_policy(episodes, fit_candidates(episodes, budget, max_depth=3))
    kept = choice.policy
    assert kept.calibration_cost <= budget * (1 + 1e-12)
    hull = hull_policy(episodes, budget)
    if hull is not None:
        assert kept.calibration_quality >= hull.calibration_quality - 1e-12
    best = max(p.calibration_quality for p, ok in zip(choice.candidates, choice.within, strict=True) if ok)
    gap = best - kept.calibration_quality
    assert gap <= TIE_STANDARD_ERRORS * choice.standard_errors[choice.kept] + 1e-12


def test_candidates_meet_both_budgets_with_a_latency_budget():
    rng = np.random.default_rng(8)
    n = 300
    truth = (rng.random((n, 3)) < [0.4, 0.7, 0.85]).astype(float)
    cost = np.tile([1.0, 3.0, 9.0], (n, 1))
    latency = np.tile([0.2, 1.5, 1.0], (n, 1)) * rng.lognormal(0, 0.1, (n, 3))
    episodes = episodes_from(np.clip(truth + rng.normal(0, 0.5, truth.shape), 0, 1), truth, truth, cost, latency)
    for budget, seconds in ((4.0, 0.6), (6.0, 1.0), (9.0, 0.5)):
        choice = choose_policy(episodes, fit_candidates(episodes, budget, max_depth=2, latency_budget=seconds))
        for policy, within in zip(choice.candidates, choice.within, strict=True):
            if within:
                assert policy.calibration_cost <= budget and policy.calibration_latency <= seconds
        assert choice.within[choice.kept]
        hull = hull_policy(episodes, budget, latency_budget=seconds)
        if hull is not None:
            assert hull.calibration_latency <= seconds and hull.calibration_cost <= budget


@pytest.mark.slow
def test_fit_keeps_the_cheapest_model_on_a_table_where_every_model_ties(tmp_path, capsys):
    """Issue 29: a quality tie used to keep cascade routing at 2.5-22.6 times the cheapest model's cost."""
    from training.fit import main
    rng = np.random.default_rng(0)
    rows = []
    for q in range(400):
        right = float(rng.random() < 0.6)
        for model, price in zip(MODELS, (1e-4, 5e-4, 3e-3), strict=True):
            rows.append({"query_id": f"q{q}", "model": model, "quality": right, "cost_usd": price,
                         "prompt": f"question {q % 23} about {q % 7}", "task": f"t{q % 3}"})
    data = tmp_path / "tie.parquet"
    pd.DataFrame(rows).to_parquet(data)
    code = main(["--data", str(data), "--estimator", "linear", "--out", str(tmp_path / "r.joblib"),
                 "--report", str(tmp_path / "report"), "--quiet", "--budget", "0.0003", "0.001", "0.002"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    for row in report["budgets"]:
        assert row["chosen"] == "hull: single model cheap"
        assert row["models_per_query"] == 1.0 and row["test_cost"] == pytest.approx(1e-4)
        assert any(c["name"].startswith("cascade_routing depth") for c in row["candidates"])
    assert "hull: single model cheap" in out


def test_paired_budget_differences_equal_a_plain_resampling_loop():
    from training.metrics import paired_budget_differences
    rng = np.random.default_rng(4)
    a, b = rng.random((3, 50)), rng.random((3, 50))
    found = paired_budget_differences(a, b, n_boot=300, seed=7)
    draws = np.random.default_rng(7).integers(0, 50, size=(300, 50))  # the same resamples, drawn the same way
    for j, interval in enumerate(found):
        means = [float(np.mean(a[j, rows] - b[j, rows])) for rows in draws]
        assert interval.estimate == pytest.approx(float(np.mean(a[j] - b[j])), abs=1e-15)
        assert (interval.low, interval.high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)
    same = paired_budget_differences(a, a, n_boot=20)
    assert all(i == (0.0, 0.0, 0.0) for i in same)
    with pytest.raises(ValueError, match="same shape"):
        paired_budget_differences(a, b[:, :10])


@pytest.mark.slow
def test_the_protocol_reports_per_budget_differences_and_the_candidate_kept():
    from training.protocol import evaluate_strategies
    from training.synthetic import default_table
    report = evaluate_strategies(default_table(400, seed=3), estimator="linear", calibration_fraction=0.25,
                                 train_fraction=0.5, n_boot=50, strategies=("routing", "cascade_routing"),
                                 max_depth=2, progress=False)
    rows = report.to_dict()["budget_differences"]["cascade_routing-routing"]
    cascade, routing = report.curves["cascade_routing"], report.curves["routing"]
    assert [r["budget"] for r in rows] == [p["budget"] for p in cascade]
    for row, c, r in zip(rows, cascade, routing, strict=True):
        assert row["difference"] == pytest.approx(c["quality"] - r["quality"], abs=1e-12)
        assert row["low"] <= row["difference"] <= row["high"]
        assert c["chosen"].startswith(("hull", "routing", "cascade_routing depth"))
        assert r["chosen"].startswith(("hull", "routing"))
