"""Drop numba's on-disk cache when any kernel source changed.

numba keys a cached function by its own source file only: when
``_search.py`` changes but ``_drivers.py`` does not, the drivers' cached
machine code still embeds the old search. After an upgrade (or an edit) that
would silently run stale decision code. Before the kernels are imported, a
digest of every kernel source is compared with the one stored beside the
cache; on a mismatch the cached kernels are deleted and recompiled.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_STAMP = "kernel-sources.sha256"


def sources_digest() -> str:
    """sha256 over the kernel package's Python sources, in name order."""
    digest = hashlib.sha256()
    for path in sorted(_HERE.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def invalidate_stale_cache() -> bool:
    """Delete cached kernels compiled from other sources; return whether it did.

    A read-only install (where numba caches elsewhere or not at all) is left
    alone.
    """
    cache = _HERE / "__pycache__"
    stamp = cache / _STAMP
    digest = sources_digest()
    try:
        if stamp.exists() and stamp.read_text().strip() == digest:
            return False
        cache.mkdir(exist_ok=True)
        for path in list(cache.glob("*.nbi")) + list(cache.glob("*.nbc")):
            path.unlink(missing_ok=True)
        stamp.write_text(digest)
    except OSError:
        return False
    return True
