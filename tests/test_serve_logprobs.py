"""Token log-probabilities as a served post-hoc signal (issue 28): from a table column to the upstream's reply.

An artifact fitted with a ``mean_logprob`` signal column is served with
``"logprobs": true`` asked of every upstream call, and the answer's mean
token log-probability reaches the router as that signal, so the service's
cascade is the plain router's cascade fed the same numbers. Every backend
must say it returns them; anything else is refused at start.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from servekit import answer_of, backends_toml, running_upstreams, serving, usage_of

from estimators.estimator import make_router_estimator
from training.data import read_table
from training.policy import Policy
from training.router import Router
from training.serving.backends import load_backends
from training.serving.service import create_app
from training.serving.upstream import LOGPROB_SIGNAL, _AttemptFailed, _read_reply
from training.synthetic import make_benchmark

RIGHT, WRONG = -0.05, -2.5  # the cheap model's mean token log-probability on right and wrong answers


@pytest.fixture(scope="module")
def signal_router():
    """A router fitted on a table whose cheap model logs its answers' mean log-probability; held-out queries."""
    frame = make_benchmark(600, seed=5)
    table = read_table(frame)
    cheap = table.models[int(np.argmin(table.cost.mean(axis=0)))]
    strong = table.models[int(np.argmax(table.quality.mean(axis=0)))]
    frame = frame[frame["model"].isin([cheap, strong])].copy()
    rng = np.random.default_rng(5)
    right = (frame["quality"] > 0.5) ^ (rng.random(len(frame)) < 0.05)
    frame[LOGPROB_SIGNAL] = np.where(right, RIGHT, WRONG) + rng.normal(0, 0.02, len(frame)).clip(-0.04, 0.04)
    frame.loc[frame["model"] == strong, LOGPROB_SIGNAL] = RIGHT
    queries = frame["query_id"].unique()
    train = read_table(frame[frame["query_id"].isin(queries[:500])], signal_columns=[LOGPROB_SIGNAL])
    estimator = make_router_estimator("learned").fit(train)
    lam = 0.3 / float(train.cost[:, list(train.models).index(strong)].mean())
    policy = Policy(strategy="cascade_routing", lambdas=np.full(2, lam), thresholds=None, gamma=0.0, max_depth=2,
                    force_order=False, n_samples=64, budget=1.0)
    router = Router(estimator, (policy,), tuple(estimator.models_))
    held_out = frame[frame["query_id"].isin(queries[500:530]) & (frame["model"] == cheap)]
    return router, list(zip(held_out["prompt"], held_out["task"], held_out["subtask"], strict=True)), cheap, strong


@pytest.fixture(scope="module")
def fake():
    with running_upstreams(hang=1.0) as upstreams:
        yield upstreams


def _backends(tmp_path, fake, router, logprobs=True):
    text = backends_toml(fake.url, router.models_)
    if logprobs:
        text = text.replace("timeout_s = 1.0", "timeout_s = 1.0\nlogprobs = true")
    path = tmp_path / "backends.toml"
    path.write_text(text)
    return load_backends(path, router.models_, {})


def _ask(url, prompt, task, subtask):
    return httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
        "model": "router", "messages": [{"role": "user", "content": prompt}],
        "metadata": {"task": task, "subtask": subtask}})


