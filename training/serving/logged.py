"""Validating logged traffic and turning a batch of it into per-query grids.

Logged input is the long format of ``../shared/data/README.md``: one row per
query and model with ``quality``, ``cost_usd`` and ``response``, the rows of
a query contiguous (streaming in bounded memory holds one batch of rows at a
time, so a query's rows must come together). Logs may be partial: a query
needs rows only for the models that were called (``LoggedBatch.available``).
:func:`validate_logged` checks every row, rejects whole queries (a cascade
cannot be replayed with a logged outcome that is wrong; the one exception is
a row of a model the router does not know, left out on its own since the
query replays without it like a partial log), and
lays the queries that pass out as ``(queries, models)`` grids in the router's
model order; :mod:`training.serving.replay` plays the policy on them.

The column checks (:func:`required_columns`, :func:`check_columns`) cover
query input (one row per query) as well, and the text helpers are shared
with its scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from ..router import Router

__all__ = ["DISAGREES_ON", "LOGGED_COLUMNS", "PER_QUERY_TEXT", "LoggedBatch", "ScoreError", "check_columns",
           "check_prompt_types", "required_columns", "validate_logged"]

#: Columns of the logged (long) format that replay needs besides the per-query ones.
LOGGED_COLUMNS = ("query_id", "model", "quality", "cost_usd")
#: Text columns that must be the same on every logged row of a query (scoring reads a query's first row).
PER_QUERY_TEXT = ("query_id", "prompt", "task", "subtask")
#: Optional int8 column a reader that keeps per-query text once (``training.serving.batch``) adds: per
#: row, 1 + the position in :data:`PER_QUERY_TEXT` of a column on which the row differs from the row
#: before it in its query (0: none), found before that text was folded to one value per query.
DISAGREES_ON = "disagrees_on"


class ScoreError(ValueError):
    """The input cannot be scored at all (missing columns, ...): exit code 2."""


class LoggedBatch(NamedTuple):
    """A validated logged batch: the queries that can be replayed, in input order, and the rejected rows.

    ``Q`` is the number of accepted queries, ``K`` the number of router
    models; grid columns follow ``router.models_``. A cell whose model has no
    row for the query (partial logs) is ``False`` in ``available`` and holds
    cost 0, quality NaN, response '' and signals NaN.
    """

    #: Input row number (the ``row`` column, else the index) of each accepted query's first row, int64 ``(Q,)``.
    first_rows: NDArray[np.int64]
    #: Query id of each accepted query, object ``(Q,)`` of str.
    query_ids: NDArray[np.object_]
    #: The estimator's per-query columns (``prompt``, ``task``, ...), each object ``(Q,)`` of str.
    values: dict[str, NDArray[np.object_]]
    #: Logged cost (USD) of every model, float64 ``(Q, K)``.
    cost: NDArray[np.float64]
    #: Logged quality of every model, float64 ``(Q, K)``.
    quality: NDArray[np.float64]
    #: Logged responses, object ``(Q, K)`` of str ('' when absent or unused by the estimator).
    responses: NDArray[np.object_]
    #: Logged signals the estimator uses, each float64 ``(Q, K)``.
    signals: dict[str, NDArray[np.float64]]
    #: Whether each model has a logged row for each query, bool ``(Q, K)`` (all ``True`` for full logs).
    available: NDArray[np.bool_]
    #: Every input row of every rejected query: ``row``, ``query_id``, ``reason``, ``model``
    #: (empty frame when nothing is rejected).
    rejected: pd.DataFrame
    #: Logged latency (seconds) of every model, float64 ``(Q, K)``, NaN where not logged; ``None`` without
    #: ``latency_s``.
    latency: NDArray[np.float64] | None = None


# --------------------------------------------------------------------------- #
# columns and checks
# --------------------------------------------------------------------------- #


def _quoted(value: object) -> str:
    """A cell as a reason quotes it: ``-1.0``, not numpy 2's ``np.float64(-1.0)``."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _per_query_columns(router: Router) -> list[str]:
    return list(router.estimator.columns_)


