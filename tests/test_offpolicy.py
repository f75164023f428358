"""Off-policy estimates from the service's logs (issue 34): exact expectations over every exploration draw."""

from __future__ import annotations

import itertools
from collections import namedtuple
from math import comb

import numpy as np
import pytest

from training.data import read_table
from training.explore import Exploration
from training.offpolicy import _prior, estimate, replay
from training.serving.traffic import TrafficLog, request_rows
from training.synthetic import make_benchmark
from training.traffic_log import read_logs

Reply = namedtuple("Reply", "text cost prompt_tokens completion_tokens")
Step = namedtuple("Step", "model reply failure seconds")
LOGGER_BUDGET, CANDIDATE_BUDGET = 0.0005, 0.001  # the candidate calls more models


@pytest.fixture(scope="module")
def table(serve_router):
    return read_table(make_benchmark(60, seed=11)).select_models(list(serve_router.models_))


def _outcome(table):
    column = {m: j for j, m in enumerate(table.models)}
    return lambda i, m: {"cost": table.cost[i, column[m]], "response": table.responses[i, column[m]],
                         "quality": table.quality[i, column[m]]}


def _full_replay(router, table, budget):
    return replay(router, list(table.prompts), _outcome(table), tasks=list(table.tasks),
                  subtasks=list(table.subtasks), budget=budget)


def _logs(folder, table, logger, exploration, draw):
    """Every query served by ``logger`` with the same exploration ``draw``, labelled with its true quality."""
    column = {m: j for j, m in enumerate(table.models)}
    log = TrafficLog(folder)
    for i in range(table.n_queries):
        extra = [m for m in draw if m not in logger.paths[i]]
        steps = [Step(m, Reply(table.responses[i, column[m]], table.cost[i, column[m]], 1, 1), None, 0.0)
                 for m in [*logger.paths[i], *extra]]
        log.submit(request_rows(table.query_ids[i], table.prompts[i], table.tasks[i], table.subtasks[i], steps,
                                logger.selected[i], budget=LOGGER_BUDGET, lambdas=[], paced=True, cost=0.0,
                                explored=len(extra), exploration=exploration, n_models=len(table.models)))
    log.close()
    rows = read_logs(folder, keep_unlabelled=True)
    q = np.searchsorted(table.query_ids, rows["query_id"])
    j = [column[m] for m in rows["model"]]
    return rows.assign(quality=table.quality[q, j])


def test_the_candidate_that_logged_is_evaluated_exactly(serve_router, table, tmp_path):
    logger = _full_replay(serve_router, table, LOGGER_BUDGET)
    rows = _logs(tmp_path, table, logger, Exploration(0.2, 1), ())
    result = estimate(serve_router, rows, budget=LOGGER_BUDGET)
    assert result.observed == result.n_requests == table.n_queries and result.differs == 0.0
    for interval, truth in ((result.ips_quality, logger.quality), (result.dr_quality, logger.quality),
                            (result.ips_cost, logger.cost), (result.dr_cost, logger.cost)):
        assert interval.value == pytest.approx(truth.mean(), rel=1e-12)
        assert interval.low <= interval.value <= interval.high


