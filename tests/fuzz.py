"""Inputs for the fuzz tests (``test_fuzz.py``, ``bench/fuzz_atheris.py``): strategies and the properties they check.

Every target is a function that turns one input into a call of the product
code and checks the one property they share: it returns, or raises one of
the error types it documents with a message. Anything else (another
exception type, a library's own exception leaking with its message, a hang,
an unbounded allocation) is a finding. Library exceptions that subclass a
documented type (pyarrow's ``ArrowInvalid`` is a ``ValueError``) count as
findings too: their messages name neither the file nor the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import strategies as st

#: Packages whose exception classes are ours: a subclass of a documented type from these is documented.
OUR_PACKAGES = ("training", "estimators", "kernel")


def check_documented(error: BaseException, documented: tuple[type[BaseException], ...]) -> None:
    """Fail unless ``error`` is exactly a documented type (or our own subclass of one) with a message."""
    ours = type(error).__module__.split(".")[0] in OUR_PACKAGES
    if not (type(error) in documented or (ours and isinstance(error, documented))):
        raise AssertionError(f"undocumented {type(error).__module__}.{type(error).__qualname__}: {error}") from error
    if not str(error).strip():
        raise AssertionError(f"{type(error).__name__} without a message") from error


# --------------------------------------------------------------------------- #
# byte mutations (what a fuzzer does to a file)
# --------------------------------------------------------------------------- #


@st.composite
def mutated(draw, original: bytes, max_size: int = 1 << 20) -> bytes:
    """``original`` after a few byte-level edits: flips, deletions, insertions, truncation, a repeated block."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "repeat", "replace"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete" and data:
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "truncate":
            del data[at:]
        elif op == "repeat" and data:  # a block cloned many times: deep nesting, long runs
            block = bytes(data[at:at + draw(st.integers(1, 4))])
            times = draw(st.sampled_from([2, 10, 1000, 100_000]))
            data[at:at] = block * min(times, max_size // max(len(block), 1))
        elif op == "replace" and data:
            data[at] = draw(st.sampled_from(b'{}[]",:0-eE.\\ \x00\xff'))
    return bytes(data[:max_size])


# --------------------------------------------------------------------------- #
# target 1: the table readers (training.data)
# --------------------------------------------------------------------------- #

#: Values that break naive readers: missing spellings, signs, non-finite numbers, wrong types.
NASTY = st.one_of(
    st.none(),
    st.sampled_from(["", " ", "nan", "NaN", "NA", "None", "null", "inf", "-inf", "-1", "1e309", "0x10", "[]",
                     "['a', 'b']", "[1, 2]", "\ud800", "q0", "a", "b", "True", "1,5", '"', "\n"]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.text(max_size=6),
    st.binary(max_size=4),
)
#: Column names: every name the readers treat specially, and others.
COLUMN_NAMES = ("query_id", "model", "quality", "cost_usd", "prompt", "task", "subtask", "split", "response",
                "input_tokens", "output_tokens", "propensity", "extra", "sample_id", "eval_name", "a", "a|total_cost",
                "a|model_response", "b", "b|total_cost", "a|extra", "")
#: Plausible values per column, so that many tables get past the first check.
PLAUSIBLE = {
    "query_id": st.sampled_from(["q0", "q1", "q2", "q3"]),
    "sample_id": st.sampled_from(["q0", "q1", "q2"]),
    "model": st.sampled_from(["a", "b", "c"]),
    "quality": st.one_of(st.floats(0, 1), st.sampled_from([0, 1, True, False])),
    "cost_usd": st.floats(0, 0.01),
    "a|total_cost": st.floats(0, 0.01),
    "b|total_cost": st.floats(0, 0.01),
    "a": st.floats(0, 1),
    "b": st.floats(0, 1),
    "propensity": st.floats(0.01, 1),
    "input_tokens": st.integers(0, 1000),
    "output_tokens": st.integers(0, 1000),
}


@st.composite
def column_values(draw, name: str, n: int) -> list:
    """One column: plausible values, nasty ones, or a mix; sometimes all of one nasty type."""
    plausible = PLAUSIBLE.get(name, st.text(max_size=8))
    kind = draw(st.sampled_from(["plausible", "mixed", "nasty"]))
    element = {"plausible": plausible, "mixed": st.one_of(plausible, plausible, NASTY), "nasty": NASTY}[kind]
    return draw(st.lists(element, min_size=n, max_size=n))


@st.composite
def random_tables(draw) -> pd.DataFrame:
    """A table with a random schema: columns drawn from the known names (duplicates possible), random rows."""
    n = draw(st.integers(0, 10))
    names = draw(st.lists(st.sampled_from(COLUMN_NAMES), min_size=0, max_size=10))
    # object columns: pandas 3 would infer its string dtype, which cannot hold lone surrogates
    frame = pd.DataFrame({i: pd.Series(draw(column_values(name, n)), index=range(n), dtype=object)
                          for i, name in enumerate(names)}, index=range(n))
    frame.columns = names
    return frame


@st.composite
def mutated_tables(draw) -> pd.DataFrame:
    """A valid long table, then rows duplicated or dropped, cells overwritten, columns dropped or retyped."""
    from training.synthetic import make_benchmark

    frame = make_benchmark(draw(st.integers(2, 4)), seed=draw(st.integers(0, 3)))
    rows = draw(st.lists(st.integers(0, len(frame) - 1), min_size=0, max_size=len(frame) + 3))
    if draw(st.booleans()):
        frame = frame.iloc[rows].reset_index(drop=True)
    frame = frame.astype(object)
    for _ in range(draw(st.integers(0, 4))):
        if not len(frame):
            break
        column = draw(st.sampled_from(list(frame.columns)))
        frame.iat[draw(st.integers(0, len(frame) - 1)), frame.columns.get_loc(column)] = draw(NASTY)
    for column in draw(st.lists(st.sampled_from(list(frame.columns)), max_size=2)):
        if column in frame.columns:
            frame = frame.drop(columns=column)
    return frame


def write_table(frame: pd.DataFrame, folder: Path, how: str) -> Path | pd.DataFrame | None:
    """``frame`` as the reader gets it: itself, or a Parquet, CSV or CSV.gz file; None if pandas cannot write it."""
    if how == "frame":
        return frame
    path = folder / {"parquet": "t.parquet", "csv": "t.csv", "csv.gz": "t.csv.gz"}[how]
    try:
        if how == "parquet":
            frame.infer_objects().to_parquet(path)  # object columns typed as a writer would
        else:
            frame.to_csv(path, index=False, compression="gzip" if how == "csv.gz" else None)
    except Exception:  # a frame the writer refuses (mixed types, duplicate names, surrogates) is not an input
        return None
    return path


def read_table_target(source, **options) -> None:
    """Target 1: :func:`training.data.read_table` returns a table or raises a documented error."""
    import warnings

    from training.data import read_table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lone surrogates are replaced with a warning: not a failure
        try:
            table = read_table(source, **options)
        except (ValueError, TypeError, FileNotFoundError) as error:
            check_documented(error, (ValueError, TypeError, FileNotFoundError))
            return
    # what it returns is a valid table: every logged cell has a finite quality and cost >= 0
    assert table.quality.shape == table.cost.shape == table.logged.shape == (len(table.query_ids), len(table.models))
    logged = table.logged
    assert np.isfinite(table.quality[logged]).all() and (table.cost[logged] >= 0).all()
    assert len(set(table.models)) == len(table.models)


def read_prices_target(source) -> None:
    """Target 1 too: :func:`training.data.read_prices`."""
    import warnings

    from training.data import read_prices

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prices = read_prices(source)
        except (ValueError, FileNotFoundError) as error:
            check_documented(error, (ValueError, FileNotFoundError))
            return
    assert all(math.isfinite(p) and p >= 0 for pair in prices.values() for p in pair)


# --------------------------------------------------------------------------- #
# target 2: logged input of batch scoring (training.serving.logged / replay)
# --------------------------------------------------------------------------- #


@st.composite
def logged_batches(draw, router) -> pd.DataFrame:
    """Logged rows for ``router``: a valid synthetic batch, then rows reordered, cells spoiled, dtypes changed."""
    from training.serving.logged import required_columns
    from training.synthetic import make_benchmark

    base = make_benchmark(draw(st.integers(1, 3)), seed=draw(st.integers(0, 5)))
    rows = draw(st.one_of(st.just(list(range(len(base)))),
                          st.lists(st.integers(0, len(base) - 1), max_size=len(base) + 3)))
    frame = base.iloc[rows].reset_index(drop=True).astype(object)
    models = list(router.models_) + ["unknown-model", None]
    spoil = {"model": st.one_of(st.sampled_from(models), NASTY), "query_id": st.one_of(
        st.sampled_from(list(base["query_id"].unique()) + [None]), NASTY)}
    for _ in range(draw(st.integers(0, 4))):
        if not len(frame):
            break
        column = draw(st.sampled_from(list(frame.columns)))
        frame.iat[draw(st.integers(0, len(frame) - 1)), frame.columns.get_loc(column)] = draw(spoil.get(column, NASTY))
    if draw(st.booleans()):
        frame["row"] = draw(st.lists(st.integers(-5, 10**6), min_size=len(frame), max_size=len(frame)))
    if draw(st.booleans()):
        frame["scattered"] = draw(st.lists(st.booleans(), min_size=len(frame), max_size=len(frame)))
    for column in draw(st.lists(st.sampled_from(required_columns(router, True)), max_size=1)):
        frame = frame.drop(columns=column)  # only score_batch may see this: validate_logged's caller checks columns
    retype = draw(st.sampled_from(["object", "inferred", "category", "string"]))
    if retype == "inferred":
        try:
            frame = frame.infer_objects()
        except ValueError:  # pandas 3 cannot infer str for text with lone surrogates: keep object columns
            pass
    elif retype in ("category", "string"):
        for column in ("query_id", "model", "prompt", "task", "subtask", "response"):
            if column in frame.columns and draw(st.booleans()):
                try:
                    frame[column] = frame[column].astype(retype)
                except (TypeError, ValueError):
                    pass  # values pandas cannot hold in that dtype: keep the column as it is
    return frame


def logged_target(router, frame: pd.DataFrame, *, replay: bool) -> None:
    """Target 2: :func:`validate_logged` (and :func:`score_batch`) account for every row or raise a documented error.

    ``validate_logged`` gets only frames with the required columns (its
    caller checks them); ``score_batch`` gets any frame.
    """
    from training.serving.logged import ScoreError, required_columns, validate_logged
    from training.serving.replay import STATUS_REJECTED, score_batch

    complete = all(c in frame.columns for c in required_columns(router, True))
    if not complete and not replay:
        return
    if complete:
        try:
            batch = validate_logged(router, frame)
        except TypeError as error:  # a prompt that is neither text nor missing
            check_documented(error, (TypeError,))
            batch = None
        if batch is not None:
            # every input row is either one of an accepted query's available cells or a rejected row
            assert int(batch.available.sum()) + len(batch.rejected) == len(frame)
            assert np.isfinite(batch.cost[batch.available]).all() and (batch.cost[batch.available] >= 0).all()
            assert not np.isnan(batch.quality[batch.available]).any()
            assert all(isinstance(reason, str) and reason for reason in batch.rejected.get("reason", []))
    if not replay:
        return
    try:
        result = score_batch(router, frame, parallel=False)
    except (ScoreError, TypeError) as error:
        check_documented(error, (ScoreError, TypeError))
        return
    if "model" not in frame.columns:  # no model column: query input, one row per query, nothing replayed
        assert len(result) == len(frame)
        return
    assert complete and batch is not None, "score_batch accepted what validate_logged refused"
    rejected = result["status"].to_numpy() == STATUS_REJECTED
    assert int(rejected.sum()) == len(batch.rejected)
    assert int((~rejected).sum()) == len(batch.query_ids)


# --------------------------------------------------------------------------- #
# target 3: the manifest and artifact loader (training.artifact)
# --------------------------------------------------------------------------- #

KEY = "fuzz-key-" + "0123456789abcdef" * 2
OTHER_KEY = "other-key-" + "fedcba9876543210" * 2


class Witness:
    """Unpickles to a call that creates ``marker``: proof that the payload's code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


class Modelled:
    """A payload with ``models_``, as routers have, so the loader's last check runs too."""

    models_ = ("small", "large")


class ArtifactSeed:
    """A signed artifact with a witness payload and an unsigned one with a benign payload, as bytes."""

    def __init__(self) -> None:
        from training.artifact import manifest_path, save_artifact

        self.folder = Path(tempfile.mkdtemp(prefix="fuzz-seed-"))
        self.marker = self.folder / "witness-ran"
        signed = self.folder / "signed" / "router.joblib"
        plain = self.folder / "plain" / "router.joblib"
        for path in (signed, plain):
            path.parent.mkdir()
        save_artifact(Witness(str(self.marker)), signed, models=["small", "large"], budgets=[0.001], key=KEY,
                      metrics={"auc": 0.5, "curve": [1, 2.5, None]}, extra={"note": "ünïcode"})
        save_artifact(Modelled(), plain, models=["small", "large"], budgets=[0.001, 0.01],
                      feature_schema={"per_query": ["prompt"]})
        self.signed = (signed.read_bytes(), manifest_path(signed).read_bytes())
        self.plain = (plain.read_bytes(), manifest_path(plain).read_bytes())


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
              st.text(max_size=8), st.sampled_from(["cascade-router-artifact", "router.joblib", "0" * 64])),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children,
                                                                               max_size=3)),
    max_leaves=8,
)


