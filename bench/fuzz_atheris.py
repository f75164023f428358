"""Coverage-guided fuzzing of the manifest and artifact loader with atheris (libFuzzer), where it installs.

``pip install atheris`` (a manylinux wheel for CPython 3.11; not a
dependency of the package or its tests). Then, from the repository root::

    python bench/fuzz_atheris.py -runs=50000 -print_final_stats=1 /tmp/artifact_corpus

The input's first byte picks what is fuzzed (the manifest, the payload, or
both) and whether the signing key is given; the rest are the fuzzed file's
bytes, starting from the seeds of ``tests/fuzz.py`` (a signed artifact whose
payload creates a file when unpickled, and an unsigned one). The property is
``tests/fuzz.py``'s ``artifact_target``: only documented errors, and the
signed payload never runs unless both files are the signed originals. A
violation raises, and libFuzzer saves the input as ``crash-*``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

with atheris.instrument_imports(include=["training.artifact", "json"]):
    import fuzz

    import training.artifact  # noqa: F401  (instrumented for coverage feedback)

SEED = fuzz.ArtifactSeed()


def one_input(data: bytes) -> None:
    """Build the two files from ``data`` and check the loader's property on them."""
    if not data:
        return
    choice, body = data[0], data[1:]
    which = "signed" if choice & 1 else "plain"
    payload, manifest = getattr(SEED, which)
    part = (choice >> 1) % 3
    if part == 0:
        manifest = body
    elif part == 1:
        payload = body
    else:
        middle = len(body) // 2
        payload, manifest = body[:middle], body[middle:]
    key = fuzz.KEY if choice & 0x10 else None
    fuzz.artifact_target(SEED, which, payload, manifest, key)


def seed_corpus(folder: Path) -> None:
    """Write the valid files as starting inputs (one per choice byte that fuzzes the manifest or the payload)."""
    folder.mkdir(parents=True, exist_ok=True)
    for which, bit in (("plain", 0), ("signed", 1)):
        payload, manifest = getattr(SEED, which)
        for key_bit in (0, 0x10):
            (folder / f"{which}-manifest-{key_bit}").write_bytes(bytes([bit | key_bit]) + manifest)
            (folder / f"{which}-payload-{key_bit}").write_bytes(bytes([bit | 2 | key_bit]) + payload)


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        if not argument.startswith("-"):
            seed_corpus(Path(argument))
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
