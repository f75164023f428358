"""Read per-(query, model) benchmark tables into a :class:`RoutingTable`.

Two layouts are understood:

* the **long** format of ``../shared/data/README.md``: one row per
  (query, model) with ``query_id, model, quality, cost_usd`` and optional
  ``task, subtask, split, prompt, response, input_tokens, output_tokens,
  propensity, latency_s``;
* the **wide RouterBench** format (``routerbench_0shot.pkl`` as downloaded,
  or a CSV of it): one row per prompt with ``sample_id, prompt, eval_name``
  and, per model ``M``, the columns ``M`` (quality), ``M|total_cost`` and
  ``M|model_response``. It is recognised by its ``|total_cost`` columns.

Everything is validated before a table is built, and every problem raises a
``ValueError`` that names the offending rows (0-based positions among the
data rows of the input; the header is not counted) and what to do about it.
Nothing is dropped or repaired silently: a routing policy fitted on a table
with a duplicate would be wrong without any visible symptom.

A (query, model) pair without a row is *not logged* (traffic logs hold
outcomes only for the models that were called), which is not malformed: it
is recorded in :attr:`RoutingTable.logged` (ALGORITHM.md §7), and
:func:`coverage` counts it per model.
"""

from __future__ import annotations

if __name__ == "__main__":  # parse before the imports below (NumPy, pandas, pyarrow), so that --help answers at once
    import sys

    from training.cli import data_parser, parse_or_exit_code

    if isinstance(code := parse_or_exit_code(data_parser().parse_args, sys.argv[1:]), int):
        sys.exit(code)
    from importlib import import_module

    # run the importable module (parsed again): one copy of it, the one tests import
    sys.exit(import_module("training.data").main())

import argparse
import ast
import hashlib
import os
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from estimators.table import RoutingTable

from .defaults import OPTIONAL_COLUMNS, REQUIRED_COLUMNS  # re-exported: the long format's columns

__all__ = ["OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "THROUGHPUT_COLUMNS", "coverage", "derive_latency", "fingerprint",
           "read_prices", "read_table", "read_throughput"]

PathLike = str | os.PathLike
Prices = Mapping[str, tuple[float, float]]
Throughput = Mapping[str, tuple[float, float]]

PRICE_COLUMNS = ("model", "input_price_per_mtok_usd", "output_price_per_mtok_usd")
#: Per-model serving speed of a ``models.csv``: seconds to the first token and output tokens per second.
THROUGHPUT_COLUMNS = ("model", "ttft_s", "output_tokens_per_s")

_QUERY_TEXT = {"prompt": "prompts", "task": "tasks", "subtask": "subtasks", "split": "splits"}
_TOKENS = ("input_tokens", "output_tokens")
_WIDE_COST = "|total_cost"
_WIDE_RESPONSE = "|model_response"
_MISSING_TEXT = frozenset({"", "nan", "na", "n/a", "null", "none"})
_SHOWN = 5  # offending rows quoted in full in an error message


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #


def read_table(
    source: PathLike | pd.DataFrame,
    *,
    models: Sequence[str] | None = None,
    quality_range: tuple[float, float] = (0.0, 1.0),
    signal_columns: Sequence[str] = (),
    prices: Prices | PathLike | None = None,
    throughput: Throughput | PathLike | None = None,
    allow_pickle: bool = False,
) -> RoutingTable:
    """Load, validate and pivot a benchmark table into a :class:`RoutingTable`.

    Parameters
    ----------
    source : path or pandas.DataFrame
        A ``.parquet``, ``.csv`` or ``.csv.gz`` file in the long format (or
        a folder of Parquet files, as Spark and pandas write a dataset), a
        wide RouterBench ``.pkl``/``.csv``, or a DataFrame in either layout.
        CSV files are read as text with empty fields kept as ``''`` (pandas
        would otherwise turn an empty ``response`` into NaN); numeric columns
        are parsed afterwards so that a bad value is reported with its row.
        Pickles are loaded with :func:`pandas.read_pickle`, which can run
        arbitrary code, so only with ``allow_pickle=True`` (issue 30): load
        trusted files only.
    models : sequence of str, optional
        Keep only these models (rows of the other models are ignored, and
        so are their values).
    quality_range : (float, float), default (0.0, 1.0)
        Inclusive range every quality must lie in; a value outside usually
        means a different scale (percent, or a reward model's logit).
    signal_columns : sequence of str, default ()
        Extra numeric per-(query, model) columns to carry into
        :attr:`RoutingTable.signals` (a log-probability, a verifier score).
        Empty or NaN values mean "not logged" and are kept as NaN. In the
        wide format, signal ``s`` of model ``M`` is read from column ``M|s``.
    prices : mapping or path, optional
        A ``{model: (input, output)}`` price table in USD per 1M tokens, or a
        path to a ``models.csv``-style file (see :func:`read_prices`). It is
        only **checked** here: every model of the result must have a price,
        so that a cost estimator fitted later cannot fail halfway. Prices are
        not stored in the table (it has no field for them); keep the mapping
        you passed, or call :func:`read_prices`.
    throughput : mapping or path, optional
        ``{model: (ttft_s, output_tokens_per_s)}`` or a ``models.csv``-style
        file with :data:`THROUGHPUT_COLUMNS` (see :func:`read_throughput`).
        When the source has no ``latency_s`` column, each logged cell's
        latency is derived as ``ttft_s + output_tokens / output_tokens_per_s``
        (a model generates its answer token by token after a fixed start-up),
        so the source needs ``output_tokens`` on every logged row. Ignored
        when ``latency_s`` is present: measured latency beats a derived one.
    allow_pickle : bool, default False
        Read a ``.pkl``/``.pickle`` source (unpickling runs the file's code);
        without it such a file is refused before it is opened.

    Returns
    -------
    RoutingTable
        Queries sorted by ``query_id`` (as text), models sorted by mean cost
        over their logged queries, cheapest first (ties by name). A (query,
        model) pair without a row is not logged: ``logged`` is False there
        and its quality and cost are NaN. A ``propensity`` column (the
        probability that the logging policy logged the row; empty for 1)
        becomes :attr:`RoutingTable.propensity`, which estimators use as
        inverse-propensity weights. Text columns absent from the source
        are ``None``; present ones have ``''`` for missing entries. Token
        columns, when present, have NaN for unknown counts. ``latency``
        (seconds) comes from ``latency_s`` or ``throughput``, else is ``None``.

    Raises
    ------
    FileNotFoundError
        If ``source`` is a path that does not exist.
    TypeError
        If a ``prompt`` is not a string (``None``, a number), naming its rows.
    ValueError
        On a file that cannot be parsed as its suffix says (empty,
        truncated, corrupted, not UTF-8 CSV); a column name that occurs
        twice; an empty input; a missing
        required column; an unknown model name
        in ``models``; a missing or empty ``query_id``/``model``; a
        duplicated (query_id, model) pair; a cost or latency_s that is not a finite number >= 0; a quality that is
        NaN or outside ``quality_range``; a non-numeric token count or
        signal; a per-query text (prompt, task, ...) that differs between
        the rows of one query; a model without a price; a ``throughput``
        without a model of the table, or without the output token counts it needs.

    Examples
    --------
    >>> import pandas as pd
    >>> frame = pd.DataFrame({
    ...     "query_id": ["q1", "q1", "q2", "q2"],
    ...     "model": ["big", "small", "big", "small"],
    ...     "quality": [1.0, 0.0, 1.0, 1.0],
    ...     "cost_usd": [0.01, 0.001, 0.02, 0.001],
    ... })
    >>> table = read_table(frame)
    >>> table.models
    ('small', 'big')
    >>> table.quality.tolist()
    [[0.0, 1.0], [1.0, 1.0]]
    """
    low, high = _check_range(quality_range)
    signal_columns = _check_signal_names(signal_columns)
    frame = _load(source, allow_pickle, used=(*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *signal_columns))
    _check_unique_columns(frame, "the input")
    if len(frame) == 0:
        raise ValueError(
            "the input has no rows; expected one row per (query, model) pair "
            f"with columns {list(REQUIRED_COLUMNS)}"
        )
    if _is_wide(frame):
        frame, origin = _wide_to_long(frame, signal_columns)
    else:
        origin = np.arange(len(frame))
    table = _build(frame, origin, models, low, high, signal_columns)
    if prices is not None:
        _check_prices(prices, table.models)
    if throughput is not None and table.latency is None:
        table = replace(table, latency=derive_latency(table, throughput))
    return table


