"""Fuzzing the input readers: tables (``training.data``), logged batches (``training.serving.logged``), artifacts.

Property for every target (``tests/fuzz.py``): no input makes it raise
anything but the error types it documents, with a message; what it
returns is valid. A few hundred inputs per target run here; a campaign of
``FUZZ_EXAMPLES`` per target (``python bench/fuzz.py``, 10,000 by default,
under a memory limit) runs the same tests. Inputs that once failed are kept
in ``tests/fuzz_corpus/`` and replayed first.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import fuzz
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

#: Inputs per target: a few hundred in the normal run; the campaign sets more.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck),
                max_examples=EXAMPLES or 200)


def _examples(ci: int) -> settings:
    return settings(FUZZ, max_examples=EXAMPLES or ci)


# --------------------------------------------------------------------------- #
# table readers
# --------------------------------------------------------------------------- #


@_examples(250)
@given(frame=st.one_of(fuzz.random_tables(), fuzz.mutated_tables()),
       how=st.sampled_from(["frame", "parquet", "csv", "csv.gz"]),
       options=st.fixed_dictionaries({}, optional={
           "models": st.lists(st.sampled_from(["a", "b", "c", "synthetic-tiny-7b"]), max_size=3),
           "quality_range": st.sampled_from([(0, 1), (0, 100), (1, 0), (0, float("nan"))]),
           "signal_columns": st.sampled_from([["extra"], ["input_tokens"], ["quality"], "extra"])}))
def test_read_table_on_random_and_mutated_tables(frame, how, options):
    with tempfile.TemporaryDirectory() as folder:
        source = fuzz.write_table(frame, Path(folder), how)
        if source is not None:
            fuzz.read_table_target(source, **options)


@_examples(150)
@given(data=st.data(), suffix=st.sampled_from([".parquet", ".csv", ".csv.gz"]), how=st.sampled_from(["parquet", "csv"]))
def test_read_table_on_random_and_mutated_bytes(data, suffix, how):
    """Files that are not what their name says: random bytes, or a valid file with bytes changed."""
    from training.synthetic import make_benchmark

    with tempfile.TemporaryDirectory() as folder:
        valid = fuzz.write_table(make_benchmark(3, seed=0), Path(folder), how)
        content = data.draw(st.one_of(st.binary(max_size=512), fuzz.mutated(valid.read_bytes())))
        path = Path(folder) / f"input{suffix}"
        path.write_bytes(content)
        fuzz.read_table_target(path)


@_examples(100)
@given(frame=fuzz.random_tables(), how=st.sampled_from(["frame", "csv"]))
def test_read_prices_on_random_tables(frame, how):
    frame = frame.rename(columns={"quality": "input_price_per_mtok_usd", "cost_usd": "output_price_per_mtok_usd"})
    with tempfile.TemporaryDirectory() as folder:
        source = fuzz.write_table(frame, Path(folder), how)
        if source is not None:
            fuzz.read_prices_target(source)


# --------------------------------------------------------------------------- #
# logged input of batch scoring
# --------------------------------------------------------------------------- #


@_examples(300)
@given(data=st.data())
def test_validate_logged_on_spoiled_batches(router, data):
    fuzz.logged_target(router, data.draw(fuzz.logged_batches(router)), replay=False)


@_examples(60)
@given(data=st.data())
def test_score_batch_on_spoiled_batches(router, data):
    fuzz.logged_target(router, data.draw(fuzz.logged_batches(router)), replay=True)


# --------------------------------------------------------------------------- #
# manifest and artifact loader
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def seed():
    import shutil

    made = fuzz.ArtifactSeed()
    yield made
    shutil.rmtree(made.folder)


@_examples(300)
@given(data=st.data())
def test_load_artifact_on_mutated_files(seed, data):
    fuzz.artifact_target(seed, *data.draw(fuzz.artifact_files(seed)))


# --------------------------------------------------------------------------- #
# found cases, kept
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("case", fuzz.corpus_files("tables"), ids=lambda path: path.name)
def test_found_unreadable_tables_are_one_clear_error(case, tmp_path, capsys):
    """Each of these once leaked pyarrow's or pandas' own error (an OSError: a traceback from the CLIs)."""
    from training.data import read_prices, read_table
    from training.fit import main

    with pytest.raises(ValueError, match=rf"cannot read '{case.name}' as .*re-export it"):
        read_table(case)
    if case.name.endswith((".csv", ".csv.gz")):
        with pytest.raises(ValueError, match=rf"cannot read '{case.name}' as UTF-8 CSV"):
            read_prices(case)
    assert main(["--data", str(case), "--out", str(tmp_path / "r.joblib"), "--report", str(tmp_path / "report"),
                 "--quiet"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: cannot read '{case.name}'")


def test_found_repeated_column_names_are_refused():
    """A DataFrame with two ``quality`` columns once failed with an AttributeError."""
    import pandas as pd

    from training.data import read_prices, read_table

    frame = pd.DataFrame([["q0", "a", 0.0, 0.0, 0.0]], columns=["query_id", "model", "quality", "quality", "cost_usd"])
    with pytest.raises(ValueError, match=r"has the column\(s\) \['quality'\] more than once"):
        read_table(frame)
    prices = pd.DataFrame([["a", 1.0, 1.0, 2.0]], columns=["model", "input_price_per_mtok_usd",
                                                           "output_price_per_mtok_usd", "output_price_per_mtok_usd"])
    with pytest.raises(ValueError, match="more than once"):
        read_prices(prices)


def test_found_lone_surrogates_in_logged_ids_reject_their_query(router):
    """Once a UnicodeEncodeError from pandas 3's string dtype: ids and values that are not valid Unicode."""
    import pandas as pd
    import pyarrow as pa

    from training.serving.logged import validate_logged
    from training.serving.replay import STATUS_REJECTED, rejects_schema, score_batch
    from training.synthetic import make_benchmark

    frame = make_benchmark(4, seed=1).astype(object)
    queries = list(frame["query_id"].unique())
    frame.loc[frame["query_id"] == queries[0], "query_id"] = "\ud800q"
    frame.loc[frame.index[frame["query_id"] == queries[1]][0], "model"] = "\udcff"
    frame.loc[frame.index[frame["query_id"] == queries[2]][0], "cost_usd"] = "\ud800"
    batch = validate_logged(router, frame)
    assert list(batch.query_ids) == [queries[3]]
    reasons = list(batch.rejected["reason"])
    assert reasons.count("query_id is not valid Unicode text (it holds a lone surrogate, half of a UTF-16 pair); "
                         "repair it where the logs are decoded") == len(router.models_)
    assert any(r.startswith("model is not valid Unicode text") for r in reasons)
    assert any(r == "cost_usd must be a finite number >= 0, got '\\ud800'" for r in reasons)
    assert set(batch.rejected["query_id"]) == {"\\ud800q", queries[1], queries[2]}  # escaped: writable
    result = score_batch(router, frame, parallel=False)
    rejected = result[result["status"] == STATUS_REJECTED]
    assert len(rejected) == 3 * len(router.models_)
    pa.Table.from_pandas(rejected.reindex(columns=rejects_schema().names), schema=rejects_schema(),
                         preserve_index=False)  # the rejects file can be written
    assert isinstance(result, pd.DataFrame)