@pytest.mark.slow
@pytest.mark.parametrize("m", [1, 2])
def test_ips_and_dr_are_unbiased_over_every_draw(serve_router, table, tmp_path, m):
    """The draw is the same for every query of one log, so E[estimate] = Σ over draws of P(draw) × estimate."""
    epsilon, models = 0.3, table.models
    exploration = Exploration(epsilon, m)
    logger = _full_replay(serve_router, table, LOGGER_BUDGET)
    truth = _full_replay(serve_router, table, CANDIDATE_BUDGET)
    worlds = [((), 1 - epsilon)] + [(d, epsilon / comb(len(models), m)) for d in itertools.combinations(models, m)]
    expected = {"ips_quality": 0.0, "dr_quality": 0.0, "ips_cost": 0.0, "dr_cost": 0.0}
    for k, (draw, probability) in enumerate(worlds):
        result = estimate(serve_router, _logs(tmp_path / str(k), table, logger, exploration, draw),
                          budget=CANDIDATE_BUDGET)
        for name in expected:
            expected[name] += probability * getattr(result, name).value
    outside = np.array([len(set(p) - set(c)) for p, c in zip(truth.paths, logger.paths, strict=True)])
    supported = outside <= m
    assert (outside > 0).any(), "the candidate must leave the logging cascade somewhere for this to test anything"
    prior = _prior(serve_router, list(table.prompts), CANDIDATE_BUDGET, list(table.tasks), list(table.subtasks))
    for name, value, direct in (("quality", truth.quality, prior[0]), ("cost", truth.cost, prior[1])):
        assert expected[f"ips_{name}"] == pytest.approx(np.mean(np.where(supported, value, 0.0)), rel=1e-9)
        assert expected[f"dr_{name}"] == pytest.approx(np.mean(np.where(supported, value, direct)), rel=1e-9)


def test_estimate_refuses_empty_or_foreign_rows(serve_router):
    import pandas as pd

    with pytest.raises(ValueError, match="label the answers"):
        estimate(serve_router, pd.DataFrame())
    with pytest.raises(ValueError, match="read_logs"):
        estimate(serve_router, pd.DataFrame({"query_id": ["q"], "model": ["m"], "quality": [1.0]}))


def test_evaluate_logged_cli(serve_router, serve_artifact, table, tmp_path, capsys):
    import json

    from training.evaluate import main

    logger = _full_replay(serve_router, table, LOGGER_BUDGET)
    rows = _logs(tmp_path / "log", table, logger, Exploration(0.3, 2), tuple(table.models[:2]))
    rows[["query_id", "model", "quality"]].to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "estimates.json"
    code = main(["--logged", str(tmp_path / "log"), "--artifact", str(serve_artifact), "--budget",
                 str(LOGGER_BUDGET), "--labels", str(tmp_path / "labels.csv"), "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    written = json.loads(out.read_text())
    assert written["n_requests"] == table.n_queries
    assert written["dr_quality"]["value"] == pytest.approx(logger.quality.mean())
    assert "dr_quality" in capsys.readouterr().out
    assert main(["--logged", str(tmp_path / "nothing"), "--artifact", str(serve_artifact)]) == 2


def test_evaluate_logged_verifies_the_candidate_like_every_loader(serve_artifact, tmp_path, capsys):
    """A candidate is unpickled only after the same checks serving applies (an unsigned one is refused with a key)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from training.evaluate import main

    public = tmp_path / "public.pem"
    public.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.PEM,
                                                                               PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "log").mkdir()
    capsys.readouterr()
    assert main(["--logged", str(tmp_path / "log"), "--artifact", str(serve_artifact), "--require-signed"]) == 2
    assert "--require-signed" in capsys.readouterr().err
    assert main(["--logged", str(tmp_path / "log"), "--artifact", str(serve_artifact),
                 "--verify-key", str(public)]) == 2
    assert "sign" in capsys.readouterr().err.lower()


def test_evaluate_logged_never_writes_its_json_over_an_input(serve_artifact, tmp_path, capsys):
    """``--json`` naming the candidate artifact (or a file in the log folder) is refused before any work."""
    from training.evaluate import main

    (tmp_path / "log").mkdir()
    before = serve_artifact.read_bytes()
    capsys.readouterr()
    assert main(["--logged", str(tmp_path / "log"), "--artifact", str(serve_artifact),
                 "--json", str(serve_artifact)]) == 2
    assert "--json" in capsys.readouterr().err and serve_artifact.read_bytes() == before
    assert main(["--logged", str(tmp_path / "log"), "--artifact", str(serve_artifact),
                 "--json", str(tmp_path / "log" / "estimates.json")]) == 2
    assert "inside the --logged folder" in capsys.readouterr().err