@pytest.mark.slow
@pytest.mark.parametrize("cheap_logprob", [RIGHT, WRONG])
def test_the_service_asks_for_logprobs_and_cascades_as_the_router_fed_them(tmp_path, signal_router, fake,
                                                                             cheap_logprob):
    router, queries, cheap, strong = signal_router
    fake.reset()
    fake.logprob[cheap] = cheap_logprob
    backends = _backends(tmp_path, fake, router)
    expected_strong = 0
    with serving(create_app(router, backends)) as (url, _):
        for prompt, task, subtask in queries:
            fake.calls.clear()
            reply = _ask(url, prompt, task, subtask)
            assert reply.status_code == 200, reply.text
            called = reply.headers["x-router-models"].split(",")
            observed: dict = {}
            kw = {"tasks": [task], "subtasks": [subtask]}
            while (model := router.decide([prompt], [observed], **kw)[0]) is not None:
                value = fake.logprob.get(model, -0.1)
                observed[model] = {"cost": backends[model].cost(*usage_of(model, prompt)),
                                   "response": answer_of(model, prompt), LOGPROB_SIGNAL: value}
            assert called == list(observed)
            expected_strong += strong in called
    assert all(body.get("logprobs") is True for body in fake.bodies)
    # the signal decides: after a confident cheap answer the strong model is rarely called, after a doubtful one
    # mostly (the threshold between the two is the fitted estimator's, so the counts are loose)
    if cheap_logprob == RIGHT:
        assert expected_strong <= 0.3 * len(queries)
    else:
        assert expected_strong >= 0.7 * len(queries)


@pytest.mark.slow
def test_a_reply_without_logprobs_fails_that_model_over(tmp_path, signal_router, fake):
    router, queries, cheap, strong = signal_router
    first = next(q for q in queries if router.decide([q[0]], [{}], tasks=[q[1]], subtasks=[q[2]])[0] == cheap)
    fake.reset()
    fake.modes[cheap] = "no_logprobs"
    with serving(create_app(router, _backends(tmp_path, fake, router))) as (url, _):
        reply = _ask(url, *first)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-router-failed"] == cheap and reply.headers["x-router-selected"] == strong
    assert fake.attempts() == [cheap, cheap, strong]  # malformed: retried once, then excluded for this query


@pytest.mark.slow
def test_an_artifact_reading_logprobs_needs_every_backend_to_return_them(tmp_path, signal_router, fake):
    router, *_ = signal_router
    with pytest.raises(ValueError, match=r"logprobs = true in backends.toml"):
        create_app(router, _backends(tmp_path, fake, router, logprobs=False))


def test_a_signal_the_service_cannot_supply_is_refused_at_start(serve_router, upstreams, tmp_path):
    import copy

    estimator = copy.copy(serve_router.estimator)
    estimator.signal_names_ = ["verifier_score"]
    router = Router(estimator, serve_router.policies, serve_router.models_)
    path = tmp_path / "backends.toml"
    path.write_text(backends_toml(upstreams.url, router.models_))
    backends = load_backends(path, router.models_, estimator.token_prices)
    with pytest.raises(ValueError, match=r"\['verifier_score'\].*supplies only 'mean_logprob'"):
        create_app(router, backends)


def test_backends_toml_logprobs_must_be_a_boolean(tmp_path, serve_router, upstreams):
    path = tmp_path / "backends.toml"
    path.write_text(backends_toml(upstreams.url, serve_router.models_).replace("timeout_s = 1.0",
                                                                              'timeout_s = 1.0\nlogprobs = "yes"', 1))
    with pytest.raises(ValueError, match="logprobs must be true or false"):
        load_backends(path, serve_router.models_, serve_router.estimator.token_prices)


def _completion(**choice):
    return json.dumps({"choices": [{"message": {"content": "B"}, "finish_reason": "stop", **choice}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()


def test_the_mean_logprob_is_read_from_the_reply_and_bad_ones_are_malformed():
    tokens = {"content": [{"token": "B", "logprob": -0.5}, {"token": ".", "logprob": -1.5}]}
    assert _read_reply(200, _completion(logprobs=tokens), logprobs=True)[4] == pytest.approx(-1.0)
    assert _read_reply(200, _completion(logprobs=tokens))[4] is None  # not asked: not read
    for bad in (None, {}, {"content": []}, {"content": [{"logprob": 0.5}]}, {"content": [{"logprob": True}]},
                {"content": [{"logprob": float("-inf")}]}, {"content": [{"token": "B"}]}, {"content": "B"}):
        with pytest.raises(_AttemptFailed, match="no token log-probabilities"):
            _read_reply(200, _completion(logprobs=bad), logprobs=True)
