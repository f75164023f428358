"""The kernel's numba cache is dropped when any kernel source changes."""

from __future__ import annotations

from kernel import _cache


def test_stale_cache_is_deleted_and_fresh_cache_kept(tmp_path, monkeypatch):
    package = tmp_path / "kernel"
    (package / "__pycache__").mkdir(parents=True)
    (package / "_search.py").write_text("x = 1\n")
    cached = package / "__pycache__" / "_drivers.plan-1.py311.nbi"
    cached.write_text("compiled")
    monkeypatch.setattr(_cache, "_HERE", package)
    assert _cache.invalidate_stale_cache() is True  # no stamp yet: unknown provenance
    assert not cached.exists()
    cached.write_text("compiled")
    assert _cache.invalidate_stale_cache() is False  # same sources: cache kept
    assert cached.exists()
    (package / "_search.py").write_text("x = 2\n")  # a dependency changed
    assert _cache.invalidate_stale_cache() is True
    assert not cached.exists()
