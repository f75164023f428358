"""Post-hoc features: what the models already run on a query told us.

The feature matrix depends on the query and the run set ``R`` but not on the
model whose quality is estimated, so one matrix serves all ``K`` per-model
regressors. Cells of models outside ``R`` are NaN (LightGBM routes missing
values natively; the linear family imputes them with an indicator).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import NamedTuple

import numpy as np
import pandas as pd
from numba import njit
from numpy.typing import ArrayLike, NDArray

from kernel.config import JIT_OPTIONS

from .answers import code_parses, final_answers, hedges, truncated

__all__ = ["CHECKS", "ResponseInfo", "ResponseMemo", "parse_responses", "per_model_groups", "posthoc_features",
           "posthoc_feature_names", "read_responses", "run_responses"]


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
    checks : ndarray of float64, shape (N, K, 3)
        Per response, the checks of :data:`CHECKS`: whether its code parses
        (NaN when not code), whether it hedges or refuses, whether it was
        cut off (:mod:`estimators.answers`).
    """

    codes: NDArray[np.int64]
    log_length: NDArray[np.float64]
    kind: NDArray[np.float64]
    checks: NDArray[np.float64]


#: Names of the per-response checks of :attr:`ResponseInfo.checks`, in order (one feature column group each).
CHECKS = ("code_parses", "hedges", "truncated")
_CHECKS = (code_parses, hedges, truncated)
#: Whether the block has one column per pair of models saying whether their answers agree (NaN unless both
#: ran and answered): the per-model regressors can then weigh agreement with a strong model above agreement
#: with a weak one, which the pooled agreement shares cannot.
PAIRS = True


@cache
def _pairs(k: int) -> tuple[tuple[int, int], ...]:
    return tuple((a, b) for a in range(k) for b in range(a + 1, k))


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


def parse_responses(texts: ArrayLike) -> tuple[NDArray[np.object_], NDArray[np.float64], NDArray[np.float64],
                                               NDArray[np.float64]]:
    """Per response text (any shape, non-strings as empty): final answer, ``log1p`` length, answer kind and checks.

    The per-text half of :func:`read_responses`, for callers that parse
    each text once and compare answers later (the batch replay).

    Parameters
    ----------
    texts : array-like of object
        Response texts, any shape.

    Returns
    -------
    answers : ndarray of object
        :func:`~estimators.answers.final_answer` of each text (``''`` for none).
    log_length : ndarray of float64
        ``log1p`` of each text's length in characters.
    kind : ndarray of float64
        Kind of each answer, as :attr:`ResponseInfo.kind`.
        All three have the shape of ``texts``.
    checks : ndarray of float64
        Shape of ``texts`` plus one axis of :data:`CHECKS`.
    """
    texts = np.asarray(texts, dtype=object)
    answers = final_answers(texts)
    flat = [r if isinstance(r, str) else "" for r in texts.ravel()]
    lengths = np.array([len(r) for r in flat], dtype=np.float64)
    kind = np.array([_answer_kind(a) for a in answers.ravel()], dtype=np.float64)
    checks = np.array([[check(r) for check in _CHECKS] for r in flat], dtype=np.float64).reshape(
        (*texts.shape, len(CHECKS)))
    return answers, np.log1p(lengths).reshape(texts.shape), kind.reshape(texts.shape), checks


def read_responses(responses: ArrayLike) -> ResponseInfo:
    """Parse an ``(N, K)`` object array of response texts into :class:`ResponseInfo`, once per table.

    Parameters
    ----------
    responses : array-like of object, shape (N, K)
        Response texts (non-strings read as no response).

    Returns
    -------
    ResponseInfo
        Answer ids numbered over the whole array.
    """
    answers, log_length, kind, checks = parse_responses(responses)
    codes, _ = pd.factorize(answers.ravel(), use_na_sentinel=False)
    codes = codes.reshape(answers.shape).astype(np.int64) + 1
    codes[answers == ""] = 0
    return ResponseInfo(codes, log_length, kind, checks)


class ResponseMemo:
    """Parsed response texts and one id per distinct final answer, kept across calls.

    A cascade replay estimates a query once per step, each time with the
    responses of every model run so far; through a memo each text is parsed
    once. Ids are consistent across calls (equal ids exactly for equal
    answers, 0 for no answer), which is all the agreement features read.
    Not thread-safe: one memo per job or call.
    """

    def __init__(self) -> None:
        #: Per text one row ``[answer id, log1p length, kind, *checks]`` (ids are small integers, exact as floats),
        #: so that a look-up gathers one array instead of four.
        self.parsed: dict[str, NDArray[np.float64]] = {}
        self.answer_ids: dict[str, int] = {"": 0}

    def lookup(self, texts: NDArray[np.object_]) -> tuple[NDArray[np.int64], NDArray[np.float64],
                                                          NDArray[np.float64], NDArray[np.float64]]:
        """``(answer id, log1p length, answer kind, checks)`` per text, parsing only texts not seen before.

        Parameters
        ----------
        texts : ndarray of object, shape (M,)
            Response texts (str).

        Returns
        -------
        answer_id : ndarray of int64, shape (M,)
            Equal exactly for equal final answers, 0 for none.
        log_length : ndarray of float64, shape (M,)
        kind : ndarray of float64, shape (M,)
        checks : ndarray of float64, shape (M, len(CHECKS))
        """
        inverse, unique = _factorize(texts)
        new = [t for t in unique if t not in self.parsed]
        if new:  # each distinct text once: short answers ("A", "B") repeat a lot
            answers, log_length, kind, checks = parse_responses(np.array(new, dtype=object))
            ids = [self.answer_ids.setdefault(answer, len(self.answer_ids)) for answer in answers]
            rows = np.column_stack([np.array(ids, dtype=np.float64), log_length, kind, checks])
            self.parsed.update(zip(new, rows, strict=True))
        found = np.array([self.parsed[t] for t in unique]).reshape(len(unique), 3 + len(CHECKS))[inverse]
        return found[:, 0].astype(np.int64), found[:, 1], found[:, 2], found[:, 3:]


