"""Latency as a second budget (ALGORITHM.md §7): data, estimates, the combined penalty and two-budget fitting."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import candidates, q_of

from estimators.estimator import Estimates, RouterEstimator
from estimators.quality import QualityEstimator, make_lightgbm_regressor
from estimators.table import RoutingTable
from training.data import derive_latency, read_table, read_throughput
from training.decision import DecisionRule
from training.episodes import EstimatorEpisodes, TableEpisodes
from training.policy import BudgetError, fit_policy

STRATEGIES = ("routing", "cascade", "cascade_routing")


def latency_episodes(seed: int, n_queries: int = 300, n_models: int = 4, *, with_latency: bool = True):
    """Cost rises with the model index, latency does not: the fastest model is not the cheapest."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n_queries, n_models)) < np.linspace(0.5, 0.9, n_models)).astype(float)
    cost = np.geomspace(1e-4, 5e-3, n_models) * rng.lognormal(0, 0.3, (n_queries, n_models))
    latency = rng.permutation(np.linspace(0.5, 4.0, n_models)) * rng.lognormal(0, 0.3, (n_queries, n_models))
    ante = np.clip(truth * 0.4 + 0.3 + rng.normal(0, 0.2, truth.shape), 0, 1)
    seconds = (np.tile(latency.mean(axis=0), (n_queries, 1)), latency, latency)
    return TableEpisodes(ante, np.full_like(ante, 0.25), np.tile(cost.mean(axis=0), (n_queries, 1)),
                         truth, np.zeros_like(truth), cost, truth, cost, parallel=False,
                         latency=seconds if with_latency else None)


# --------------------------------------------------------------------------- #
# the combined penalty, against brute force over supermodels
# --------------------------------------------------------------------------- #


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 4), st.sampled_from(STRATEGIES),
       st.floats(0.0, 50.0), st.floats(0.01, 0.5), st.integers(0, 3))
def test_the_kernel_under_the_combined_penalty_maximises_q_minus_lambda_c_minus_mu_l(seed, k, strategy, lam, mu,
                                                                                     n_run):
    rng = np.random.default_rng(seed)
    quality, cost, latency = rng.random(k), rng.random(k) * 0.01, rng.random(k) * 3.0
    run = np.zeros(k, dtype=bool)
    if strategy == "cascade":
        run[: min(n_run, k - 1)] = True  # a cascade's run set is a prefix
    else:
        run[rng.permutation(k)[: min(n_run, k - 1)]] = True
    rule = DecisionRule(strategy, np.full(k, lam), None, 0.0, k, False, 64, mu=mu)
    _, mask = rule.plan(Estimates(quality[None], np.zeros((1, k)), cost[None], None, latency[None]), run[None], None,
                        parallel=False)
    run_set = tuple(int(i) for i in np.flatnonzero(run))
    found = candidates(strategy, k, run_set, k, False)
    draws = quality[None, :]
    scored = {members: q_of(draws, members) - lam * sum(cost[i] for i in members)
              - mu * sum(latency[i] for i in members) for members in found}
    if not scored:  # routing after a model ran: nothing left to decide
        return
    best = max(scored, key=scored.get)
    chosen = tuple(i for i in range(k) if mask[0] >> i & 1)
    assert scored[chosen] == pytest.approx(scored[best], rel=1e-9, abs=1e-12)


def test_a_policy_without_latency_multiplier_gives_the_kernel_its_costs_unchanged():
    rng = np.random.default_rng(0)
    quality, cost = rng.random((50, 3)), rng.random((50, 3)) * 1e-3
    rule = DecisionRule("cascade_routing", np.full(3, 200.0), None, 0.0, 3, False, 64)
    run = np.zeros((50, 3), bool)
    plain = rule.plan(Estimates(quality, None, cost), run, None, parallel=False)
    with_latency = rule.plan(Estimates(quality, None, cost, None, rng.random((50, 3))), run, None, parallel=False)
    for a, b in zip(plain, with_latency, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="weighs latency"):
        replace(rule, mu=0.1).plan(Estimates(quality, None, cost), run, None, parallel=False)