def required_columns(router: Router, logged: bool) -> list[str]:
    """Columns the input must have, so that missing ones are reported before any row is scored.

    Parameters
    ----------
    router : Router
        Its estimator says which per-query columns, signals and responses it reads.
    logged : bool
        Logged (long) input, one row per query and model; else query input,
        one row per query.

    Returns
    -------
    list of str
        ``query_id``, the estimator's per-query inputs, and for logged input
        ``model``, ``quality``, ``cost_usd`` (``response`` and the signals
        when the estimator uses them); each name once, in that order.
    """
    columns = ["query_id", *_per_query_columns(router)]
    if logged:
        columns += ["model", "quality", "cost_usd"]
        if router.estimator.uses_responses_:
            columns.append("response")
        columns += list(router.estimator.signal_names_)
    return list(dict.fromkeys(columns))


def check_columns(router: Router, columns: Sequence[str]) -> bool:
    """Tell logged input from query input and refuse one that lacks columns, before any batch is read.

    Parameters
    ----------
    router : Router
        The router that will score the input (:func:`required_columns`).
    columns : sequence of str
        Column names of the input.

    Returns
    -------
    bool
        Whether the input is logged (has a ``model`` column).

    Raises
    ------
    ScoreError
        If a column of :func:`required_columns` is missing; the message
        lists the missing and the present columns.
    """
    logged = "model" in columns
    missing = [c for c in required_columns(router, logged) if c not in columns]
    if missing:
        kind = "logged (long) input" if logged else "query input"
        raise ScoreError(f"{kind} lacks column(s) {missing}; it has {list(columns)}")
    return logged


def _row_numbers(frame: pd.DataFrame) -> np.ndarray:
    return (frame["row"].to_numpy(dtype=np.int64) if "row" in frame.columns
            else np.asarray(frame.index, dtype=np.int64))


def _text_column(series: pd.Series, rows: np.ndarray | None = None) -> np.ndarray:
    """Object array of str from a column (optionally only ``rows``); missing as ''.

    Selects before converting: a logged batch repeats each prompt on every
    model's row, and turning all of them into Python strings costs more
    than scoring.
    """
    if rows is not None:
        series = series.iloc[rows]
    if isinstance(series.dtype, pd.CategoricalDtype):  # dictionary-encoded Parquet: convert each value once
        values = np.append(_text(series.cat.categories.to_numpy(dtype=object)), "")
        return values[series.cat.codes.to_numpy()]  # code -1 (missing) takes the '' appended last
    if series.dtype == object:
        return _text(series.to_numpy())
    return series.astype("string").fillna("").to_numpy(dtype=object)


def _text(values: np.ndarray) -> np.ndarray:
    """Object array of str; missing (None/NaN) as ''."""
    return np.array([v if isinstance(v, str) else "" if pd.isna(v) else str(v) for v in values], dtype=object)


def check_prompt_types(frame: pd.DataFrame) -> None:
    """Refuse a ``prompt`` that is neither text nor missing, as every ``Router`` method does.

    A number or ``bytes`` would otherwise be featurized as its ``str()``
    (its digits, ``"b'...'"``): not the prompt that was logged. Missing
    prompts are not refused here: they reject their query with a reason.

    Parameters
    ----------
    frame : pandas.DataFrame
        A batch with a ``prompt`` column (an optional ``row`` column gives the row numbers in messages).

    Raises
    ------
    TypeError
        Naming the first such row, its value and type.
    """
    prompts = frame["prompt"]
    if isinstance(prompts.dtype, pd.CategoricalDtype):  # each category once
        values = prompts.cat.categories.to_numpy(dtype=object)
        positions = None
    elif pd.api.types.is_string_dtype(prompts.dtype) and prompts.dtype != object:
        return  # pandas' string dtypes hold str or missing only
    else:
        values = prompts.to_numpy(dtype=object)
        positions = np.arange(len(values))
    wrong = np.fromiter((not isinstance(v, str) and not pd.isna(v) for v in values), dtype=bool, count=len(values))
    if not wrong.any():
        return
    first = int(np.flatnonzero(wrong)[0])
    row = (int(np.flatnonzero(prompts.cat.codes.to_numpy() == first)[0]) if positions is None else first)
    value = values[first]
    raise TypeError(f"the prompt of row {_row_numbers(frame)[row]} is {type(value).__name__} {repr(value)[:40]}, "
                    "not str; every prompt must be text (decode bytes, convert numbers, or leave it missing)")


