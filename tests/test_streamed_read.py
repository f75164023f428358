"""``read_table`` streams a long Parquet table (issue 33): the same table as the whole file read by pandas.

The streamed reader reads only the columns a routing table uses, a few
megabytes at a time, and holds one Python string per distinct text of a
read; everything it builds must equal what :func:`read_table` builds from
the file read whole into pandas (the in-memory path), errors included.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_data import assert_same

from training import data
from training.data import read_table


def _random_log(seed: int, n_queries: int = 60, k: int = 4) -> pd.DataFrame:
    """A long log with partial rows, missing texts and tokens, a signal, an unused column, rows in random order."""
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(n_queries):
        prompt = "" if rng.random() < 0.05 else "x" * int(rng.integers(0, 300)) + f" question {q % 17}"
        task = ["math", "qa", None][int(rng.integers(3))]
        for m in range(k):
            if q % 5 == 0 and m == k - 1 and rng.random() < 0.7:
                continue  # partial logs: the dear model is missing on some queries
            rows.append({"query_id": f"q{q:04d}", "model": f"m{m}", "quality": float(rng.integers(2)),
                         "cost_usd": 0.001 * (m + 1) * (1 + rng.random()), "prompt": prompt, "task": task,
                         "response": None if rng.random() < 0.1 else f"answer {int(rng.integers(4))}",
                         "output_tokens": np.nan if rng.random() < 0.2 else float(rng.integers(1, 50)),
                         "logprob": np.nan if rng.random() < 0.3 else -rng.random(),
                         "extra": f"{{\"row\": {len(rows)}}}"})
    frame = pd.DataFrame(rows)
    return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("row_group_size", [None, 37])
@pytest.mark.parametrize("index", ["range", "offset range", "labels"])
def test_streamed_table_equals_the_in_memory_one(tmp_path, monkeypatch, seed, row_group_size, index):
    monkeypatch.setattr(data, "READ_BYTES", 1)  # the fewest rows per read (64): many reads, split queries
    path = tmp_path / "log.parquet"
    frame = _random_log(seed)
    if index == "offset range":  # a slice or contiguous filter of a frame: pandas stores its range in the metadata
        frame = frame.set_axis(pd.RangeIndex(600, 600 + len(frame)))
    elif index == "labels":  # any other filter: pandas stores the labels as a column
        frame = frame.set_axis(600 + 3 * np.arange(len(frame)))
    frame.to_parquet(path, row_group_size=row_group_size)
    streamed = read_table(path, signal_columns=["logprob"])
    assert_same(streamed, read_table(pq.read_table(path).to_pandas(), signal_columns=["logprob"]))
    assert_same(streamed, read_table(frame, signal_columns=["logprob"]))
    np.testing.assert_array_equal(streamed.logged, read_table(frame, signal_columns=["logprob"]).logged)


def test_streamed_errors_are_the_in_memory_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "READ_BYTES", 1)
    frame = _random_log(0)
    frame.loc[frame.index[frame["query_id"] == "q0003"][-1], "prompt"] = "another prompt"
    duplicated = pd.concat([_random_log(1), _random_log(1).iloc[[100]]], ignore_index=True)
    no_prompt = _random_log(2).assign(prompt=lambda f: f["prompt"].where(f["query_id"] != "q0009", None))
    for name, bad, error in (("differs", frame, ValueError), ("duplicate", duplicated, ValueError),
                             ("no_prompt", no_prompt, TypeError)):
        path = tmp_path / f"{name}.parquet"
        bad.to_parquet(path)
        with pytest.raises(error) as in_memory:
            read_table(pq.read_table(path).to_pandas())
        with pytest.raises(error) as streamed:
            read_table(path)
        assert str(streamed.value) == str(in_memory.value)


def test_each_text_is_held_once_per_read(tmp_path, monkeypatch):
    """Every model's row of a query shares one prompt object: memory per query, not per row (rows of a query
    together, as logs hold them; a query split by a read's end holds two)."""
    monkeypatch.setattr(data, "READ_BYTES", 1)
    frame = _random_log(2, n_queries=200, k=6).sort_values("query_id", kind="stable")
    path = tmp_path / "log.parquet"
    frame.to_parquet(path)
    parquet = pq.ParquetFile(path)
    reads = -(-parquet.metadata.num_rows // data.parquet_rows_per_read(parquet, ["prompt"], 1 << 20, 1))
    prompts = data._read_parquet(path, used=("query_id", "model", "quality", "cost_usd", "prompt"))["prompt"]
    assert prompts.dtype == object
    distinct = {id(value) for value in prompts if isinstance(value, str)}
    assert len(distinct) <= frame["query_id"].nunique() + reads
    assert len(distinct) < len(prompts) / 3


def test_unused_columns_are_not_read(tmp_path):
    path = tmp_path / "log.parquet"
    _random_log(3).to_parquet(path)
    read = data._read_parquet(path, used=(*data.REQUIRED_COLUMNS, *data.OPTIONAL_COLUMNS))
    assert "extra" not in read.columns and "logprob" not in read.columns
    assert list(read.columns) == [c for c in pq.read_schema(path).names if c not in ("extra", "logprob")]


def test_a_partitioned_folder_reads_as_its_file(tmp_path):
    frame = _random_log(4)
    frame.to_parquet(tmp_path / "log.parquet")
    pq.write_to_dataset(pa.Table.from_pandas(frame), tmp_path / "folder", partition_cols=["model"])
    assert_same(read_table(tmp_path / "folder"), read_table(tmp_path / "log.parquet"))


def test_routerbench_subset_streamed_equals_in_memory(routerbench_subset, monkeypatch):
    monkeypatch.setattr(data, "READ_BYTES", 2**20)
    path = routerbench_subset / "routerbench_subset.parquet"
    assert_same(read_table(path), read_table(pd.read_parquet(path)))


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_streamed_features_equal_in_memory_features(routerbench_subset, monkeypatch, chunk):
    """Prompt features computed a slice of queries at a time are the whole table's transform, bit for bit."""
    from estimators import estimator
    from estimators.featurize import make_prompt_featurizer, prompt_frame
    from estimators.prompts import read_prompts

    table = read_table(routerbench_subset / "routerbench_subset.parquet")
    rows = np.random.default_rng(chunk).choice(table.n_queries, 1500, replace=False)
    def part(values):
        return None if values is None else values[rows]

    frame = prompt_frame(read_prompts(table.prompts[rows])[0], part(table.tasks), part(table.subtasks), n=rows.size)
    featurizer = make_prompt_featurizer(list(frame.columns)).fit(frame)
    monkeypatch.setattr(estimator, "FEATURE_CHUNK_ROWS", chunk)
    streamed = estimator.featurize_in_chunks(featurizer, frame)
    assert streamed.dtype == np.float64
    np.testing.assert_array_equal(streamed, featurizer.transform(frame))