# --------------------------------------------------------------------------- #
# two budgets in fitting
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_without_a_latency_budget_the_fitted_policy_and_its_decisions_are_todays(strategy):
    with_latency, without = latency_episodes(1), latency_episodes(1, with_latency=False)
    budget = float(with_latency.tables[7].mean(axis=0)[1])
    a = fit_policy(with_latency, budget, strategy=strategy, max_depth=3)
    b = fit_policy(without, budget, strategy=strategy, max_depth=3)
    assert a.mu == b.mu == 0.0 and a.latency_budget is None
    np.testing.assert_array_equal(a.lambdas, b.lambdas)
    assert (a.gamma, a.calibration_cost, a.calibration_quality) == (b.gamma, b.calibration_cost,
                                                                     b.calibration_quality)
    table_cost = with_latency.tables[2]
    assert a.kernel_cost(table_cost, with_latency.latency[0]) is table_cost  # μ = 0: the costs as they are
    quality, sigma, cost = (with_latency.tables[i] for i in (0, 1, 2))
    np.testing.assert_array_equal(a.decide(quality, cost, sigma=sigma, parallel=False),
                                  b.decide(quality, cost, sigma=sigma, parallel=False,
                                           latency=with_latency.latency[0]))
    assert math.isfinite(a.calibration_latency) and math.isnan(b.calibration_latency)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_with_only_a_latency_budget_the_policy_meets_it_on_calibration(strategy):
    episodes = latency_episodes(2)
    free = fit_policy(episodes, 1.0, strategy=strategy, max_depth=3)  # cost no object: the quality-maximiser
    target = 0.6 * free.calibration_latency
    policy = fit_policy(episodes, None, strategy=strategy, max_depth=3, latency_budget=target)
    replayed = policy.play(episodes)
    assert policy.mu > 0 and policy.budget == math.inf and policy.latency_budget == target
    assert replayed.mean_latency == pytest.approx(policy.calibration_latency)
    assert replayed.mean_latency <= target
    assert replayed.mean_latency >= 0.8 * target  # the budget binds: the search does not stop far below it
    assert policy.calibration_quality <= free.calibration_quality


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_both_budgets_are_met_and_each_binds_where_the_other_is_loose(strategy):
    episodes = latency_episodes(3)
    costs, free = episodes.tables[7].mean(axis=0), fit_policy(episodes, 1.0, strategy=strategy, max_depth=3)
    budget = float(costs[1])
    cost_only = fit_policy(episodes, budget, strategy=strategy, max_depth=3)
    loose = fit_policy(episodes, budget, strategy=strategy, max_depth=3, latency_budget=2 * free.calibration_latency)
    assert loose.mu == 0.0 and loose.calibration_quality == cost_only.calibration_quality
    tight_latency = 0.7 * cost_only.calibration_latency
    both = fit_policy(episodes, budget, strategy=strategy, max_depth=3, latency_budget=tight_latency)
    assert both.calibration_cost <= budget and both.calibration_latency <= tight_latency
    assert both.mu > 0 and both.calibration_quality <= cost_only.calibration_quality


def steep_episodes(seed: int, n_queries: int = 2000, n_models: int = 4) -> TableEpisodes:
    """Estimates that are one number per task and model, costs and latencies nearly equal across queries.

    The shape the per-task prior gives (``QualityEstimator.unrun_trees_``): a whole task switches model at
    nearly one multiplier, so cost and latency are steep, almost step, functions of ``λ`` and ``μ``.
    """
    rng = np.random.default_rng(seed)
    task = rng.integers(0, 3, n_queries)
    skill = rng.uniform(0.4, 0.9, (3, n_models))
    truth = (rng.random((n_queries, n_models)) < skill[task]).astype(float)
    cost = np.geomspace(1e-4, 5e-3, n_models) * rng.lognormal(0, 0.02, (n_queries, n_models))
    latency = rng.permutation(np.linspace(0.5, 4.0, n_models)) * rng.lognormal(0, 0.02, (n_queries, n_models))
    ante = skill[task]
    return TableEpisodes(ante, np.full_like(ante, 0.25), cost, truth, np.zeros_like(truth), cost, truth, cost,
                         parallel=False, latency=(latency, latency, latency))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("strategy", ["routing", "cascade_routing"])