def _unknown_model(name: object, models: Sequence[str]) -> str:
    """The reason for a row of a model the router does not know, naming a known one spelt alike (case, spaces)."""
    alike = [m for m in models
             if isinstance(name, str) and " ".join(m.split()).casefold() == " ".join(name.split()).casefold()]
    hint = (f"it is {alike[0]!r} spelt differently (case or spaces): rename it in the logs" if alike
            else f"the router knows {list(models)}")
    return f"unknown model {name!r}, left out (its query is replayed without it); {hint}"


def _differs_from_previous(series: pd.Series) -> np.ndarray:
    """Per row, whether its value differs from the previous row's (missing equals missing only); row 0 ``False``."""
    if not len(series):
        return np.zeros(0, dtype=bool)
    if isinstance(series.dtype, pd.CategoricalDtype):  # codes: -1 for missing
        codes = series.cat.codes.to_numpy()
        return np.r_[False, codes[1:] != codes[:-1]]
    values = series.to_numpy(dtype=object)
    missing = _missing(values)
    unequal = np.fromiter((a != b for a, b in zip(values[1:], values[:-1], strict=True)), dtype=bool,
                          count=len(values) - 1)
    return np.r_[False, np.where(missing[1:] | missing[:-1], missing[1:] != missing[:-1], unequal)]


def _missing(values: np.ndarray) -> np.ndarray:
    return np.fromiter((not isinstance(v, str) and pd.isna(v) for v in values), dtype=bool, count=len(values))


def _codes_of(series: pd.Series, names: Sequence[str]) -> np.ndarray:
    """Position of each value in ``names``, ``-1`` when absent (missing values included)."""
    known = pd.Index(list(names), dtype=object)  # object: a value may be a str that is not valid Unicode
    if isinstance(series.dtype, pd.CategoricalDtype):  # look up each category once
        found = np.append(known.get_indexer(series.cat.categories), -1)
        return found[series.cat.codes.to_numpy()].astype(np.int64)
    return known.get_indexer(pd.Index(series.to_numpy(dtype=object), dtype=object)).astype(np.int64)