#: Up to this many texts, :func:`_factorize` numbers them in a dict: ``pd.factorize`` costs ~30 µs whatever the
#: size, more than a cascade step's one to three answers take to parse, and wins only on long arrays.
_SMALL = 64


def _factorize(texts: NDArray[np.object_]) -> tuple[NDArray[np.intp], list[str]]:
    """``pd.factorize(texts)``: per text the index of its distinct value, distinct values in order of first appearance.

    Short arrays (a service's step) are numbered in a dict, long ones (a
    replay over a table) by pandas; both give the same codes and uniques.
    """
    if len(texts) > _SMALL:
        inverse, unique = pd.factorize(texts)
        return inverse, list(unique)
    index: dict[str, int] = {}
    inverse = np.array([index.setdefault(t, len(index)) for t in texts], dtype=np.intp)
    return inverse, list(index)


def run_responses(responses: NDArray[np.object_], run: NDArray[np.bool_],
                  memo: ResponseMemo | None = None) -> ResponseInfo:
    """:class:`ResponseInfo` of the run models' responses; cells of models not run read as no response.

    The same features as ``read_responses(np.where(run, responses, ""))``
    (answer ids may differ, but are equal exactly where answers are), with
    only the run cells parsed: through ``memo``, each distinct text once
    across calls.

    Parameters
    ----------
    responses : ndarray of object, shape (N, K)
        Response texts (non-strings read as ``''``).
    run : ndarray of bool, shape (N, K)
    memo : ResponseMemo, optional
        Shared by the calls of one job; default a fresh one.

    Returns
    -------
    ResponseInfo
        Zeros in the cells of models not run.
    """
    cells = np.flatnonzero(run.ravel())
    codes = np.zeros(run.size, np.int64)
    log_length = np.zeros(run.size)
    kind = np.zeros(run.size)
    checks = np.zeros((run.size, len(CHECKS)))
    if cells.size:
        texts = np.array([t if isinstance(t, str) else "" for t in responses.ravel()[cells]], dtype=object)
        codes[cells], log_length[cells], kind[cells], checks[cells] = (memo or ResponseMemo()).lookup(texts)
    return ResponseInfo(codes.reshape(run.shape), log_length.reshape(run.shape), kind.reshape(run.shape),
                        checks.reshape((*run.shape, len(CHECKS))))


def posthoc_feature_names(models: Sequence[str], signal_names: Sequence[str], with_responses: bool) -> list[str]:
    """Names of the columns :func:`posthoc_features` returns, in order, for reports and feature importances.

    Parameters
    ----------
    models : sequence of str
        Model names in column order.
    signal_names : sequence of str
        Signals in feature order.
    with_responses : bool
        Whether the response columns are present.

    Returns
    -------
    list of str
    """
    names = [f"ran[{m}]" for m in models]
    names += [f"{s}[{m}]" for s in signal_names for m in models]
    if with_responses:
        for block in ("log_length", "answer_kind", "answered", "agree", "with_majority", *CHECKS):
            names += [f"{block}[{m}]" for m in models]
        names += ["majority_share", "pair_agreement", "n_distinct_answers"]
        if PAIRS:
            names += [f"agree[{models[a]}|{models[b]}]" for a, b in _pairs(len(models))]
    names.append("n_run")
    return names


def per_model_groups(n_signals: int, with_responses: bool) -> int:
    """How many per-model column groups (``K`` columns each) open the block :func:`posthoc_features` builds.

    Whether the model ran, then each signal, then with responses its log
    length, answer kind, answered, agreement, majority and check columns; the
    block's last columns are per query. A pooled quality regressor gathers
    each model's own column of every group.

    Parameters
    ----------
    n_signals : int
        Number of signals.
    with_responses : bool
        Whether response columns are present.

    Returns
    -------
    int
    """
    return 1 + n_signals + (5 + len(CHECKS) if with_responses else 0)