def test_a_budget_that_binds_is_met_at_its_figure_even_where_the_outcome_is_steep(seed, strategy):
    """A positive multiplier means its budget is what stops the policy: calibration sits at the budget.

    Before the two-budget search narrowed its brackets by outcome (``BRACKET_SPREAD``), a λ inside the
    nested tolerance could land a tenth of the budget under it here (and μ = 0 pass by that overshoot).
    """
    episodes = steep_episodes(seed)
    free = fit_policy(episodes, 1.0, strategy=strategy, max_depth=3)
    budget = 2 * float(np.sort(episodes.tables[7].mean(axis=0))[1])
    for share in (0.5, 0.8):
        latency_budget = share * free.calibration_latency
        policy = fit_policy(episodes, budget, strategy=strategy, max_depth=3, latency_budget=latency_budget,
                            on_infeasible="clamp")
        if policy.budget_status != "met":
            continue
        assert policy.calibration_cost <= budget and policy.calibration_latency <= latency_budget
        if np.max(policy.lambdas) > 0:
            assert policy.calibration_cost >= 0.97 * budget
        if policy.mu > 0:
            assert policy.calibration_latency >= 0.97 * latency_budget


def test_a_latency_budget_below_the_fastest_policy_is_a_budget_error():
    episodes = latency_episodes(4)
    fastest_model = float(episodes.latency[2].mean(axis=0).min())
    with pytest.raises(BudgetError, match=r"latency budget 0\.01 s cannot be met: the fastest") as caught:
        fit_policy(episodes, None, strategy="routing", latency_budget=0.01)
    assert caught.value.fastest_latency >= 0.9 * fastest_model
    clamped = fit_policy(episodes, None, strategy="routing", latency_budget=0.01, on_infeasible="clamp")
    assert clamped.budget_status == "below_min" and clamped.calibration_latency > 0.01


@pytest.mark.parametrize("changes, message", [
    ({"latency_budget": -1.0}, "latency_budget must be a finite number >= 0"),
    ({"latency_budget": math.nan}, "latency_budget must be a finite number >= 0"),
    ({"strategy": "threshold", "latency_budget": 1.0}, "threshold cascade has no multiplier"),
    ({"per_step": True, "latency_budget": 1.0}, "per-step λ is fitted for a cost budget only"),
])
def test_bad_latency_budgets_are_refused(changes, message):
    options = {"strategy": "cascade_routing", **changes}
    with pytest.raises(ValueError, match=message):
        fit_policy(latency_episodes(5), 0.001, **options)
    with pytest.raises(ValueError, match="give a cost budget, a latency_budget, or both"):
        fit_policy(latency_episodes(5), None)


def test_a_latency_budget_without_latency_says_how_to_get_it():
    with pytest.raises(ValueError, match="latency_s column, or a throughput table"):
        fit_policy(latency_episodes(6, with_latency=False), 0.001, latency_budget=1.0)


# --------------------------------------------------------------------------- #
# data and estimates
# --------------------------------------------------------------------------- #


def long_frame(**extra):
    frame = pd.DataFrame({"query_id": ["q1", "q1", "q2", "q2"], "model": ["big", "small"] * 2,
                          "quality": [1.0, 0.0, 1.0, 1.0], "cost_usd": [0.01, 0.001, 0.02, 0.001],
                          "output_tokens": [100, 40, 300, 10]})
    for name, values in extra.items():
        frame[name] = values
    return frame


def test_latency_s_is_read_per_cell_and_bad_values_are_refused_like_costs():
    table = read_table(long_frame(latency_s=[2.0, 0.5, 3.0, 0.25]))
    assert table.models == ("small", "big")
    np.testing.assert_array_equal(table.latency, [[0.5, 2.0], [0.25, 3.0]])
    for bad in ([2.0, -0.5, 3.0, 0.25], [2.0, np.nan, 3.0, 0.25], [2.0, "fast", 3.0, 0.25],
                [2.0, np.inf, 3.0, 0.25]):
        with pytest.raises(ValueError, match=r"latency_s must be a finite number >= 0.*row 1 \(query 'q1', model"):
            read_table(long_frame(latency_s=bad))
    assert read_table(long_frame()).latency is None


