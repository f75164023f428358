"""The service's traffic log as training data: its files, their columns, and reading them back with labels.

``training.serve --log-dir DIR`` (:mod:`training.serving.traffic`) writes,
per answered request, one row per model called, in the long format
:func:`training.data.read_table` reads (``query_id`` is the request id),
into Parquet files ``traffic-*.parquet``; labels posted later to
``/v1/feedback`` land in ``feedback-*.parquet`` files beside them. Files
are immutable once renamed to their final name, so a label is a row of its
own, joined here by ``(query_id, model)``.

Why a join rather than a rewrite: a reader (``training.fit`` on a live
folder) must never see half a file, and a request's rows are written
seconds before anyone can label them. :func:`read_logs` joins the latest
label of each row (from the feedback files and, optionally, from a user's
own table, e.g. a judge's or unit tests' verdicts keyed by request id) and
keeps the labelled rows, which is what ``read_table`` needs (a ``quality``
on every row). ``read_table(DIR)`` and ``training.fit --data DIR`` do this
by themselves for a folder holding traffic files.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["FEEDBACK_PREFIX", "FEEDBACK_SCHEMA", "TRAFFIC_PREFIX", "TRAFFIC_SCHEMA", "answered_requests", "is_log_dir",
           "read_logs"]

TRAFFIC_PREFIX = "traffic-"
FEEDBACK_PREFIX = "feedback-"

#: One row per model called for one request. The first columns are the long format of ``training.data``;
#: the rest are the request's decision trace (what the router knew and did), ignored by ``read_table``.
TRAFFIC_SCHEMA = pa.schema([
    ("query_id", pa.string()),        # the request id (x-router-request-id)
    ("prompt", pa.string()),          # the text the router read: the last user message
    ("task", pa.string()),
    ("subtask", pa.string()),
    ("model", pa.string()),
    ("response", pa.string()),
    ("cost_usd", pa.float64()),
    ("latency_s", pa.float64()),
    ("input_tokens", pa.float64()),
    ("output_tokens", pa.float64()),
    ("propensity", pa.float64()),     # probability that this call was made (1 for the policy's own calls)
    ("quality", pa.float64()),        # null until labelled (feedback files, or read_logs(labels=...))
    ("step", pa.int32()),             # 0, 1, ... in call order; the exploration call comes last
    ("explored", pa.bool_()),         # made by the exploration draw, not the policy
    ("selected", pa.bool_()),         # its answer was returned
    ("error", pa.string()),           # the upstream failure's kind; null when it answered
    ("budget", pa.float64()),         # the policy's budget (the paced target when paced)
    ("lambdas", pa.list_(pa.float64())),  # the policy's λ per step when the request was logged
    ("paced", pa.bool_()),
    ("request_cost_usd", pa.float64()),   # the whole request's realised cost, exploration included
    ("baseline_model", pa.string()),      # the all-frontier baseline ...
    ("baseline_cost_usd", pa.float64()),  # ... its cost at this request's tokens (saving = this - the cascade's)
    ("explore_epsilon", pa.float64()),    # the exploration draw's probability (0: none) ...
    ("explore_models", pa.int32()),       # ... its number of models ...
    ("n_models", pa.int32()),             # ... among this many (training.offpolicy needs all three)
    ("shadow_path", pa.list_(pa.string())),  # --shadow: the shadow router's path on the served answers ...
    ("shadow_selected", pa.string()),     # ... the answer it would have returned (null: unknown, its path left) ...
    ("shadow_agrees", pa.bool_()),        # ... whether path and answer agree with the served (null: no comparison)
    ("received_at", pa.timestamp("ms", tz="UTC")),
])

#: One row per label posted to /v1/feedback.
FEEDBACK_SCHEMA = pa.schema([
    ("query_id", pa.string()),
    ("model", pa.string()),
    ("quality", pa.float64()),
    ("received_at", pa.timestamp("ms", tz="UTC")),
])


def _files(directory: Path, prefix: str) -> list[Path]:
    """The final files of one kind, oldest first (a temporary file starts with '.' and is never listed)."""
    return sorted(p for p in directory.glob(f"{prefix}*.parquet") if p.is_file())


def is_log_dir(directory: Path) -> bool:
    """Whether ``directory`` holds at least one traffic file (then ``read_table`` reads it with :func:`read_logs`)."""
    return directory.is_dir() and bool(_files(directory, TRAFFIC_PREFIX))


def _read(files: list[Path], schema: pa.Schema) -> pd.DataFrame:
    if not files:
        return schema.empty_table().to_pandas()
    tables = []
    for path in files:
        try:
            tables.append(pq.read_table(path, schema=schema))
        except (OSError, ValueError, pa.ArrowException) as error:
            raise ValueError(f"cannot read the log file {path.name!r} ({type(error).__name__}: {error}); "
                             "move it out of the folder") from error
    return pa.concat_tables(tables).to_pandas()


def read_logs(directory: str | os.PathLike[str], labels: pd.DataFrame | None = None, *,
              keep_unlabelled: bool = False) -> pd.DataFrame:
    """The traffic log of ``directory`` in the long format, each row with its latest label.

    Parameters
    ----------
    directory : path
        A ``--log-dir`` of ``training.serve``.
    labels : pandas.DataFrame, optional
        The user's own labels, joined by request id: columns ``query_id``
        and ``quality``, and optionally ``model`` (without it, or where it
        is empty, a label is the selected answer's). They override the
        feedback files' labels for the same row.
    keep_unlabelled : bool, default False
        Keep rows without a label (``quality`` NaN): ``read_table`` refuses
        them, but they show what was served.

    Returns
    -------
    pandas.DataFrame
        :data:`TRAFFIC_SCHEMA`'s columns, rows of failed upstream calls left
        out (they have no answer to learn from).

    Raises
    ------
    FileNotFoundError
        If ``directory`` holds no traffic file.
    ValueError
        If a log file cannot be read, or ``labels`` lacks a column or names an unknown request.
    """
    folder = Path(directory)
    if not is_log_dir(folder):
        raise FileNotFoundError(f"no traffic log in {str(folder)!r}: expected {TRAFFIC_PREFIX}*.parquet files "
                                "written by training.serve --log-dir")
    rows = _read(_files(folder, TRAFFIC_PREFIX), TRAFFIC_SCHEMA)
    rows = rows[rows["error"].isna()].reset_index(drop=True)
    given = [_read(_files(folder, FEEDBACK_PREFIX), FEEDBACK_SCHEMA)[["query_id", "model", "quality"]]]
    if labels is not None:
        given.append(_user_labels(labels, rows))
    feedback = pd.concat(given, ignore_index=True)
    if len(feedback):
        latest = feedback.drop_duplicates(["query_id", "model"], keep="last").set_index(["query_id", "model"])
        keys = pd.MultiIndex.from_arrays([rows["query_id"], rows["model"]])
        found = latest["quality"].reindex(keys).to_numpy(dtype=float)
        rows["quality"] = np.where(np.isnan(found), rows["quality"].to_numpy(dtype=float), found)
    if not keep_unlabelled:
        rows = rows[rows["quality"].notna()].reset_index(drop=True)
    return rows


def answered_requests(directory: str | os.PathLike[str], limit: int) -> dict[str, tuple[str, ...]]:
    """The last ``limit`` requests logged in ``directory``, oldest first: request id -> models that answered.

    The selected model comes first. A restarted ``training.serve --log-dir``
    starts from these, so that ``/v1/feedback`` takes labels for requests an
    earlier process served (the ids were only in that process's memory).
    Reads the newest files first and only the columns it needs; a file that
    cannot be read is skipped with a warning (the service still starts).

    Parameters
    ----------
    directory : path
        A ``--log-dir``; empty or missing folders give no request.
    limit : int
        Most requests returned (the service's ``feedback_ids``).

    Returns
    -------
    dict of str to tuple of str
    """
    columns = ["query_id", "model", "selected", "error"]
    parts: list[pd.DataFrame] = []
    seen: set[str] = set()
    folder = Path(directory)
    for path in reversed(_files(folder, TRAFFIC_PREFIX) if folder.is_dir() else []):
        if len(seen) >= limit:
            break
        try:
            part = pq.read_table(path, columns=columns).to_pandas()
        except (OSError, ValueError, pa.ArrowException) as error:
            warnings.warn(f"feedback ids: skipped the log file {path.name!r} ({type(error).__name__}: {error})",
                          stacklevel=2)
            continue
        parts.append(part[part["error"].isna()])
        seen.update(parts[-1]["query_id"])
    if not parts:
        return {}
    rows = pd.concat(parts[::-1], ignore_index=True)
    rows = rows.assign(first=~rows["selected"].fillna(False).astype(bool))  # the selected answer sorts first
    answered = rows.sort_values("first", kind="stable").groupby("query_id", sort=False)["model"].agg(tuple)
    order = rows.drop_duplicates("query_id", keep="last")["query_id"]  # a request's last row: when it ended
    return {request_id: answered[request_id] for request_id in order.iloc[-limit:]}


def _user_labels(labels: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """``labels`` as (query_id, model, quality), a missing model read as the request's selected one."""
    missing = [name for name in ("query_id", "quality") if name not in labels.columns]
    if missing:
        raise ValueError(f"the labels lack column(s) {missing}; give query_id (the request id) and quality")
    frame = pd.DataFrame({"query_id": labels["query_id"].astype(str),
                          "model": labels["model"] if "model" in labels.columns else None,
                          "quality": pd.to_numeric(labels["quality"], errors="raise")})
    selected = rows.loc[rows["selected"].fillna(False).astype(bool)].set_index("query_id")["model"]
    unknown = sorted(set(frame["query_id"]) - set(rows["query_id"]))
    if unknown:
        raise ValueError(f"{len(unknown)} label(s) name requests the log does not hold, e.g. {unknown[:3]}; "
                         "join labels to the log they came from")
    blank = frame["model"].isna() | (frame["model"].astype(str) == "")
    frame.loc[blank, "model"] = frame.loc[blank, "query_id"].map(selected)
    return frame