def posthoc_features(run: ArrayLike, signals: Mapping[str, NDArray[np.float64]],
                     info: ResponseInfo | None) -> NDArray[np.float64]:
    """Build the post-hoc block for queries with run sets ``run``.

    Parameters
    ----------
    run : array-like of bool, shape (N, K)
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
        agreeing with it, whether it is in the largest answer cluster, and
        its :data:`CHECKS`.
        Then the largest cluster's share of the answering run models, the
        share of agreeing pairs, the number of distinct answers, with
        :data:`PAIRS` whether each pair of models agrees, and ``|R|``.
    """
    run = np.asarray(run, dtype=bool)
    if not run.any():  # ex-ante, every query's first decision: no value is read, the block is one constant row
        return np.tile(_unrun_row(run.shape[1], len(signals), info is not None), (run.shape[0], 1))
    return _posthoc_block(run, signals, info)


@cache
def _unrun_row(k: int, n_signals: int, with_responses: bool) -> NDArray[np.float64]:
    """:func:`_posthoc_block` of one query that ran no model (read-only): it reads no signal or response value."""
    info = None
    if with_responses:
        info = ResponseInfo(np.zeros((1, k), np.int64), np.zeros((1, k)), np.zeros((1, k)),
                            np.zeros((1, k, len(CHECKS))))
    row = _posthoc_block(np.zeros((1, k), bool), {f"signal{i}": np.zeros((1, k)) for i in range(n_signals)}, info)
    row.setflags(write=False)
    return row


def _posthoc_block(run: NDArray[np.bool_], signals: Mapping[str, NDArray[np.float64]],
                   info: ResponseInfo | None) -> NDArray[np.float64]:
    """:func:`posthoc_features` of ``run`` (a bool array), computed."""
    n, k = run.shape
    pairs = _pairs(k) if PAIRS and info is not None else ()
    width = k * per_model_groups(len(signals), info is not None) + (3 if info is not None else 0) + len(pairs) + 1
    out = np.empty((n, width))
    out[:, :k] = run
    for i, name in enumerate(signals):
        out[:, k * (1 + i): k * (2 + i)] = np.where(run, signals[name], np.nan)
    if info is not None:
        _agreement(run, np.ascontiguousarray(info.codes, dtype=np.int64),
                   np.ascontiguousarray(info.log_length, dtype=np.float64),
                   np.ascontiguousarray(info.kind, dtype=np.float64),
                   np.ascontiguousarray(info.checks, dtype=np.float64), out, k * (1 + len(signals)),
                   k * (1 + len(signals) + 5 + len(CHECKS)), bool(pairs))
    out[:, -1] = run.sum(axis=1)
    return out


@njit(**JIT_OPTIONS)
def _agreement(run, codes, log_length, kind, checks, out, start, tail, with_pairs):
    """Write the per-model response columns of each query into ``out[:, start:start + (5 + C) K]`` (the five
    agreement groups, then each of the ``C`` checks), the per-query ones into ``out[:, tail:tail + 3]`` and, with
    ``with_pairs``, each pair's agreement into the ``K (K - 1) / 2`` after.

    Compiled: per query it compares the K answers pairwise, which as
    broadcast NumPy arrays cost more than every other step of a batch
    replay. Counts are exact integers, so the ratios are the same floats
    whichever way they are summed. The checks are copied here too (NaN where
    the model did not run): three masked copies in NumPy cost a cascade
    step more than this whole pass.
    """
    n, k = run.shape
    cluster = np.empty(k)
    for q in range(n):
        n_valid = 0
        for j in range(k):
            if run[q, j] and codes[q, j] > 0:
                n_valid += 1
        largest = 0.0
        total = 0.0
        distinct = 0
        for j in range(k):
            size = 0
            first = True
            if run[q, j] and codes[q, j] > 0:
                for m in range(k):
                    if run[q, m] and codes[q, m] == codes[q, j]:
                        size += 1
                        if m < j:
                            first = False
                if first:
                    distinct += 1
            cluster[j] = size
            largest = max(largest, cluster[j])
            total += cluster[j]
        others = n_valid - 1.0
        pairs = n_valid * others
        for j in range(k):
            ran = run[q, j]
            valid = ran and codes[q, j] > 0
            out[q, start + j] = log_length[q, j] if ran else np.nan
            out[q, start + k + j] = kind[q, j] if ran else np.nan
            out[q, start + 2 * k + j] = (1.0 if valid else 0.0) if ran else np.nan
            out[q, start + 3 * k + j] = (cluster[j] - 1.0) / others if valid and others > 0 else np.nan
            out[q, start + 4 * k + j] = (1.0 if cluster[j] == largest else 0.0) if valid else np.nan
            for c in range(checks.shape[2]):
                out[q, start + (5 + c) * k + j] = checks[q, j, c] if ran else np.nan
        out[q, tail] = largest / n_valid if n_valid > 0 else np.nan
        out[q, tail + 1] = (total - n_valid) / pairs if pairs > 0 else np.nan
        out[q, tail + 2] = distinct
        if with_pairs:
            i = tail + 3
            for a in range(k):
                for b in range(a + 1, k):
                    both = run[q, a] and run[q, b] and codes[q, a] > 0 and codes[q, b] > 0
                    out[q, i] = (1.0 if codes[q, a] == codes[q, b] else 0.0) if both else np.nan
                    i += 1