def test_a_throughput_table_derives_latency_from_output_tokens():
    speeds = pd.DataFrame({"model": ["small", "big"], "ttft_s": ["0.2", "0.5"], "output_tokens_per_s": ["100", "20"]})
    table = read_table(long_frame(), throughput=speeds)
    np.testing.assert_allclose(table.latency, [[0.2 + 40 / 100, 0.5 + 100 / 20], [0.2 + 10 / 100, 0.5 + 300 / 20]])
    measured = read_table(long_frame(latency_s=[1.0, 1.0, 1.0, 1.0]), throughput=speeds)
    np.testing.assert_array_equal(measured.latency, np.ones((2, 2)))  # measured beats derived
    with pytest.raises(ValueError, match=r"no throughput for model\(s\) \['big'\]"):
        read_table(long_frame(), throughput=speeds.iloc[:1])
    with pytest.raises(ValueError, match="needs output_tokens on every logged row"):
        read_table(long_frame().drop(columns="output_tokens"), throughput=speeds)
    for column, value, message in (("ttft_s", "-1", "ttft_s must be a finite number >= 0"),
                                   ("output_tokens_per_s", "0", "output_tokens_per_s must be a finite number > 0"),
                                   ("output_tokens_per_s", "", "output_tokens_per_s must be a finite number > 0")):
        broken = speeds.copy()
        broken.loc[0, column] = value
        with pytest.raises(ValueError, match=message):
            read_throughput(broken)
    with pytest.raises(ValueError, match=r"throughput table lacks column\(s\) \['ttft_s'\]"):
        read_throughput(speeds.drop(columns="ttft_s"))


def test_a_table_refuses_a_logged_cell_without_a_latency():
    with pytest.raises(ValueError, match="latency must be finite and >= 0"):
        RoutingTable(("a",), np.array(["q"], dtype=object), np.ones((1, 1)), np.ones((1, 1)),
                     latency=np.full((1, 1), np.nan))


@pytest.fixture(scope="module")
def timed_table():
    from test_estimators_tables import synthetic_table

    table = synthetic_table()
    rng = np.random.default_rng(7)
    words = np.array([len(str(p).split()) for p in table.prompts], dtype=float)
    latency = 0.3 + np.outer(words, [0.01, 0.05, 0.02]) * rng.lognormal(0, 0.1, table.quality.shape)
    from dataclasses import replace
    return replace(table, latency=latency)


@pytest.mark.slow
def test_the_estimator_learns_latency_from_the_prompt_and_uses_the_observed_one_once_run(timed_table):
    fitted = RouterEstimator(quality=QualityEstimator(regressor=make_lightgbm_regressor(n_estimators=20))
                             ).fit(timed_table)
    ante = fitted.predict_table(timed_table).latency
    spread = np.corrcoef(ante[:, 1], timed_table.latency[:, 1])[0, 1]
    assert spread > 0.8  # longer prompts take longer, and the regression sees it
    assert abs(ante.mean() / timed_table.latency.mean() - 1) < 0.1  # smearing keeps the mean
    run = np.zeros(timed_table.quality.shape, bool)
    run[:, 0] = True
    post = fitted.predict_table(timed_table, run).latency
    np.testing.assert_array_equal(post[:, 0], timed_table.latency[:, 0])
    np.testing.assert_array_equal(post[:, 1:], ante[:, 1:])
    unmeasured = fitted.predict(timed_table.prompts, run=run, observed_cost=timed_table.cost,
                                observed_latency=np.where(run, np.nan, 0.0),
                                **{f"{c}s": getattr(timed_table, f"{c}s") for c in fitted.columns_ if c != "prompt"},
                                **_posthoc(fitted, timed_table, run))
    np.testing.assert_allclose(unmeasured.latency, ante)  # not measured: the estimate stands
    with pytest.raises(ValueError, match="observed_latency must be finite and >= 0"):
        fitted.predict(timed_table.prompts, run=run, observed_cost=timed_table.cost,
                       observed_latency=np.where(run, -1.0, 0.0),
                       **{f"{c}s": getattr(timed_table, f"{c}s") for c in fitted.columns_ if c != "prompt"},
                       **_posthoc(fitted, timed_table, run))
    assert RouterEstimator(quality=QualityEstimator(regressor=make_lightgbm_regressor(n_estimators=5))).fit(
        replace_latency(timed_table)).predict_table(timed_table).latency is None


def replace_latency(table):
    from dataclasses import replace
    return replace(table, latency=None)


def _posthoc(fitted, table, run):
    out = {}
    if fitted.uses_responses_:
        out["responses"] = np.where(run, table.responses, "")
    if fitted.signal_names_:
        out["signals"] = {name: np.where(run, table.signals[name], np.nan) for name in fitted.signal_names_}
    return out