def _numbers(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _lone_surrogates(series: pd.Series) -> np.ndarray:
    """Which values are ``str`` holding a lone surrogate (half of a UTF-16 pair), row by row.

    Such a string is not valid Unicode: pandas' string dtype, Arrow and
    Parquet cannot hold it, so an id with one can be neither grouped nor
    written to the rejects file. Only Python ``str`` in an object or
    categorical column can hold one (a file read through Arrow cannot).
    """
    if isinstance(series.dtype, pd.CategoricalDtype):  # each category once
        found = np.append(_lone_surrogates(pd.Series(series.cat.categories, dtype=object)), False)
        return found[series.cat.codes.to_numpy()]
    if series.dtype != object:
        return np.zeros(len(series), dtype=bool)
    return np.fromiter((isinstance(v, str) and not v.isascii() and not _encodes(v) for v in series.to_numpy()),
                       dtype=bool, count=len(series))


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(values: np.ndarray) -> np.ndarray:
    """Text as written to the rejects: a lone surrogate as its escape (``\\ud800``), so the row can be written."""
    return np.array([v if _encodes(v) else v.encode("utf-8", "backslashreplace").decode("utf-8") for v in values],
                    dtype=object)


def _reject_frame(frame: pd.DataFrame, rows: np.ndarray, reasons: list[str]) -> pd.DataFrame:
    """Rejected input rows: row number, query id, reason and model (if the frame has one)."""
    if not len(rows):
        return pd.DataFrame()
    out = pd.DataFrame({
        "row": _row_numbers(frame)[rows],
        "query_id": _shown(_text(frame["query_id"].to_numpy(dtype=object)[rows])),
        "reason": reasons,
    })
    if "model" in frame.columns:
        out["model"] = _shown(_text(frame["model"].to_numpy(dtype=object)[rows]))
    return out


# --------------------------------------------------------------------------- #
# a logged batch
# --------------------------------------------------------------------------- #


def validate_logged(router: Router, frame: pd.DataFrame) -> LoggedBatch:
    """Check a logged batch row by row and lay its valid queries out as per-query grids.

    A malformed row (missing query id, model or prompt, an id or model
    name with a lone surrogate, unknown model,
    NaN/negative/infinite cost or ``latency_s``, NaN quality, non-finite signal) rejects its
    query, as do rows of a query that disagree on its prompt, task or subtask
    (a reader that folded that text to one value per query says so in a
    :data:`DISAGREES_ON` column), a duplicate model for a query and rows of a query that are
    not contiguous (streaming holds one batch of rows at a time, so bounded
    memory needs each query's rows together; this function sees only
    ``frame``, so a query continued in another frame is flagged by the
    reader in an optional boolean ``scattered`` column);
    every input row of a rejected query is in ``rejected`` with a reason (its
    own, or the one that rejected its query). A row of a model the router
    does not know is in ``rejected`` too, but rejects its query only when the
    query has no row of a known model: otherwise the query is replayed
    without it, as partial logs are. A model with no row for a query
    is not malformed (partial logs: only the models called were logged): the
    query is accepted with that model not ``available``.

    Parameters
    ----------
    router : Router
        Gives the model order and the columns its estimator uses.
    frame : pandas.DataFrame
        Logged rows with the columns of :func:`required_columns` (checked by
        the caller with :func:`check_columns`); every row of a query in this
        frame. An optional ``row`` column holds input row numbers.

    Returns
    -------
    LoggedBatch
    """
    models = router.models_
    k = len(models)
    per_query = _per_query_columns(router)
    n_rows = len(frame)
    model_codes = _codes_of(frame["model"], models)
    cost = _numbers(frame["cost_usd"])
    quality = _numbers(frame["quality"])
    row_reason = np.full(n_rows, "", dtype=object)

    def flag(mask: np.ndarray, reason) -> None:
        for r in np.flatnonzero(mask & (row_reason == "")):
            row_reason[r] = reason(r) if callable(reason) else reason

    flag(frame["query_id"].isna().to_numpy(), "query_id is missing")
    flag(frame["model"].isna().to_numpy(), "model is missing")
    for column in ("query_id", "model"):
        flag(_lone_surrogates(frame[column]), f"{column} is not valid Unicode text (it holds a lone surrogate, half of "
                                              "a UTF-16 pair); repair it where the logs are decoded")
    # a row of a model the router does not know is left out on its own: the query is replayed without it
    # (as partial logs are), unless it has no row of a known model left
    left_out = (model_codes < 0) & (row_reason == "")
    flag(left_out, lambda r: _unknown_model(frame["model"].iloc[r], models))
    flag(~(np.isfinite(cost) & (cost >= 0)),
         lambda r: f"cost_usd must be a finite number >= 0, got {_quoted(frame['cost_usd'].iloc[r])}")
    flag(np.isnan(quality), lambda r: f"quality must be a number, got {_quoted(frame['quality'].iloc[r])}")
    if "prompt" in per_query:
        check_prompt_types(frame)
        flag(frame["prompt"].isna().to_numpy(), "prompt is missing")
    latency = _numbers(frame["latency_s"]) if "latency_s" in frame.columns else None
    if latency is not None:
        flag(~(np.isfinite(latency) & (latency >= 0)),
             lambda r: f"latency_s must be a finite number >= 0 (seconds), got {frame['latency_s'].iloc[r]}")
    signal_values = {}
    for name in router.estimator.signal_names_:
        signal_values[name] = _numbers(frame[name])
        flag(~np.isfinite(signal_values[name]), f"signal {name!r} must be a finite number")

    # queries: runs of equal query_id (rows of a query are contiguous)
    key = _text_column(frame["query_id"])
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if n_rows else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], n_rows]
    query_of_row = np.repeat(np.arange(starts.size), ends - starts)
    first_keys = key[starts]
    repeated = pd.Series(first_keys, dtype=object).duplicated(keep=False).to_numpy()  # object: ids may not be UTF-8
    # ``scattered``: set by the file reader for queries whose rows are split over the file (see
    # training.serving.batch.scattered_queries), which no single frame can see
    scattered = (frame["scattered"].to_numpy(dtype=bool) if "scattered" in frame.columns
                 else np.zeros(n_rows, dtype=bool))
    flag((repeated[query_of_row] | scattered) & ~frame["query_id"].isna().to_numpy(),
         lambda r: f"rows of query {key[r]!r} are not contiguous (scoring in bounded memory needs each query's "
                   f"rows together); sort or group the input by query_id")
    # one value of the per-query text per query: scoring reads the first row, so a row that says otherwise
    # would be scored with another row's prompt (or task)
    continues = np.r_[False, query_of_row[1:] == query_of_row[:-1]] if n_rows else np.zeros(0, dtype=bool)
    folded = (frame[DISAGREES_ON].to_numpy(dtype=np.int64) if DISAGREES_ON in frame.columns
              else np.zeros(n_rows, np.int64))
    for position, column in enumerate(PER_QUERY_TEXT):
        if column == "query_id" or column not in per_query:
            continue
        differs = (folded == position + 1) | (continues & _differs_from_previous(frame[column]))
        flag(differs & ~frame["query_id"].isna().to_numpy(),
             lambda r, column=column: f"rows of query {key[r]!r} disagree on the {column} (row "
                                      f"{_row_numbers(frame)[r]} differs from the row before it); every row of a "
                                      f"query must carry the same {column}")
    # one row per router model
    slot = query_of_row * k + np.where(model_codes >= 0, model_codes, 0)
    valid_model = model_codes >= 0
    counts = np.bincount(slot[valid_model], minlength=starts.size * k).reshape(starts.size, k)
    flag(valid_model & (counts.reshape(-1)[slot] > 1),
         lambda r: f"query {key[r]!r} has more than one row for model {models[model_codes[r]]!r}")
    query_bad = np.zeros(starts.size, dtype=bool)
    np.logical_or.at(query_bad, query_of_row, (row_reason != "") & ~left_out)
    query_bad |= np.bincount(query_of_row[~left_out], minlength=starts.size) == 0  # nothing known to replay
    bad_rows = query_bad[query_of_row]
    own_reason = row_reason != ""  # before the rows that are only collateral get theirs
    for r in np.flatnonzero(bad_rows & ~own_reason):
        q = query_of_row[r]
        culprit = starts[q] + int(np.flatnonzero(own_reason[starts[q]:ends[q]])[0])
        row_reason[r] = f"query rejected because of row {_row_numbers(frame)[culprit]}"
    out = bad_rows | left_out
    rejected = _reject_frame(frame, np.flatnonzero(out), list(row_reason[out]))

    good = np.flatnonzero(~query_bad)
    first_rows = starts[good]
    rows_good = ~out
    cell = (query_of_row[rows_good], model_codes[rows_good])
    remap = np.full(starts.size, -1, np.int64)
    remap[good] = np.arange(good.size)
    cell = (remap[cell[0]], cell[1])
    available = counts[good] > 0  # exactly one row where True: duplicates rejected the query
    grid_cost = np.zeros((good.size, k))  # 0 where not logged: a replay never runs such a model
    grid_cost[cell] = cost[rows_good]
    grid_quality = np.full((good.size, k), np.nan)
    grid_quality[cell] = quality[rows_good]
    responses = np.full((good.size, k), "", dtype=object)
    if "response" in frame.columns and router.estimator.uses_responses_:
        responses[cell] = _text_column(frame["response"], np.flatnonzero(rows_good))
    signals = {}
    for name, value in signal_values.items():
        signals[name] = np.full((good.size, k), np.nan)
        signals[name][cell] = value[rows_good]
    grid_latency = None
    if latency is not None:
        grid_latency = np.full((good.size, k), np.nan)
        grid_latency[cell] = latency[rows_good]
    values = {c: _text_column(frame[c], first_rows) for c in per_query}
    return LoggedBatch(first_rows=_row_numbers(frame)[first_rows], query_ids=first_keys[good], values=values,
                       cost=grid_cost, quality=grid_quality, responses=responses, signals=signals,
                       available=available, rejected=rejected, latency=grid_latency)