@st.composite
def manifest_edits(draw, original: bytes) -> bytes:
    """A manifest with fields replaced by random JSON values, deleted, added or nested deeply (NaN allowed, as
    Python writes it)."""
    manifest = json.loads(original)
    for _ in range(draw(st.sampled_from([1, 1, 2, 3]))):
        field = draw(st.sampled_from(sorted(manifest) + ["signature", "new"]))
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "nest"]))
        if action == "delete":
            manifest.pop(field, None)
        elif action == "replace":
            manifest[field] = draw(JSON_VALUES)
        else:  # written by hand below: json.dumps itself recurses
            manifest[field] = "@NESTED@"
    text = json.dumps(manifest, allow_nan=True)
    depth = draw(st.one_of(st.sampled_from([10, 100_000]), st.integers(60, 1000)))  # near the recursion limit too
    return text.replace('"@NESTED@"', "[" * depth + "]" * depth).encode()


@st.composite
def artifact_files(draw, seed: ArtifactSeed) -> tuple[str, bytes, bytes, str | None]:
    """(which seed, payload bytes, manifest bytes, key): one of the seeds with its files changed."""
    which = draw(st.sampled_from(["signed", "plain"]))
    payload, manifest = getattr(seed, which)
    payload_kind = draw(st.sampled_from(["same", "same", "same", "mutated", "random"]))
    if payload_kind == "mutated":
        payload = draw(mutated(payload))
    elif payload_kind == "random":
        payload = draw(st.binary(max_size=256))
    manifest_kind = draw(st.sampled_from(["same", "bytes", "fields", "fields", "fields", "random", "resha"]))
    if manifest_kind == "bytes":
        manifest = draw(mutated(manifest))
    elif manifest_kind == "fields":
        manifest = draw(manifest_edits(manifest))
    elif manifest_kind == "random":
        manifest = draw(st.binary(max_size=512))
    elif manifest_kind == "resha":  # a consistent writer without the key: the digest of the new payload
        edited = json.loads(manifest)
        edited["sha256"] = hashlib.sha256(payload).hexdigest()
        manifest = json.dumps(edited).encode()
    if payload_kind == "same" and manifest_kind == "same" and draw(st.booleans()):
        manifest = draw(mutated(manifest))  # keep most examples changed
    key = draw(st.sampled_from([None, KEY, OTHER_KEY])) if which == "signed" else draw(st.sampled_from([None, KEY]))
    return which, payload, manifest, key


