"""``training.fit`` stops with advice when the data would not fit in memory, and reports its peak memory."""

from __future__ import annotations

import pytest

from training import fit


def test_check_fit_memory_refuses_with_the_rows_that_would_fit():
    per_row = fit.FIT_BYTES_PER_ROW["full"]
    fit.check_fit_memory(1000, pooled=False, available=int(1000 * per_row) + 1)
    with pytest.raises(ValueError,
                       match=r"fitting 1,000 logged rows needs .* sample the queries down to about 500 rows"):
        fit.check_fit_memory(1000, pooled=False, available=int(500 * per_row) + 1)
    with pytest.raises(ValueError, match="--skip-memory-check"):  # partial logs need more per row
        fit.check_fit_memory(1000, pooled=True, available=int(1000 * per_row) + 1)


@pytest.mark.slow
def test_fit_stops_before_work_and_the_flag_overrides(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fit, "available_memory_bytes", lambda: 1024)
    args = ["--n-queries", "300", "--estimator", "linear", "--budget", "0.001", "--curve-points", "2", "--quiet",
            "--out", str(tmp_path / "router.joblib"), "--report", str(tmp_path / "report")]
    assert fit.main(args) == 2
    assert "sample the queries" in capsys.readouterr().err
    assert not (tmp_path / "router.joblib").exists()
    assert fit.main([*args, "--skip-memory-check"]) == 0
    assert "peak memory" in capsys.readouterr().out