def test_estimator_episodes_score_realised_latency_and_fit_to_it(timed_table):
    fitted = RouterEstimator(quality=QualityEstimator(regressor=make_lightgbm_regressor(n_estimators=20))
                             ).fit(timed_table)
    episodes = EstimatorEpisodes(fitted, timed_table)
    free = fit_policy(episodes, 10.0, strategy="cascade_routing", max_depth=2)
    target = 0.6 * free.calibration_latency
    policy = fit_policy(episodes, 10.0, strategy="cascade_routing", max_depth=2, latency_budget=target)
    outcome = policy.play(episodes)
    run = np.zeros(timed_table.quality.shape, bool)
    rows, steps = np.nonzero(outcome.order >= 0)
    run[rows, outcome.order[rows, steps]] = True
    np.testing.assert_allclose(outcome.latency, (timed_table.latency * run).sum(axis=1))
    assert outcome.mean_latency == policy.calibration_latency <= target
    assert policy.calibration_quality <= free.calibration_quality


def test_derive_latency_leaves_unlogged_cells_nan():
    table = RoutingTable(("a", "b"), np.array(["q1", "q2"], dtype=object), np.array([[1.0, np.nan], [0.0, 1.0]]),
                         np.array([[0.1, np.nan], [0.1, 0.2]]), output_tokens=np.array([[10.0, np.nan], [20.0, 5.0]]))
    latency = derive_latency(table, {"a": (0.1, 10.0), "b": (1.0, 5.0)})
    np.testing.assert_allclose(latency, [[1.1, np.nan], [2.1, 2.0]])


# --------------------------------------------------------------------------- #
# training.fit, the artifact and the router
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def two_budget_fit(tmp_path_factory):
    from training.fit import main

    folder = tmp_path_factory.mktemp("latency-fit")
    out, report = folder / "router.joblib", folder / "report"
    code = main(["--n-queries", "700", "--estimator", "linear", "--budget", "0.0004", "0.001",
                 "--latency-budget", "0.45", "0.6", "--out", str(out), "--report", str(report), "--quiet"])
    assert code == 0
    return out, report


def test_fit_crosses_latency_budgets_with_budgets_into_the_artifact(two_budget_fit):
    import json

    from training.artifact import manifest_path
    from training.router import load_router

    out, report_dir = two_budget_fit
    report = json.loads((report_dir / "report.json").read_text())
    pairs = [(row["budget"], row["latency_budget"]) for row in report["budgets"]]
    assert pairs == [(0.0004, 0.45), (0.0004, 0.6), (0.001, 0.45), (0.001, 0.6)]
    for row in report["budgets"]:
        if row["calibration_status"] == "met":
            assert row["calibration_cost"] <= row["budget"] and row["calibration_latency"] <= row["latency_budget"]
        assert row["test_latency"] > 0
    assert report["latency"] and all(s["latency"] > 0 for s in report["single_models"])
    assert all(r["latency_budget"] is None for r in report["curve"])  # the AUC curve is cost-only, as before
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["extra"]["latency_budgets"] == [0.45, 0.6, 0.45, 0.6]
    assert manifest["budgets"] == [0.0004, 0.0004, 0.001, 0.001]
    router = load_router(out)
    assert router.policy(0.001, 0.5).latency_budget == 0.45  # the largest pair within both
    assert router.policy(0.0005, 0.7) .budget == 0.0004 and router.policy(0.0005, 0.7).latency_budget == 0.6
    with pytest.raises(ValueError, match="latency budget 0.1 is below every latency budget fitted"):
        router.policy(0.001, 0.1)
    from training.synthetic import make_benchmark  # the decisions follow the chosen pair's policy
    queries = make_benchmark(30, seed=3).drop_duplicates("query_id")
    inputs = {"tasks": list(queries["task"]), "subtasks": list(queries["subtask"])}
    prompts = list(queries["prompt"])
    assert router.decide(prompts, budget=0.001, latency_budget=0.5, **inputs) == router.decide(
        prompts, policy=router.policy(0.001, 0.45), **inputs)


def test_fit_refuses_a_latency_budget_it_cannot_serve(tmp_path, capsys):
    from training.fit import main

    frame = make_benchmark_without_latency()
    data = tmp_path / "logs.parquet"
    frame.to_parquet(data)
    common = ["--out", str(tmp_path / "r.joblib"), "--report", str(tmp_path / "rep"), "--quiet"]
    assert main(["--data", str(data), "--latency-budget", "1.0", *common]) == 2
    assert "--latency-budget needs latency" in capsys.readouterr().err
    assert main(["--n-queries", "400", "--estimator", "linear", "--budget", "0.001", "--latency-budget", "0.01",
                 *common]) == 2
    err = capsys.readouterr().err
    assert "--latency-budget 0.01 with --budget 0.001 cannot be met: the fastest" in err
    assert not (tmp_path / "r.joblib").exists()
    assert main(["--latency-budget", "0.5", "--per-step", *common]) == 2
    assert "--per-step fits a per-step λ for a cost budget only" in capsys.readouterr().err


