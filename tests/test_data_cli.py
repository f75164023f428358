"""``python -m training.synthetic`` and ``python -m training.data append``: the tables the README's examples use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training import data, synthetic
from training.data import append_tables, read_table, write_table


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    path = tmp_path / "logs.parquet"
    assert synthetic.main(["--out", str(path), "--n-queries", "60", "--models",
                           "synthetic-tiny-7b,synthetic-turbo"]) == 0
    return path


def test_synthetic_writes_every_column_the_tools_read(tmp_path: Path) -> None:
    path = tmp_path / "logs.csv.gz"
    assert synthetic.main(["--out", str(path), "--n-queries", "40", "--seed", "3"]) == 0
    table = read_table(path)
    expected = synthetic.make_benchmark(40, seed=3)
    assert table.n_queries == 40 and list(table.models) == sorted(table.models, key=list(table.models).index)
    assert set(table.models) == {m.name for m in synthetic.SYNTHETIC_MODELS}
    assert table.latency is not None and np.isfinite(table.latency).all()
    assert table.prompts is not None and table.output_tokens is not None
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(frame.columns) == list(expected.columns) and len(frame) == len(expected)
    assert frame["prompt"].tolist() == expected["prompt"].tolist()


def test_synthetic_refuses_an_existing_file_and_unknown_models(tmp_path: Path, logs: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    before = logs.read_bytes()
    assert synthetic.main(["--out", str(logs), "--n-queries", "10"]) == 2
    assert "exists" in capsys.readouterr().err and logs.read_bytes() == before
    assert synthetic.main(["--out", str(logs), "--n-queries", "10", "--overwrite"]) == 0
    assert len(pd.read_parquet(logs)) == 10 * len(synthetic.SYNTHETIC_MODELS)
    assert synthetic.main(["--out", str(tmp_path / "x.parquet"), "--models", "gpt-4"]) == 2
    assert "not synthetic models" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_append_a_new_models_csv_rows_keeps_one_header_and_every_row(tmp_path: Path, logs: Path) -> None:
    new = tmp_path / "new_model_rows.csv"
    assert synthetic.main(["--out", str(new), "--n-queries", "60", "--models", "synthetic-frontier"]) == 0
    out = tmp_path / "with_new.parquet"
    assert data.main(["append", str(logs), str(new), "--out", str(out)]) == 0
    appended = pd.read_parquet(out)
    assert len(appended) == len(pd.read_parquet(logs)) + len(pd.read_csv(new))
    assert "quality" not in set(appended["quality"].astype(str))  # no header row among the data
    assert appended["cost_usd"].dtype == np.float64  # CSV text parsed next to Parquet numbers
    table = read_table(out)
    assert set(table.models) == {"synthetic-tiny-7b", "synthetic-turbo", "synthetic-frontier"}
    assert table.logged.all()
    expected = synthetic.make_benchmark(60)
    frontier = expected[expected["model"] == "synthetic-frontier"].reset_index(drop=True)
    got = appended[appended["model"] == "synthetic-frontier"].reset_index(drop=True)
    np.testing.assert_allclose(got["cost_usd"], frontier["cost_usd"], rtol=1e-12)


def test_append_refuses_pairs_twice_other_columns_and_its_inputs_as_output(tmp_path: Path, logs: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.csv"
    assert data.main(["append", str(logs), str(logs), "--out", str(out)]) == 2
    assert "more than once" in capsys.readouterr().err and not out.exists()
    fewer = tmp_path / "fewer.parquet"
    pd.read_parquet(logs).drop(columns="latency_s").to_parquet(fewer)
    with pytest.raises(ValueError, match=r"missing \['latency_s'\]"):
        append_tables([logs, fewer])
    before = logs.read_bytes()
    assert data.main(["append", str(logs), str(fewer), "--out", str(logs)]) == 2
    assert "overwrite its own input" in capsys.readouterr().err and logs.read_bytes() == before
    with pytest.raises(ValueError, match="at least two"):
        append_tables([logs])


def test_write_table_is_atomic_and_never_replaces_a_file_unasked(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    frame = synthetic.make_benchmark(5)
    path = tmp_path / "t.parquet"
    write_table(frame, path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="exists"):
        write_table(frame.head(8), path)
    with pytest.raises(ValueError, match="name it .parquet"):
        write_table(frame, tmp_path / "t.json")

    def broken(self: pd.DataFrame, *args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError, match="disk full"):
        write_table(frame.head(8), path, overwrite=True)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]
