"""``training.serve --shadow``: a second router's decisions beside the served one, never its calls (issue 34)."""

from __future__ import annotations

import warnings

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from servekit import answer_of, backends_toml, build_router_artifact, keyed_backends, serving, usage_of

from training.data import read_table
from training.router import load_router
from training.serve import main as serve_main
from training.serving.service import ServiceConfig, create_app
from training.serving.traffic import LogConfig
from training.synthetic import make_benchmark
from training.traffic_log import read_logs

pytestmark = pytest.mark.usefixtures("upstreams")

CALLER_KEY = "caller-key-" + "s" * 40
KEY_ENV = "UPSTREAM_SHADOW_TEST_KEY"
SERVED_BUDGET, SHADOW_BUDGET = 0.0005, 0.001  # servekit.POLICIES: λ 300 and 100 (the shadow calls more)


@pytest.fixture(scope="module")
def backends(serve_router, upstream_server, tmp_path_factory):
    return keyed_backends(tmp_path_factory.mktemp("backends"), upstream_server.url, serve_router.models_,
                          key_env=KEY_ENV, timeout_s=5.0)


@pytest.fixture(scope="module")
def shadow_router(serve_artifact):
    """The served artifact loaded a second time: another Router object, the same decisions."""
    return load_router(serve_artifact)


@pytest.fixture(scope="module")
def prompts(serve_router):
    table = read_table(make_benchmark(30, seed=11)).select_models(list(serve_router.models_))
    return list(zip(table.prompts, table.tasks, table.subtasks, strict=True))


def _run(serve_router, backends, shadow, prompts, folder, **config):
    """Serve ``prompts`` with ``shadow`` beside; the accounts, and the metrics once every comparison has ended."""
    app = create_app(serve_router, backends, ServiceConfig(api_key=CALLER_KEY, budget=SERVED_BUDGET,
                                                           log=LogConfig(folder, max_rows=9, max_seconds=0.2),
                                                           **config), shadow=shadow)
    accounts = {}
    with serving(app) as (url, _), httpx.Client(base_url=url, timeout=30,
                                                headers={"Authorization": f"Bearer {CALLER_KEY}"}) as client:
        for prompt, task, subtask in prompts:
            response = client.post("/v1/chat/completions", json={
                "model": "router", "metadata": {"task": task, "subtask": subtask},
                "messages": [{"role": "user", "content": prompt}]})
            assert response.status_code == 200, response.text
            accounts[response.headers["x-router-request-id"]] = (prompt, task, subtask, response.json()["router"])
        assert "router_shadow_agreement_total" in client.get("/metrics").text
    # the server has stopped: its lifespan waited for every comparison and the log's last file
    return accounts, _samples(app.app.state.service.metrics.registry)