@pytest.mark.parametrize("case", fuzz.corpus_files("manifests"), ids=lambda path: path.name)
@pytest.mark.parametrize("key", [None, fuzz.KEY], ids=["no-key", "key"])
def test_found_damaged_manifests_are_refused_before_unpickling(seed, case, key):
    """Once a RecursionError, an OSError (file name too long), a ValueError naming no file, or a TypeError after
    unpickling. ``@SHA256@`` stands for the payload's digest, so that the damaged field is what is checked."""
    import hashlib

    from training.artifact import load_artifact

    payload = seed.plain[0]
    manifest = case.read_bytes().replace(b"@SHA256@", hashlib.sha256(payload).hexdigest().encode())
    fuzz.artifact_target(seed, "plain", payload, manifest, key)
    folder = Path(tempfile.mkdtemp(dir=seed.folder))
    (folder / "router.joblib").write_bytes(payload)
    (folder / "router.manifest.json").write_bytes(manifest)
    with pytest.raises(ValueError, match=str(folder / "router.manifest.json")):
        load_artifact(folder / "router.joblib", key=key)


def test_oversized_manifest_is_refused_unread(tmp_path):
    """Found by review: a manifest is read whole, so its size is bounded before it is parsed."""
    from training.artifact import MAX_MANIFEST_BYTES, read_manifest

    target = tmp_path / "router.manifest.json"
    with open(target, "wb") as handle:
        handle.truncate(MAX_MANIFEST_BYTES + 1)  # sparse: no disk or memory spent
    with pytest.raises(ValueError, match="is larger than 16,777,216 bytes"):
        read_manifest(tmp_path / "router.joblib")


def test_found_nesting_just_below_the_recursion_limit_is_refused(seed):
    """Found by probing the depths the campaign's nesting edit skips: a manifest nested 990 deep parsed, and then
    the signature's canonical JSON raised RecursionError. Every depth near the limit is now a clear refusal."""
    import json
    import sys

    from training.artifact import read_manifest

    payload, manifest = seed.signed
    fields = json.loads(manifest)
    limit = sys.getrecursionlimit()
    for depth in range(limit - 60, limit + 2):
        text = json.dumps({**fields, "extra": "@NESTED@"}).replace('"@NESTED@"', "[" * depth + "]" * depth)
        fuzz.artifact_target(seed, "signed", payload, text.encode(), fuzz.KEY)
    path = seed.folder / "deep" / "router.joblib"
    path.parent.mkdir()
    path.with_suffix(".manifest.json").write_text(json.dumps({**fields, "extra": [[[[]]]] * 2}))
    assert read_manifest(path)["extra"] == [[[[]]]] * 2  # a few levels are fine
    deep = json.dumps({**fields, "extra": "@N@"}).replace('"@N@"', "[" * 65 + "]" * 65)
    path.with_suffix(".manifest.json").write_text(deep)
    with pytest.raises(ValueError, match="nests lists and objects more than 64 deep"):
        read_manifest(path)