def make_benchmark_without_latency():
    from training.synthetic import make_benchmark
    return make_benchmark(300, seed=1).drop(columns="latency_s")


def test_a_paced_router_paces_latency_beside_cost(two_budget_fit):
    from dataclasses import replace

    from training.policy import Policy
    from training.router import load_router

    router = load_router(two_budget_fit[0])  # on this small table single models win: pace a hand-made policy
    policy = Policy("cascade_routing", np.full(3, 200.0), None, 0.0, 3, False, 64, budget=0.001,
                    latency_budget=0.45, mu=0.2)
    paced = router.paced(policy.budget, latency_budget=policy.latency_budget, policy=policy)
    base = paced.policy
    paced.record([policy.budget] * 20, latency=[2 * policy.latency_budget] * 20)  # on budget, twice too slow
    state = paced.state()
    assert state.latency_factor > 1.5 and state.factor == pytest.approx(1.0, abs=0.05)  # μ rises, λ stays
    assert state.mu == pytest.approx(base.mu * state.latency_factor)
    with pytest.raises(ValueError, match="pass latency with every cost"):
        paced.record(0.001)
    with pytest.raises(ValueError, match="latency must be finite numbers >= 0"):
        paced.record([0.001, 0.001], latency=[0.5, -1.0])
    np.testing.assert_equal(tuple(paced.state()), tuple(state))  # a refused record changes nothing
    queries = make_benchmark_without_latency().drop_duplicates("query_id").head(20)
    inputs = {"tasks": list(queries["task"]), "subtasks": list(queries["subtask"])}
    assert paced.decide(list(queries["prompt"]), **inputs) == router.decide(list(queries["prompt"]),
                                                                          policy=paced.policy, **inputs)
    with pytest.raises(ValueError, match="paces cost only"):
        router.paced(0.001, policy=replace(policy, mu=0.0, latency_budget=None)).record(0.001, latency=0.5)


def test_batch_scoring_replays_logged_latency_and_adds_it_up(two_budget_fit):
    from training.router import load_router
    from training.serving.replay import score_batch
    from training.synthetic import make_benchmark

    router = load_router(two_budget_fit[0])
    frame = make_benchmark(40, seed=5)
    frame.loc[3, "latency_s"] = -1.0  # one bad row rejects its query
    scored = score_batch(router, frame, 0.001, latency_budget=0.6, parallel=False)
    ok = scored[scored["status"] == "ok"]
    assert len(ok) == 39
    seconds = frame.set_index(["query_id", "model"])["latency_s"]
    for _, row in ok.iterrows():
        assert row["latency"] == pytest.approx(sum(seconds[(row["query_id"], m)] for m in row["models_run"]))
    rejected = scored[scored["status"] == "rejected"]
    assert rejected["reason"].str.contains("latency_s must be a finite number >= 0").any()
    no_latency = score_batch(router, make_benchmark(10, seed=5).drop(columns="latency_s"), parallel=False)
    assert no_latency["latency"].isna().all()  # nothing logged: not made up
    queries = make_benchmark(10, seed=5).drop_duplicates("query_id").drop(columns=["model", "latency_s"])
    planned = score_batch(router, queries[["query_id", "prompt", "task", "subtask"]], parallel=False)
    per_model = planned[[f"latency[{m}]" for m in router.models_]].to_numpy()
    chosen = [[router.models_.index(m) for m in plan] for plan in planned["plan"]]
    np.testing.assert_allclose(planned["plan_latency"], [per_model[i, c].sum() for i, c in enumerate(chosen)])


def test_the_score_cli_reports_realised_latency_against_the_latency_budget(two_budget_fit, tmp_path, capsys):
    from training.serving.batch import main
    from training.synthetic import make_benchmark

    data = tmp_path / "traffic.parquet"
    make_benchmark(30, seed=2).to_parquet(data)
    code = main(["--artifact", str(two_budget_fit[0]), "--input", str(data), "--output", str(tmp_path / "out.parquet"),
                 "--budget", "0.001", "--latency-budget", "0.6", "--workers", "1", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "mean realised latency per replayed query" in out and "vs latency budget 0.6 s" in out
    written = pd.read_parquet(tmp_path / "out.parquet")
    assert (written["latency"] > 0).all()
