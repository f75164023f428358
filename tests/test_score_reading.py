"""Reading logs the way users write them: pandas defaults (``large_string``, one big row group), long prompts.

Issue 11 point 5: memory must not grow with a row group, and each prompt is
held and shipped once per query, not once per logged model row; the
scoring must not depend on how the file was written.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.serving import batch as score
from training.serving.batch import iter_tables, main
from training.synthetic import make_benchmark


def _long_prompt_log(n_queries: int, k: int, length: int, seed: int = 0) -> pd.DataFrame:
    """``k`` logged rows per query, each repeating its query's incompressible prompt of ``length`` characters."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", np.uint8)
    prompts = [letters[rng.integers(0, letters.size, length)].tobytes().decode() for _ in range(n_queries)]
    return pd.DataFrame({"query_id": np.repeat([f"q{i:05d}" for i in range(n_queries)], k),
                         "prompt": np.repeat(prompts, k), "model": np.tile([f"m{j}" for j in range(k)], n_queries)})


def _peak_while_reading(path) -> int:
    before, peak, rows = pa.total_allocated_bytes(), 0, 0
    for table in iter_tables(path, ["query_id", "prompt", "model"], 4000, logged=True):
        rows += table.num_rows
        peak = max(peak, pa.total_allocated_bytes() - before)
        del table
    assert rows == pq.ParquetFile(path).metadata.num_rows
    return peak


@pytest.mark.slow
def test_one_big_row_group_is_read_in_memory_bounded_by_the_read_size(tmp_path, monkeypatch):
    """pandas writes a million rows per row group; reading holds a few reads, not the row group's column chunk."""
    monkeypatch.setattr(score, "READ_BYTES", 2**20)
    peaks, chunks = [], []
    for n_queries in (6000, 18000):  # 24 and 72 MB of prompts, each file one row group
        path = tmp_path / f"pandas{n_queries}.parquet"
        _long_prompt_log(n_queries, 4, 1000).to_parquet(path)  # pandas' defaults
        metadata = pq.ParquetFile(path).metadata
        assert metadata.num_row_groups == 1
        chunks.append(metadata.row_group(0).column(1).total_compressed_size)
        peaks.append(_peak_while_reading(path))
    assert peaks[1] < 1.25 * peaks[0], f"Arrow memory grew with the row group: {peaks}"
    assert peaks[1] < chunks[1] / 2, \
        f"{peaks[1] / 1e6:.1f} MB held; the prompt column chunk is {chunks[1] / 1e6:.1f} MB"


def test_each_prompt_is_held_once_per_query(tmp_path):
    frame = _long_prompt_log(300, 5, 200, seed=1)
    frame.loc[frame["query_id"] == "q00007", "prompt"] = frame.loc[0, "prompt"]  # two queries, one prompt
    path = tmp_path / "pandas.parquet"
    frame.to_parquet(path)
    assert pa.types.is_large_string(pq.ParquetFile(path).schema_arrow.field("prompt").type)
    seen = 0
    for table in iter_tables(path, ["query_id", "prompt", "model"], 230, logged=True):
        prompt = table.column("prompt")
        assert prompt.num_chunks == 1 and pa.types.is_dictionary(prompt.type)
        queries = pd.unique(table.column("query_id").to_pandas())
        assert len(prompt.chunk(0).dictionary) <= len(queries)
        got = table.to_pandas()
        expected = frame.iloc[seen:seen + table.num_rows].reset_index(drop=True)
        assert got["prompt"].astype(object).tolist() == expected["prompt"].tolist()
        assert got["query_id"].astype(object).tolist() == expected["query_id"].tolist()
        seen += table.num_rows
    assert seen == len(frame)


@pytest.mark.parametrize("batch_size", [7, 65536])
def test_a_pandas_written_file_scores_like_plain_strings_in_small_row_groups(artifact, tmp_path, batch_size):
    logged = make_benchmark(150, seed=9)
    logged.loc[13, "prompt"] = None  # a rejected query too
    written_by_pandas = tmp_path / "pandas.parquet"
    logged.to_parquet(written_by_pandas)
    plain = tmp_path / "plain.parquet"
    table = pa.Table.from_pandas(logged, preserve_index=False)
    table = table.cast(pa.schema([pa.field(f.name, pa.string()) if pa.types.is_large_string(f.type) else f
                                  for f in table.schema]))
    pq.write_table(table, plain, row_group_size=50)
    results = []
    for source in (written_by_pandas, plain):
        output = tmp_path / f"{source.stem}.decisions.parquet"
        rejects = tmp_path / f"{source.stem}.rejects.parquet"
        assert main(["--artifact", str(artifact), "--input", str(source), "--output", str(output), "--rejects",
                     str(rejects), "--batch-size", str(batch_size), "--quiet"]) == 0
        results.append((pq.read_table(output), pq.read_table(rejects)))
    assert results[0][0].num_rows == 149 and results[0][1].num_rows == logged["model"].nunique()
    assert results[0][0].equals(results[1][0]) and results[0][1].equals(results[1][1])


@pytest.mark.parametrize("logged", [False, True])
def test_scored_tables_are_bounded_in_bytes_whatever_the_prompt_length(tmp_path, monkeypatch, logged):
    """Issue 30: batches were counted in rows only, so memory grew with prompt length (8,000 rows of
    100,000-character prompts: 3.1 GiB). Each table now stops at BATCH_BYTES (plus the read that crossed it),
    however many rows --batch-size allows, and the rows still come out whole and in order."""
    monkeypatch.setattr(score, "READ_BYTES", 2**18)
    monkeypatch.setattr(score, "BATCH_BYTES", 2**20)
    frame = _long_prompt_log(400, 2 if logged else 1, 20_000, seed=2)  # 8 (or 16) MB of prompts
    path = tmp_path / "long.parquet"
    frame.to_parquet(path)
    seen, sizes = 0, []
    for table in iter_tables(path, ["query_id", "prompt", "model"], 65536, logged=logged):
        sizes.append(table.nbytes)
        assert table.column("row").to_pylist() == list(range(seen, seen + table.num_rows))
        seen += table.num_rows
    assert seen == len(frame) and len(sizes) > 4
    assert max(sizes) <= 2**20 + 2 * 2**18, f"a table held {max(sizes):,} bytes"