def _samples(registry) -> dict[tuple, float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _count(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _reference(router, prompt, task, subtask, budget, served_models, cost_of):
    """The shadow's cascade run directly, one ``decide`` at a time: its path up to the first model the served
    cascade did not call, and its selection (``None`` once the path left)."""
    policy, observed, path = router.policy(budget), {}, []
    keywords = {"tasks": [task], "subtasks": [subtask]}
    while (model := router.decide([prompt], [observed], policy=policy, **keywords)[0]) is not None:
        path.append(model)
        if model not in served_models:
            return tuple(path), None
        observed[model] = {"cost": cost_of(model, prompt), "response": answer_of(model, prompt)}
    return tuple(path), router.select([prompt], [observed], **keywords)[0]


@pytest.mark.parametrize("failing", [False, True])
def test_a_shadow_identical_to_the_served_router_agrees_on_every_request(serve_router, shadow_router, backends,
                                                                         prompts, upstreams, tmp_path, failing):
    if failing:  # a model failing for the served cascade is excluded by the shadow's replay as well
        upstreams.modes[serve_router.models_[-1]] = "http500"
    accounts, samples = _run(serve_router, backends, shadow_router, prompts, tmp_path / "log")
    n = len(accounts)
    if failing:
        assert any(account["failed"] for *_, account in accounts.values())
    for level in ("first_step", "path", "selected"):
        assert _count(samples, "router_shadow_agreement_total", level=level, agree="yes") == n
        assert _count(samples, "router_shadow_agreement_total", level=level, agree="no") == 0
    assert not any(name == "router_shadow_divergence_total" for name, _ in samples)
    assert sum(_count(samples, "router_shadow_errors_total", kind=k) for k in ("error", "skipped")) == 0
    # no upstream call was made for the shadow: every attempt is one of the served cascades'
    assert len(upstreams.calls) == sum(step["attempts"] for *_, a in accounts.values() for step in a["steps"])
    rows = read_logs(tmp_path / "log", keep_unlabelled=True)
    for request_id, (*_, account) in accounts.items():
        mine = rows[rows["query_id"] == request_id]
        assert mine["shadow_agrees"].all()
        assert set(mine["shadow_selected"]) == {account["selected"]}
        assert all(list(path) == account["models"] for path in mine["shadow_path"])


def test_a_shadow_at_another_budget_is_counted_where_it_differs(serve_router, shadow_router, backends, prompts,
                                                                 upstreams, tmp_path):
    accounts, samples = _run(serve_router, backends, shadow_router, prompts, tmp_path / "log",
                             shadow_budget=SHADOW_BUDGET)
    cost_of = {m: backends[m] for m in serve_router.models_}
    expected = {}
    for request_id, (prompt, task, subtask, account) in accounts.items():
        path, selected = _reference(shadow_router, prompt, task, subtask, SHADOW_BUDGET, account["models"],
                                    lambda m, p: cost_of[m].cost(*usage_of(m, p)))
        expected[request_id] = (path, selected, tuple(account["models"]), account["selected"])
    paths_agree = sum(path == served for path, _, served, _ in expected.values())
    first_agree = sum(path[:1] == served[:1] for path, _, served, _ in expected.values())
    selected_agree = sum(sel == chosen for _, sel, _, chosen in expected.values() if sel is not None)
    unknown = sum(sel is None for _, sel, _, _ in expected.values())
    assert 0 < paths_agree < len(expected)  # the two budgets do differ on some requests, not on all
    assert _count(samples, "router_shadow_agreement_total", level="path", agree="yes") == paths_agree
    assert _count(samples, "router_shadow_agreement_total", level="path", agree="no") == len(expected) - paths_agree
    assert _count(samples, "router_shadow_agreement_total", level="first_step", agree="yes") == first_agree
    assert _count(samples, "router_shadow_agreement_total", level="selected", agree="yes") == selected_agree
    assert _count(samples, "router_shadow_agreement_total", level="selected", agree="unknown") == unknown
    for model in serve_router.models_:  # per model pair
        for other in serve_router.models_:
            assert _count(samples, "router_shadow_first_step_total", served=model, shadow=other) == sum(
                served[0] == model and path[0] == other for path, _, served, _ in expected.values())
    divergences = {}
    for path, _, served, _ in expected.values():
        if path != served:
            j = next(j for j in range(max(len(path), len(served))) if path[j:j + 1] != served[j:j + 1])
            key = (str(j), served[j] if j < len(served) else "stop", path[j] if j < len(path) else "stop")
            divergences[key] = divergences.get(key, 0) + 1
    assert {(dict(labels)["step"], dict(labels)["served"], dict(labels)["shadow"]): value
            for (name, labels), value in samples.items() if name == "router_shadow_divergence_total"} == divergences
    # the shadow called models the served cascade did not, yet no upstream saw a call for it
    assert any(set(path) - set(served) for path, _, served, _ in expected.values())
    assert len(upstreams.calls) == sum(len(served) for _, _, served, _ in expected.values())
    rows = read_logs(tmp_path / "log", keep_unlabelled=True)
    for request_id, (path, selected, served, chosen) in expected.items():
        mine = rows[rows["query_id"] == request_id]
        assert all(tuple(p) == path for p in mine["shadow_path"])
        assert {value if isinstance(value, str) else None for value in mine["shadow_selected"]} == {selected}
        assert set(mine["shadow_agrees"]) == {path == served and selected == chosen}


def test_a_failing_shadow_is_counted_and_never_fails_a_request(serve_router, shadow_router, backends, prompts,
                                                              tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the shadow broke")

    monkeypatch.setattr("training.serving.shadow.compare", broken)
    accounts, samples = _run(serve_router, backends, shadow_router, prompts[:5], tmp_path / "log")
    assert _count(samples, "router_shadow_errors_total", kind="error") == len(accounts) == 5
    assert not any(name == "router_shadow_agreement_total" for name, _ in samples)
    rows = read_logs(tmp_path / "log", keep_unlabelled=True)
    assert sorted(set(rows["query_id"])) == sorted(accounts)
    assert rows["shadow_agrees"].isna().all() and rows["shadow_selected"].isna().all()


def test_a_shadow_with_other_models_or_no_policy_within_the_budget_is_refused(serve_router, backends, tmp_path):
    fewer = load_router(build_router_artifact(tmp_path, n_models=3))
    with pytest.raises(ValueError, match=r"only in the served: \['" + serve_router.models_[-1]):
        create_app(serve_router, backends, ServiceConfig(), shadow=fewer)
    with pytest.raises(ValueError, match="no policy within the budget 1e-07"):
        create_app(serve_router, backends, ServiceConfig(shadow_budget=1e-7), shadow=serve_router)


def test_the_cli_refuses_a_shadow_with_other_models_in_one_line(serve_artifact, serve_router, upstreams, tmp_path,
                                                                capsys):
    (tmp_path / "fewer").mkdir()
    fewer = build_router_artifact(tmp_path / "fewer", n_models=3)
    backends = tmp_path / "backends.toml"
    backends.write_text(backends_toml(upstreams.url, serve_router.models_))
    code = serve_main(["--artifact", str(serve_artifact), "--backends", str(backends), "--port", "0",
                       "--shadow", str(fewer)])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning:")]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert "--shadow" in err[0] and serve_router.models_[-1] in err[0]
    assert serve_main(["--artifact", str(serve_artifact), "--backends", str(backends), "--shadow-budget", "1"]) == 2
    assert "add --shadow" in capsys.readouterr().err
    assert upstreams.calls == []


def test_the_shadow_is_verified_like_the_served_artifact(serve_artifact, serve_router, upstreams, tmp_path, capsys,
                                                         monkeypatch):
    from training.artifact import save_artifact

    secret = "shadow-secret-" + "z" * 40
    signed = tmp_path / "signed" / "router.joblib"
    signed.parent.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the HMAC key is deprecated: the simplest key to make in a test
        save_artifact(serve_router, signed, models=list(serve_router.models_),
                      budgets=[p.budget for p in serve_router.policies], key=secret)
    monkeypatch.setenv("SHADOW_TEST_SIGNING_KEY", secret)
    backends = tmp_path / "backends.toml"
    backends.write_text(backends_toml(upstreams.url, serve_router.models_))
    code = serve_main(["--artifact", str(signed), "--backends", str(backends), "--port", "0",
                       "--verify-key-env", "SHADOW_TEST_SIGNING_KEY", "--shadow", str(serve_artifact)])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning:")]
    assert code == 2 and len(err) == 1 and "is not signed" in err[0] and secret not in err[0]


def test_a_shadow_beside_a_paced_exploring_router_fills_every_logged_row(serve_router, shadow_router, backends,
                                                                        prompts, tmp_path):
    accounts, samples = _run(serve_router, backends, shadow_router, prompts, tmp_path / "log", pace=True,
                             explore=0.5, explore_models=2)
    compared = sum(_count(samples, "router_shadow_agreement_total", level="path", agree=a) for a in ("yes", "no"))
    assert compared == len(accounts)
    rows = read_logs(tmp_path / "log", keep_unlabelled=True)
    assert rows["explored"].any()  # exploration rows were logged after the answer, with the shadow's columns
    assert sorted(set(rows["query_id"])) == sorted(accounts) and rows["shadow_agrees"].notna().all()
    for request_id, (*_, account) in accounts.items():
        mine = rows[rows["query_id"] == request_id]
        paths = {tuple(path) for path in mine["shadow_path"]}
        assert len(paths) == 1  # one comparison per request, on every row of it
        assert set(mine["shadow_agrees"]) == {paths.pop() == tuple(account["models"])
                                              and set(mine["shadow_selected"]) == {account["selected"]}}