def read_prices(path: PathLike | pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Read per-model token prices from a ``models.csv``-style table.

    Parameters
    ----------
    path : path or pandas.DataFrame
        A CSV (optionally ``.gz``) or DataFrame with columns ``model``,
        ``input_price_per_mtok_usd`` and ``output_price_per_mtok_usd`` (USD
        per 1M tokens), the layout of ``../shared/data/*/models.csv``. Other
        columns are ignored.

    Returns
    -------
    dict of str to (float, float)
        ``{model: (input_price, output_price)}`` in USD per 1M tokens. Rows
        where **both** prices are empty are skipped with a warning that
        lists those models: catalogues often list models whose price is not
        public, and the caller decides whether that matters (``read_table``
        with ``prices=`` raises if a model it loads has no price).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be parsed as CSV, a column is missing or occurs twice, a model is
        listed twice or has no name, only one of its two prices is given, or
        a price is not a number >= 0.
    """
    frame, names = _per_model_rows(path, PRICE_COLUMNS, "price", "with prices in USD per 1M tokens")
    columns = [_numbers(frame[name]) for name in PRICE_COLUMNS[1:]]
    (inp, inp_bad), (out, out_bad) = columns
    for column, (values, bad) in zip(PRICE_COLUMNS[1:], columns, strict=True):
        _raise_if(
            bad | (values < 0) | np.isinf(values),
            f"{column} must be a number >= 0 (USD per 1M tokens)",
            names=names,
            shown=frame[column].to_numpy(dtype=object),
        )
    inp_nan, out_nan = np.isnan(inp), np.isnan(out)
    _raise_if(
        inp_nan != out_nan,
        "a model has only one of its two prices; give both, or neither to skip it",
        names=names,
    )
    skipped = [str(name) for name in names[inp_nan & out_nan]]
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} model(s) without prices: {skipped}",
            UserWarning,
            stacklevel=2,
        )
    keep = ~inp_nan
    return {str(n): (float(i), float(o)) for n, i, o in zip(names[keep], inp[keep], out[keep], strict=True)}


def read_throughput(path: PathLike | pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Read per-model serving speed from a ``models.csv``-style table, to derive latency from token counts.

    Parameters
    ----------
    path : path or pandas.DataFrame
        A CSV (optionally ``.gz``) or DataFrame with :data:`THROUGHPUT_COLUMNS`:
        ``ttft_s`` (seconds to the first token, >= 0) and
        ``output_tokens_per_s`` (> 0). Other columns are ignored, so the
        price columns can sit in the same file.

    Returns
    -------
    dict of str to (float, float)
        ``{model: (ttft_s, output_tokens_per_s)}``.

    Raises
    ------
    ValueError
        If a column is missing, a model is listed twice or has no name, or a
        figure is missing, not finite, a negative ``ttft_s`` or a
        non-positive ``output_tokens_per_s``.
    """
    frame, names = _per_model_rows(path, THROUGHPUT_COLUMNS, "throughput",
                                   "(seconds to the first token, output tokens per second)")
    (ttft, ttft_bad), (speed, speed_bad) = (_numbers(frame[name]) for name in THROUGHPUT_COLUMNS[1:])
    _raise_if(ttft_bad | ~np.isfinite(ttft) | ~(ttft >= 0), "ttft_s must be a finite number >= 0 (seconds)",
              names=names, shown=frame["ttft_s"].to_numpy(dtype=object))
    _raise_if(speed_bad | ~np.isfinite(speed) | ~(speed > 0),
              "output_tokens_per_s must be a finite number > 0", names=names,
              shown=frame["output_tokens_per_s"].to_numpy(dtype=object))
    return {str(n): (float(t), float(v)) for n, t, v in zip(names, ttft, speed, strict=True)}


def derive_latency(table: RoutingTable, throughput: Throughput | PathLike) -> np.ndarray:
    """Per-cell latency ``ttft_s + output_tokens / output_tokens_per_s`` for a table that logs tokens, not time.

    Parameters
    ----------
    table : RoutingTable
        With ``output_tokens`` on every logged cell.
    throughput : mapping or path
        See :func:`read_throughput`.

    Returns
    -------
    ndarray of float64, shape (N, K)
        Seconds; NaN where not logged.

    Raises
    ------
    ValueError
        If a model of the table has no throughput, or the table lacks output
        token counts on a logged cell.
    """
    if not isinstance(throughput, Mapping):
        throughput = read_throughput(throughput)
    missing = [m for m in table.models if m not in throughput]
    if missing:
        raise ValueError(f"no throughput for model(s) {missing}; add rows with {list(THROUGHPUT_COLUMNS)} "
                         "or log a latency_s column")
    tokens = table.output_tokens
    lacking = table.logged if tokens is None else table.logged & ~np.isfinite(tokens)
    if lacking.any():
        q, m = np.argwhere(lacking)[0]
        raise ValueError(f"deriving latency from throughput needs output_tokens on every logged row; "
                         f"{int(lacking.sum())} lack it, e.g. query {table.query_ids[q]!r}, model "
                         f"{table.models[m]!r}. Log output_tokens or latency_s")
    ttft, speed = (np.array([throughput[m][j] for m in table.models], dtype=np.float64) for j in (0, 1))
    # tokens is None only when nothing is logged (else ``lacking`` refused it): every cell is NaN then
    filled = np.zeros(table.cost.shape) if tokens is None else np.nan_to_num(tokens)
    return np.where(table.logged, ttft + filled / speed, np.nan)


def _per_model_rows(path: PathLike | pd.DataFrame, columns: Sequence[str], what: str,
                    unit: str) -> tuple[pd.DataFrame, np.ndarray]:
    """A ``models.csv``-style table read as text, with its model names checked: one named row per model."""
    if isinstance(path, pd.DataFrame):
        frame = path
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such {what} file: {str(path)!r}")
        frame = _read_csv(path)
    _check_unique_columns(frame, f"the {what} table")
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"{what} table lacks column(s) {missing}; found {list(frame.columns)}. "
                         f"Expected {list(columns)} {unit}")
    names, name_missing = _text(frame["model"])
    _raise_if(name_missing, f"{what} table has rows without a model name", names=names)
    _raise_if(pd.Series(names).duplicated(keep=False).to_numpy(),
              f"{what} table lists a model more than once; keep one row per model", names=names)
    return frame, names


def coverage(table: RoutingTable, rows: np.ndarray | None = None) -> list[dict[str, object]]:
    """Per model, how many queries (of ``rows``) have its outcome logged, so that thin coverage is seen before fitting.

    Parameters
    ----------
    table : RoutingTable
    rows : ndarray of int, optional
        Queries to count over (a training split); default all.

    Returns
    -------
    list of dict
        One ``{"model", "logged", "share"}`` per model, in column order.
    """
    logged = table.logged if rows is None else table.logged[rows]
    total = max(logged.shape[0], 1)
    return [{"model": model, "logged": int(count), "share": float(count / total)}
            for model, count in zip(table.models, logged.sum(axis=0), strict=True)]


def fingerprint(table: RoutingTable) -> str:
    """Return a sha256 hex digest identifying a table's models, queries and labels.

    Artifact manifests store it so that a policy is never evaluated, or
    silently reused, on data other than the data it was fitted on. It covers
    the model names and order, the query ids and order, and the exact bytes
    of ``quality`` and ``cost`` (float64, C order), and of ``latency`` when
    the table has one (so a table without latency keeps its digest); texts,
    tokens and signals are not included.

    Parameters
    ----------
    table : RoutingTable

    Returns
    -------
    str
        64 hexadecimal characters.
    """
    digest = hashlib.sha256(b"cascade-router.RoutingTable.v1\0")
    for names in (table.models, table.query_ids):
        digest.update(len(names).to_bytes(8, "little"))
        for name in names:
            encoded = str(name).encode("utf-8")
            digest.update(len(encoded).to_bytes(8, "little"))
            digest.update(encoded)
    for values in (table.quality, table.cost) + (() if table.latency is None else (table.latency,)):
        array = np.ascontiguousarray(values, dtype="<f8")
        digest.update(np.asarray(array.shape, dtype="<i8").tobytes())
        digest.update(array.tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- #
# loading
# --------------------------------------------------------------------------- #


def _load(source: PathLike | pd.DataFrame, allow_pickle: bool = False,
          used: Sequence[str] | None = None) -> pd.DataFrame:
    """The source as a frame; a Parquet source streamed with only the ``used`` columns (:func:`_read_parquet`)."""
    if isinstance(source, pd.DataFrame):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path or a pandas DataFrame, got {type(source).__name__}")
    path = Path(source)
    from .traffic_log import is_log_dir, read_logs  # here: training.traffic_log is above this module

    if is_log_dir(path):  # training.serve --log-dir: its labelled rows, labels joined (issue 34)
        return read_logs(path)
    if path.is_dir():  # a Parquet dataset, as Spark and pandas (partition_cols) write one
        return _parse(path, "a Parquet dataset folder", lambda folder: _read_parquet(folder, used))
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    name = path.name.lower()
    if name.endswith(".parquet"):
        return _parse(path, "Parquet", lambda file: _read_parquet(file, used))
    if name.endswith((".csv", ".csv.gz")):
        return _read_csv(path)
    if name.endswith((".pkl", ".pickle", ".pkl.gz")):
        if not allow_pickle:
            raise ValueError(f"{path.name!r} is a pickle, and reading it runs any code it holds; convert it to "
                             "Parquet, or pass allow_pickle=True (CLIs: --allow-pickle) if you trust its source")
        frame = pd.read_pickle(path)
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"{path.name!r} holds a {type(frame).__name__}, not a pandas DataFrame")
        return frame
    raise ValueError(f"cannot read {path.name!r}: expected a .parquet, .csv, .csv.gz or .pkl file")


#: What the Parquet and CSV readers raise on a file that is not what its name says (truncated, corrupted, not
#: UTF-8, ragged rows, a broken gzip stream): pyarrow's errors, pandas' (ValueError subclasses), gzip's and zlib's.
_UNREADABLE = (OSError, ValueError, EOFError, zlib.error, pa.ArrowException)


def _parse(path: Path, kind: str, reader: Callable[[Path], pd.DataFrame]) -> pd.DataFrame:
    """``reader(path)``, with a file it cannot parse reported as one ``ValueError`` naming the file and the fix.

    Without this, a corrupted Parquet file ends the CLIs with pyarrow's
    ``OSError`` (a traceback, not exit code 2) and an empty CSV with
    pandas' "No columns to parse from file", which names no file.
    """
    try:
        return reader(path)
    except _UNREADABLE as error:
        raise ValueError(
            f"cannot read {path.name!r} as {kind} ({type(error).__name__}: {' '.join(str(error).split())}); "
            f"the file is empty, truncated, corrupted or not {kind}: re-export it"
        ) from error


#: Bytes of the selected columns decoded per Parquet read. pyarrow's reader holds several times the
#: batch it decodes, so reads are sized in bytes: memory stays the same whatever the length of the
#: prompts or the size of the file's row groups (pandas writes row groups of a million rows).
READ_BYTES = 16 * 2**20


def parquet_rows_per_read(parquet: pq.ParquetFile, columns: Sequence[str], most: int, read_bytes: int) -> int:
    """Rows per Parquet read: about ``read_bytes`` of ``columns``, measured on the file's first rows.

    At least 64 and at most ``most`` rows. A dictionary column's values are
    shared by the reads of a row group, so only its indices count.
    """
    sample = next(parquet.iter_batches(batch_size=1024, columns=list(columns)), None)
    if sample is None or not sample.num_rows:
        return most
    sizes = [column.indices.nbytes if pa.types.is_dictionary(column.type) else column.nbytes
             for column in sample.columns]
    return int(np.clip(read_bytes * sample.num_rows // max(sum(sizes), 1), 64, most))


def _read_parquet(path: Path, used: Sequence[str] | None = None) -> pd.DataFrame:
    """A Parquet file (or a dataset folder of them) as a frame, its text checked to be UTF-8.

    Parquet does not check that a string column is valid UTF-8 when it is
    read; pandas' Arrow-backed strings would fail only when a value is
    first used, deep in validation, with pyarrow's "Wrapping ... failed".

    With ``used`` (the long format's column names :func:`read_table`
    reads), a long table's other columns are not read, and a file is read
    :data:`READ_BYTES` at a time (issue 33): a table of months of logs
    repeats each prompt on every model's row, and pandas would hold every
    copy (its Arrow strings, then one Python string per row once
    validation reads them). Text columns become object arrays holding one
    Python string per distinct value of a read (:func:`_decoded`), so a
    prompt is held about once per query; missing text is NaN, as pandas
    reads it. A wide table, or one without a required column, repeating a
    column name, or lacking a named signal column, is read whole, so that
    :func:`read_table` names everything it found.
    """
    schema = pq.read_schema(path) if path.is_file() else pq.ParquetDataset(path).schema
    names = list(schema.names)
    streamed = (used is not None and len(set(names)) == len(names)
                and not any(name.endswith(_WIDE_COST) for name in names)
                and set(REQUIRED_COLUMNS) <= set(names)
                and set(used) - set(REQUIRED_COLUMNS) - set(OPTIONAL_COLUMNS) <= set(names))
    if not streamed:
        table = pq.read_table(path)
        table.validate(full=True)
        return table.to_pandas()
    columns = [name for name in names if name in set(used or ())]
    if path.is_file():
        parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=2**20)  # pre_buffer keeps every chunk read
        batches = parquet.iter_batches(batch_size=parquet_rows_per_read(parquet, columns, 1 << 20, READ_BYTES),
                                       columns=columns)
    else:
        batches = iter(pq.read_table(path, columns=columns).to_batches())
    text = [name for name in columns if _is_text(schema.field(name).type)]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in text}
    rest: list[pa.RecordBatch] = []
    for batch in batches:
        batch.validate(full=True)
        for name in text:
            parts[name].append(_decoded(batch.column(name)))
        rest.append(batch.select([name for name in columns if name not in parts]))
    kept = pa.schema([schema.field(name) for name in columns if name not in parts])
    # positions, not the file's pandas index: a frame pandas wrote after filtering keeps its labels (600, 601, ...),
    # and the text columns built below are numbered from 0, so labels would misalign the two on joining
    others = (pa.Table.from_batches(rest) if rest else kept.empty_table()).to_pandas().reset_index(drop=True)
    del rest
    pa.default_memory_pool().release_unused()  # the reads' buffers, which the pool would keep for later reads
    frame = {}
    for name in columns:
        if name in parts:
            chunks = parts.pop(name)  # each read's pointers freed as they are joined
            frame[name] = pd.Series(np.concatenate(chunks) if chunks else np.empty(0, object), dtype=object)
            del chunks
        else:
            frame[name] = others[name]
    return pd.DataFrame(frame)


def _is_text(kind: pa.DataType) -> bool:
    value = kind.value_type if pa.types.is_dictionary(kind) else kind
    return bool(pa.types.is_string(value) or pa.types.is_large_string(value))


def _decoded(column: pa.Array) -> np.ndarray:
    """A text column as an object array sharing one Python string per distinct value; missing values as NaN."""
    encoded = column if pa.types.is_dictionary(column.type) else column.dictionary_encode()
    values = np.array([*encoded.dictionary.to_pylist(), np.nan], dtype=object)
    index = encoded.indices.fill_null(len(encoded.dictionary)).to_numpy(zero_copy_only=False)
    return values[index]


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV (or CSV.gz) file all as text, ``''`` kept as ``''`` (see ../shared/data/README.md).

    Numbers are parsed later, so that a bad value is reported with its row.
    """
    return _parse(path, "UTF-8 CSV", lambda source: pd.read_csv(source, dtype=str, keep_default_na=False,
                                                               na_filter=False))


def _is_wide(frame: pd.DataFrame) -> bool:
    return any(str(column).endswith(_WIDE_COST) for column in frame.columns)


def _wide_to_long(frame: pd.DataFrame, signal_columns: tuple[str, ...]) -> tuple[pd.DataFrame, np.ndarray]:
    """Melt RouterBench's one-row-per-prompt layout into the long format."""
    models = [str(c)[: -len(_WIDE_COST)] for c in frame.columns if str(c).endswith(_WIDE_COST)]
    missing = [name for name in ("sample_id", "prompt", "eval_name") if name not in frame.columns]
    missing += [m for m in models if m not in frame.columns]
    missing += [f"{m}|{s}" for m in models for s in signal_columns if f"{m}|{s}" not in frame.columns]
    if missing:
        raise ValueError(
            f"wide RouterBench table (detected by its '{_WIDE_COST}' columns) lacks column(s) "
            f"{missing}; each model M needs a quality column 'M' next to 'M{_WIDE_COST}'"
        )
    n, k = len(frame), len(models)
    prompts = np.array([_join_listed(value) for value in frame["prompt"]], dtype=object)
    columns = {
        "query_id": np.repeat(frame["sample_id"].to_numpy(dtype=object), k),
        "task": np.repeat(frame["eval_name"].to_numpy(dtype=object), k),
        "prompt": np.repeat(prompts, k),
        "model": np.tile(np.array(models, dtype=object), n),
    }

    def cells(suffix: str) -> np.ndarray:
        block = [frame[f"{m}{suffix}"].to_numpy(dtype=object) for m in models]
        return np.stack(block, axis=1).reshape(-1)

    columns["quality"] = cells("")
    columns["cost_usd"] = cells(_WIDE_COST)
    if all(f"{m}{_WIDE_RESPONSE}" in frame.columns for m in models):
        columns["response"] = np.array([_join_listed(v) for v in cells(_WIDE_RESPONSE)], dtype=object)
    for name in signal_columns:
        columns[name] = cells(f"|{name}")
    return pd.DataFrame(columns), np.repeat(np.arange(n), k)


#: Longest wide-format cell parsed as a list literal: :func:`ast.literal_eval` builds a syntax tree first, about
#: about 240 bytes and 0.85 microseconds per source byte (a 10 MB cell took 8.5 CPU-s and 2.4 GiB, issue 30), so
#: this cap bounds one cell at about 60 MB and 0.2 s; the longest response in the shared RouterBench subset has
#: 4,000 characters. A longer cell is kept as the text it is.
MAX_LISTED_CHARS = 1 << 18


def _join_listed(value: object) -> str:
    """Undo RouterBench's habit of storing a text as the repr of a list of strings (cells up to
    :data:`MAX_LISTED_CHARS`)."""
    if not isinstance(value, str):
        return "" if _is_missing(value) else str(value)
    stripped = value.strip()
    if 2 <= len(stripped) <= MAX_LISTED_CHARS and stripped[0] == "[" and stripped[-1] == "]":
        try:
            parsed = ast.literal_eval(stripped)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value
        if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
            return "\n\n".join(parsed)
    return value


# --------------------------------------------------------------------------- #
# validation and pivoting
# --------------------------------------------------------------------------- #


def _build(
    frame: pd.DataFrame,
    origin: np.ndarray,
    models: Sequence[str] | None,
    low: float,
    high: float,
    signal_columns: tuple[str, ...],
) -> RoutingTable:
    missing = [name for name in REQUIRED_COLUMNS if name not in frame.columns]
    if missing:
        raise ValueError(
            f"missing required column(s) {missing}; found {list(frame.columns)}. The long format "
            f"needs {list(REQUIRED_COLUMNS)}; the wide RouterBench format is recognised by "
            f"'MODEL{_WIDE_COST}' columns"
        )
    absent = [name for name in signal_columns if name not in frame.columns]
    if absent:
        raise ValueError(f"signal column(s) {absent} not found; found {list(frame.columns)}")

    qids, qid_missing = _text(frame["query_id"])
    names, name_missing = _text(frame["model"])
    _raise_if(qid_missing, "query_id is empty", origin=origin)
    _raise_if(name_missing, "model is empty", origin=origin, qids=qids)

    _check_spellings(names)
    if models is not None:
        keep = np.isin(names, _check_model_subset(models, names))
        frame, origin, qids, names = frame.iloc[np.flatnonzero(keep)], origin[keep], qids[keep], names[keep]
    where = {"origin": origin, "qids": qids, "names": names}

    quality, bad = _numbers(frame["quality"], allow_bool=True)
    _raise_if(
        bad | ~(quality >= low) | ~(quality <= high),
        f"quality must be a number in [{low:g}, {high:g}] (set quality_range for another scale)",
        shown=frame["quality"].to_numpy(dtype=object),
        **where,
    )
    cost, bad = _numbers(frame["cost_usd"])
    _raise_if(
        bad | ~np.isfinite(cost) | ~(cost >= 0),
        "cost_usd must be a finite number >= 0 (USD for this query and model)",
        shown=frame["cost_usd"].to_numpy(dtype=object),
        **where,
    )
    cells: dict[str, np.ndarray] = {}
    if "latency_s" in frame.columns:
        latency, bad = _numbers(frame["latency_s"])
        _raise_if(
            bad | ~np.isfinite(latency) | ~(latency >= 0),
            "latency_s must be a finite number >= 0 (seconds this model took on this query)",
            shown=frame["latency_s"].to_numpy(dtype=object),
            **where,
        )
        cells["latency"] = latency
    if "propensity" in frame.columns:
        values, bad = _numbers(frame["propensity"])
        values = np.where(np.isnan(values) & ~bad, 1.0, values)
        _raise_if(
            bad | ~(values > 0) | ~(values <= 1),
            "propensity must be a probability in (0, 1] (how likely the logging policy was to log this row), "
            "or empty for 1",
            shown=frame["propensity"].to_numpy(dtype=object),
            **where,
        )
        cells["propensity"] = values
    for name in _TOKENS:
        if name in frame.columns:
            values, bad = _numbers(frame[name])
            _raise_if(
                bad | (values < 0) | np.isinf(values),
                f"{name} must be a number >= 0, or empty/NaN when unknown",
                shown=frame[name].to_numpy(dtype=object),
                **where,
            )
            cells[name] = values
    signals = {}
    for name in signal_columns:
        values, bad = _numbers(frame[name])
        _raise_if(
            bad,
            f"signal column {name!r} must be numeric (empty/NaN means 'not logged')",
            shown=frame[name].to_numpy(dtype=object),
            **where,
        )
        signals[name] = values

    query_index, model_index, query_ids, model_names = _grid(**where)
    n, k = len(query_ids), len(model_names)

    def pivot(values: np.ndarray, fill: object) -> np.ndarray:
        out = np.full((n, k), fill, dtype=np.asarray(values).dtype)
        out[query_index, model_index] = values
        return out

    quality, cost = pivot(quality, np.nan), pivot(cost, np.nan)
    logged = pivot(np.ones(len(qids), dtype=bool), False)
    order = np.lexsort((np.array(model_names, dtype=str), np.nanmean(cost, axis=0)))
    ordered_names = tuple(model_names[i] for i in order)

    def arrange(values: np.ndarray, fill: object) -> np.ndarray:
        return pivot(values, fill)[:, order]

    if "prompt" in frame.columns:
        _check_prompt_types(frame["prompt"].to_numpy(dtype=object), origin)
    per_query = {}
    for column, field_name in _QUERY_TEXT.items():
        if column in frame.columns:
            values = _one_per_query(column, arrange(_text(frame[column])[0], ""), logged[:, order], query_ids)
            # A column that is '' for every query carries nothing: treat it as absent,
            # so that estimators do not demand it from every later request.
            per_query[field_name] = values if (values != "").any() else None
    return RoutingTable(
        models=ordered_names,
        query_ids=query_ids,
        quality=quality[:, order],
        cost=cost[:, order],
        logged=logged[:, order],
        responses=arrange(_text(frame["response"])[0], "") if "response" in frame.columns else None,
        input_tokens=arrange(cells["input_tokens"], np.nan) if "input_tokens" in cells else None,
        output_tokens=arrange(cells["output_tokens"], np.nan) if "output_tokens" in cells else None,
        propensity=arrange(cells["propensity"], np.nan) if "propensity" in cells else None,
        latency=arrange(cells["latency"], np.nan) if "latency" in cells else None,
        signals={name: arrange(values, np.nan) for name, values in signals.items()},
        **per_query,
    )


def _grid(
    origin: np.ndarray, qids: np.ndarray, names: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Map rows to (query, model) cells; refuse duplicates (a pair without a row is simply not logged).

    Ids are numbered in sorted order by hashing the strings already held,
    not by sorting a fixed-width copy of every row's id (4 bytes per
    character of the longest id, for each of millions of rows: issue 33).
    """
    query_index, query_ids = pd.factorize(qids, sort=True)
    model_index, model_names = pd.factorize(names, sort=True)
    cell = query_index * len(model_names) + model_index
    repeated = pd.Series(cell).duplicated(keep=False).to_numpy()
    if repeated.any():
        groups: dict[int, list[int]] = {}
        for r in np.flatnonzero(repeated):
            groups.setdefault(int(cell[r]), []).append(int(r))
        details = [
            f"query {qids[at[0]]!r} / model {names[at[0]]!r} at rows {[int(origin[r]) for r in at]}"
            for at in list(groups.values())[:_SHOWN]
        ]
        raise ValueError(
            f"{len(groups)} (query_id, model) pair(s) occur more than once: "
            + "; ".join(details)
            + (" ..." if len(groups) > _SHOWN else "")
            + ". Keep one row per pair (average repeated runs before loading if that is what they are)"
        )
    return query_index, model_index, np.asarray(query_ids, dtype=object), [str(m) for m in model_names]


def _check_prompt_types(prompts: np.ndarray, origin: np.ndarray) -> None:
    """Refuse a prompt that is not text.

    ``str(3)`` or ``str(None)`` featurized as a prompt would be learned from silently.
    """
    bad = np.flatnonzero([not isinstance(value, str) for value in prompts])
    if bad.size:
        shown = "; ".join(f"row {int(origin[r])}: {type(prompts[r]).__name__} {repr(prompts[r])[:40]}"
                          for r in bad[:_SHOWN])
        raise TypeError(f"prompt must be a string on every row; {bad.size} row(s) are not: {shown}"
                        + (" ..." if bad.size > _SHOWN else "")
                        + ". Use '' for a query without a prompt")


def _one_per_query(column: str, cells: np.ndarray, logged: np.ndarray, query_ids: np.ndarray) -> np.ndarray:
    """Collapse a per-query text repeated on every logged model's row, refusing disagreements."""
    first = cells[np.arange(len(cells)), np.argmax(logged, axis=1)]
    differs = np.flatnonzero(((cells != first[:, None]) & logged).any(axis=1))
    if differs.size:
        shown = [repr(str(query_ids[q])) for q in differs[:_SHOWN]]
        raise ValueError(
            f"column {column!r} must be the same on every row of a query, but differs between "
            f"models for {differs.size} query(ies): {', '.join(shown)}"
            + (" ..." if differs.size > _SHOWN else "")
        )
    return first


# --------------------------------------------------------------------------- #
# small helpers
# --------------------------------------------------------------------------- #


def _check_unique_columns(frame: pd.DataFrame, what: str) -> None:
    """Refuse repeated column names: which of two ``quality`` columns holds the label is anybody's guess.

    (A CSV cannot have them: pandas renames the second ``quality.1``; a
    DataFrame can.)
    """
    names = [str(name) for name in frame.columns]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{what} has the column(s) {repeated} more than once; keep one column of each name")


def _check_range(quality_range: tuple[float, float]) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in quality_range)
    except (TypeError, ValueError):
        raise ValueError(f"quality_range must be two numbers (low, high), got {quality_range!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and low <= high):
        raise ValueError(f"quality_range must be finite with low <= high, got {quality_range!r}")
    return low, high


def _check_signal_names(signal_columns: Sequence[str]) -> tuple[str, ...]:
    if isinstance(signal_columns, str):
        raise ValueError(f"signal_columns must be a list of column names, got the string {signal_columns!r}")
    names = tuple(signal_columns)
    reserved = [name for name in names if name in REQUIRED_COLUMNS]
    if reserved:
        raise ValueError(
            f"signal_columns may not include {reserved}: ids are not signals, and quality is the "
            "label the estimators must predict"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"signal_columns {list(names)} names a column twice")
    return names


def _check_spellings(names: np.ndarray) -> None:
    """Refuse model names that differ only in case or spaces: one model spelt two ways, not two models.

    Taken as two models, each would lack the other's queries, and the error
    would be about coverage ("only 0 of the 600 queries are logged for every
    model"), naming neither spelling.
    """
    spelt: dict[str, set[str]] = {}
    for name in pd.unique(names):
        spelt.setdefault(" ".join(str(name).split()).casefold(), set()).add(name)
    clashes = [sorted(group) for group in spelt.values() if len(group) > 1]
    if clashes:
        shown = "; ".join(" and ".join(repr(name) for name in group) for group in clashes[:3])
        raise ValueError(f"model names that differ only in case or spaces: {shown}; one model spelt two ways "
                         "(rename the rows to one spelling), or two models that need names that differ in more")


def _check_model_subset(models: Sequence[str], names: np.ndarray) -> list[str]:
    if isinstance(models, str):
        raise ValueError(f"models must be a list of model names, got the string {models!r}")
    wanted = [str(m) for m in models]
    known = sorted({str(name) for name in names})
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known models are {known}")
    if not wanted:
        raise ValueError(f"models is empty; name at least one of {known}")
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"models {wanted} names a model twice")
    return wanted


def _check_prices(prices: Prices | PathLike, models: tuple[str, ...]) -> None:
    if not isinstance(prices, Mapping):
        prices = read_prices(prices)
    unpriced = [m for m in models if m not in prices]
    if unpriced:
        unused = sorted(str(name) for name in prices if name not in models)
        raise ValueError(
            f"no price for model(s) {unpriced}; priced models not in the table: {unused}. "
            "Add the prices (USD per 1M input and output tokens) or select models with models=[...]"
        )
    for model in models:
        pair = prices[model]
        try:
            values = [float(v) for v in pair]
        except (TypeError, ValueError):
            values = []
        if len(values) != 2 or not all(np.isfinite(v) and v >= 0 for v in values):
            raise ValueError(
                f"price of {model!r} must be (input, output) USD per 1M tokens, two numbers >= 0; got {pair!r}"
            )


def _is_missing(value: object) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and np.isnan(value)


def _text(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Return an object array of ``str`` (missing as ``''``) and the mask of missing entries."""
    values = series.to_numpy(dtype=object)
    missing = np.fromiter((_is_missing(v) for v in values), dtype=bool, count=len(values))
    out = np.array(["" if m else (v if isinstance(v, str) else str(v)) for v, m in zip(values, missing, strict=True)],
                   dtype=object)
    return out, missing | (out == "")


def _numbers(series: pd.Series, *, allow_bool: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Parse a column to float64; return the values and the mask of non-numeric entries.

    Missing entries (NaN, None, '' or a spelling such as 'NaN' or 'NA') become
    NaN and are *not* flagged: whether NaN is allowed is the caller's decision.
    Booleans count as numbers only with ``allow_bool`` (a 0/1 quality is
    natural; a True cost is a mistake).
    """
    if pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return values, np.full(len(values), not allow_bool)
    if pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return values, np.zeros(len(values), dtype=bool)
    raw = series.to_numpy(dtype=object)
    parsed = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.fromiter(
        (_is_missing(v) or (isinstance(v, str) and v.strip().lower() in _MISSING_TEXT) for v in raw),
        dtype=bool,
        count=len(raw),
    )
    bad = np.isnan(parsed) & ~missing
    if not allow_bool:
        bad |= np.fromiter((isinstance(v, (bool, np.bool_)) for v in raw), dtype=bool, count=len(raw))
    return parsed, bad


def _raise_if(
    mask: np.ndarray,
    problem: str,
    *,
    origin: np.ndarray | None = None,
    qids: np.ndarray | None = None,
    names: np.ndarray | None = None,
    shown: np.ndarray | None = None,
) -> None:
    """Raise ``ValueError(problem + offending rows)`` if any entry of ``mask`` is set."""
    rows = np.flatnonzero(mask)
    if not rows.size:
        return
    parts = []
    for r in rows[:_SHOWN]:
        label = f"row {int(origin[r]) if origin is not None else int(r)}"
        about = []
        if qids is not None:
            about.append(f"query {qids[r]!r}")
        if names is not None:
            about.append(f"model {names[r]!r}")
        if about:
            label += f" ({', '.join(about)})"
        if shown is not None:
            label += f": {shown[r]!r}"
        parts.append(label)
    more = f" and {rows.size - _SHOWN} more" if rows.size > _SHOWN else ""
    raise ValueError(f"{problem}; {rows.size} row(s) fail: {'; '.join(parts)}{more}")


# --------------------------------------------------------------------------- #
# writing and appending tables (python -m training.data append)
# --------------------------------------------------------------------------- #

#: File names :func:`write_table` writes, by suffix (the formats :func:`read_table` reads back).
TABLE_SUFFIXES = (".parquet", ".csv", ".csv.gz")
#: Long-format columns that hold numbers (CSV holds them as text; Parquet output stores them as numbers).
_NUMERIC_COLUMNS = ("quality", "cost_usd", "input_tokens", "output_tokens", "propensity", "latency_s")


def write_table(frame: pd.DataFrame, path: PathLike, *, overwrite: bool = False) -> None:
    """Write a long-format table as Parquet, CSV or CSV.gz (by the name's suffix), atomically.

    The bytes are written under a temporary name beside ``path`` and renamed
    into place, so a killed run leaves no half-written table; an existing
    file is refused unless ``overwrite``, so that nothing a user owns is
    replaced by mistake.

    Parameters
    ----------
    frame : pandas.DataFrame
        The rows to write.
    path : str or os.PathLike
        Ends in ``.parquet``, ``.csv`` or ``.csv.gz``.
    overwrite : bool, default False
        Replace an existing file.

    Raises
    ------
    ValueError
        If the suffix is none of those, or ``path`` exists and ``overwrite`` is not set.
    OSError
        If the file cannot be written.
    """
    import gzip
    import io

    from .files import write_atomically

    path = Path(path)
    name = path.name.lower()
    if not name.endswith(TABLE_SUFFIXES):
        raise ValueError(f"cannot write {str(path)!r}: name it .parquet, .csv or .csv.gz (the format follows the name)")
    if path.is_dir() or (path.exists() and not overwrite):
        raise ValueError(f"{str(path)!r} exists; give a new file name (existing files are not overwritten)")
    if name.endswith(".parquet"):
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        data = buffer.getvalue()
    else:
        data = frame.to_csv(index=False).encode("utf-8")
        if name.endswith(".gz"):
            data = gzip.compress(data, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)


def append_tables(sources: Sequence[PathLike | pd.DataFrame], *, quality_range: tuple[float, float] = (0.0, 1.0),
                  allow_pickle: bool = False) -> pd.DataFrame:
    """Append long-format tables (e.g. a new model's rows to the logs), checked as one table.

    Each source is read as :func:`read_table` reads it (a CSV's header is its
    header, never a data row), the column sets must agree, and the result is
    validated whole by :func:`read_table`, so that a (query, model) pair
    logged in two sources, or a query whose prompt differs between them, is
    refused with its rows before anything is written.

    Parameters
    ----------
    sources : sequence of path or pandas.DataFrame
        Two or more long-format tables (Parquet, CSV, CSV.gz or a Parquet folder).
    quality_range : (float, float), default (0.0, 1.0)
        Inclusive range of the quality column, as in :func:`read_table`.
    allow_pickle : bool, default False
        Accept ``.pkl`` sources (unpickling runs code; trusted files only).

    Returns
    -------
    pandas.DataFrame
        The rows of every source in order, the first source's column order;
        numeric columns as numbers when any source stored them as numbers.

    Raises
    ------
    ValueError
        If fewer than two sources, a source is RouterBench's wide layout, the
        column sets differ (naming the columns), or the appended table is not
        a valid routing table (:func:`read_table`'s message, rows counted
        across the sources in order).
    """
    if len(sources) < 2:
        raise ValueError(f"append needs at least two tables, got {len(sources)}")
    frames, names = [], []
    for source in sources:
        frame = _load(source, allow_pickle)
        name = "a DataFrame" if isinstance(source, pd.DataFrame) else repr(str(source))
        if _is_wide(frame):
            raise ValueError(f"{name} is RouterBench's wide layout; append reads long tables (one row per query "
                             "and model): convert it first with read_table")
        _check_unique_columns(frame, name)
        frames.append(frame)
        names.append(name)
    first = list(frames[0].columns)
    for frame, name in zip(frames[1:], names[1:], strict=True):
        missing, extra = sorted(set(first) - set(frame.columns)), sorted(set(frame.columns) - set(first))
        if missing or extra:
            raise ValueError(f"{name} has other columns than {names[0]} (missing {missing}, extra {extra}); "
                             "give every table the same columns")
    aligned = [frame[first] for frame in frames]
    appended = pd.concat(aligned, ignore_index=True)
    read_table(appended, quality_range=quality_range)  # the checks of one table, before anything is written
    for column in first:  # CSV text next to Parquet numbers: store numbers ('' = unknown), as Parquet wants one type
        kinds = {pd.api.types.is_numeric_dtype(frame[column]) for frame in aligned}
        if column in _NUMERIC_COLUMNS and kinds == {True, False}:
            text = appended[column].astype(object)
            try:
                appended[column] = pd.to_numeric(text.where(text != "", np.nan))
            except (TypeError, ValueError) as error:
                raise ValueError(f"column {column!r} holds numbers in one table and text in another that does not "
                                 f"convert ({error}); write the tables in one format first") from None
    return appended


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.data append A B ... --out C``: append long-format tables safely.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 2 on bad input (one ``error:`` line), 1 if ``--out`` cannot be written.
    """
    from .cli import data_parser, refuse_inputs_as_outputs, run_command, writing

    def job(args: argparse.Namespace) -> tuple[int, Path]:
        refuse_inputs_as_outputs([("--out", args.out)], [("PATH", path) for path in args.tables])
        appended = append_tables(args.tables, quality_range=args.quality_range, allow_pickle=args.allow_pickle)
        with writing("--out", args.out):
            write_table(appended, args.out, overwrite=args.overwrite)
        return len(appended), args.out

    def finish(result: tuple[int, Path]) -> int:
        print(f"wrote {result[0]:,} rows to {result[1]}")
        return 0

    return run_command(argv, data_parser().parse_args, job, finish)