def artifact_target(seed: ArtifactSeed, which: str, payload: bytes, manifest: bytes, key: str | None) -> None:
    """Target 3: :func:`read_manifest` and :func:`load_artifact` load or refuse with a documented error.

    For the signed seed loaded with its key, the witness payload runs only
    when neither file changed in substance: a refused load never ran it, and
    an accepted one had the original payload and the original manifest
    fields (only the formatting may differ).
    """
    import warnings

    from training.artifact import load_artifact, read_manifest

    folder = Path(tempfile.mkdtemp(prefix="fuzz-case-", dir=seed.folder))
    path = folder / "router.joblib"
    path.write_bytes(payload)
    (folder / "router.manifest.json").write_bytes(manifest)
    seed.marker.unlink(missing_ok=True)
    try:
        try:
            read_manifest(path)
        except (ValueError, FileNotFoundError) as error:
            check_documented(error, (ValueError, FileNotFoundError))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                load_artifact(path, key=key)
                loaded = True
            except (ValueError, FileNotFoundError) as error:
                check_documented(error, (ValueError, FileNotFoundError))
                loaded = False
        if which == "signed" and key is not None:
            original_payload, original_manifest = seed.signed
            same = payload == original_payload and _same_json(manifest, original_manifest)
            if key == KEY:
                assert loaded == same == seed.marker.exists(), (loaded, same, seed.marker.exists())
            else:
                assert not loaded and not seed.marker.exists(), "another key's load must refuse before unpickling"
    finally:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()
        seed.marker.unlink(missing_ok=True)


def _same_json(text: bytes, original: bytes) -> bool:
    try:
        return json.loads(text) == json.loads(original)
    except (ValueError, RecursionError):
        return False


# --------------------------------------------------------------------------- #
# the corpus of found cases
# --------------------------------------------------------------------------- #

CORPUS = Path(__file__).parent / "fuzz_corpus"


def corpus_files(target: str) -> list[Path]:
    """The saved inputs of one target (``tests/fuzz_corpus/<target>/``), sorted."""
    folder = CORPUS / target
    return sorted(folder.iterdir()) if folder.is_dir() else []


__all__ = ["ArtifactSeed", "CORPUS", "KEY", "OTHER_KEY", "artifact_files", "artifact_target", "check_documented",
           "corpus_files", "logged_batches", "logged_target", "mutated", "mutated_tables", "random_tables",
           "read_prices_target", "read_table_target", "write_table"]
