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

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz

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
    return fuzz.ArtifactSeed()


@_examples(300)
@given(data=st.data())
def test_load_artifact_on_mutated_files(seed, data):
    fuzz.artifact_target(seed, *data.draw(fuzz.artifact_files(seed)))
