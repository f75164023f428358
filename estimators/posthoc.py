"""Post-hoc features: what the models already run on a query told us.

The feature matrix depends on the query and the run set ``R`` but not on the
model whose quality is estimated, so one matrix serves all ``K`` per-model
regressors. Cells of models outside ``R`` are NaN (LightGBM routes missing
values natively; the linear family imputes them with an indicator).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from .answers import final_answers

__all__ = ["ResponseInfo", "parse_responses", "read_responses", "posthoc_features", "posthoc_feature_names"]


class ResponseInfo(NamedTuple):
    """Responses reduced to what the features need, parsed once per table.

    Attributes
    ----------
    codes : ndarray of int64, shape (N, K)
        Integer id of each normalised final answer, equal ids meaning equal
        answers; 0 means no comparable answer.
    log_length : ndarray of float64, shape (N, K)
        ``log1p`` of the response length in characters.
    kind : ndarray of float64, shape (N, K)
        Kind of final answer: 0 none, 1 option letter, 2 integer, 3 other
        number, 4 short text. Informative on its own when only one model
        ran (a GSM8K answer that is not an integer is usually wrong).
    """

    codes: np.ndarray
    log_length: np.ndarray
    kind: np.ndarray


def _answer_kind(answer: str) -> float:
    if not answer:
        return 0.0
    if len(answer) == 1 and answer in "ABCDE":
        return 1.0
    try:
        value = float(answer)
    except ValueError:
        return 4.0
    return 2.0 if value.is_integer() else 3.0


def parse_responses(texts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per response text (any shape, non-strings as empty): final answer, ``log1p`` length and answer kind.

    The per-text half of :func:`read_responses`, for callers that parse
    each text once and compare answers later (the batch replay).
    """
    texts = np.asarray(texts, dtype=object)
    answers = final_answers(texts)
    lengths = np.array([len(r) if isinstance(r, str) else 0 for r in texts.ravel()], dtype=np.float64)
    kind = np.array([_answer_kind(a) for a in answers.ravel()], dtype=np.float64)
    return answers, np.log1p(lengths).reshape(texts.shape), kind.reshape(texts.shape)


def read_responses(responses: np.ndarray) -> ResponseInfo:
    """Parse an ``(N, K)`` object array of response texts into :class:`ResponseInfo`."""
    answers, log_length, kind = parse_responses(responses)
    codes, _ = pd.factorize(answers.ravel(), use_na_sentinel=False)
    codes = codes.reshape(answers.shape).astype(np.int64) + 1
    codes[answers == ""] = 0
    return ResponseInfo(codes, log_length, kind)


def posthoc_feature_names(models, signal_names, with_responses: bool) -> list[str]:
    """Names of the columns :func:`posthoc_features` returns, in order."""
    names = [f"ran[{m}]" for m in models]
    names += [f"{s}[{m}]" for s in signal_names for m in models]
    if with_responses:
        for block in ("log_length", "answer_kind", "answered", "agree", "with_majority"):
            names += [f"{block}[{m}]" for m in models]
        names += ["majority_share", "pair_agreement", "n_distinct_answers"]
    names.append("n_run")
    return names


def posthoc_features(run: np.ndarray, signals: dict[str, np.ndarray], info: ResponseInfo | None) -> np.ndarray:
    """Build the post-hoc block for queries with run sets ``run``.

    Parameters
    ----------
    run : ndarray of bool, shape (N, K)
        ``run[n, j]``: model ``j`` has been run on query ``n``.
    signals : dict of str to ndarray of float64, shape (N, K)
        Named numeric signals, in a fixed order; read only where ``run``.
    info : ResponseInfo or None
        Parsed responses; ``None`` when the table has no response text.

    Returns
    -------
    ndarray of float64, shape (N, P)
        Columns as named by :func:`posthoc_feature_names`. Per model ``j``:
        whether it ran; each signal; and with responses its log length,
        the kind of its final answer, whether it gave a comparable answer, the share of the other run models
        agreeing with it and whether it is in the largest answer cluster.
        Then the largest cluster's share of the answering run models, the
        share of agreeing pairs, the number of distinct answers, and ``|R|``.
    """
    run = np.asarray(run, dtype=bool)
    blocks = [run.astype(np.float64)]
    blocks += [np.where(run, signals[name], np.nan) for name in signals]
    if info is not None:
        blocks += _agreement(run, info)
    blocks.append(run.sum(axis=1, keepdims=True).astype(np.float64))
    return np.hstack(blocks)


def _agreement(run: np.ndarray, info: ResponseInfo) -> list[np.ndarray]:
    """Per-model and per-query agreement columns among the run models."""
    codes = np.where(run, info.codes, 0)
    valid = codes > 0
    same = (codes[:, :, None] == codes[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    cluster = same.sum(axis=2).astype(np.float64)  # size of j's answer cluster, j included
    n_valid = valid.sum(axis=1, keepdims=True).astype(np.float64)
    others = n_valid - 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        agree = np.where(valid & (others > 0), (cluster - 1.0) / others, np.nan)
        largest = cluster.max(axis=1, keepdims=True)
        majority_share = np.where(n_valid > 0, largest / n_valid, np.nan)
        pairs = n_valid * others
        pair_agreement = np.where(pairs > 0, (cluster.sum(axis=1, keepdims=True) - n_valid) / pairs, np.nan)
    earlier = np.tril(np.ones(run.shape[1:] * 2, dtype=bool), -1)  # [j, l] true when l < j
    first = valid & ~(same & earlier).any(axis=2)  # j holds the first copy of its answer
    distinct = first.sum(axis=1, keepdims=True).astype(np.float64)
    return [
        np.where(run, info.log_length, np.nan),
        np.where(run, info.kind, np.nan),
        np.where(run, valid.astype(np.float64), np.nan),
        agree,
        np.where(valid, (cluster == largest).astype(np.float64), np.nan),
        majority_share,
        pair_agreement,
        distinct,
    ]
