"""Atomic writes: a file appears whole under its final name, or not at all.

Every file the toolkit writes (artifacts and their manifests, reports and
figures, scoring outputs and their parts, ``progress.json``) goes through
:func:`write_atomically` (or, for an artifact's two files moved in a chosen
order, :func:`write_temporary` and :func:`os.replace`): the bytes go to a
hidden temporary file beside the final one (:func:`staging_name`; same
directory, because :func:`os.replace` is atomic only within one file
system, and hidden, so that globs for outputs never pick it up), which is
moved into place only once complete. A crash or kill leaves the old file or
the new one, never half of one; an exception deletes the temporary file.

``durable=True`` also flushes the file and its directory to disk (an
artifact, a joined output); parts of a resumable run skip it, since a
resumed run checks them anyway and a flush per batch is slow.

Spark writes datasets (directories) through Hadoop's file systems, which
:func:`os.replace` cannot reach; it shares :func:`staging_name`, and its
rename is Hadoop's (``training.serving.spark``).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["discard", "fsync_directory", "staging_name", "write_atomically", "write_temporary"]


def staging_name(name: str, suffix: str = ".tmp") -> str:
    """A hidden, unique name for a file (or dataset) being written before it is renamed to ``name``.

    Parameters
    ----------
    name : str
        The final name (last path component).
    suffix : str, default=".tmp"
        ``.tmp`` for new content; Spark uses ``.old`` for a dataset moved aside.

    Returns
    -------
    str
        ``.<name>.<12 hex digits><suffix>``.
    """
    return f".{name}.{uuid.uuid4().hex[:12]}{suffix}"


def write_temporary(final: Path, write: Callable[[BinaryIO], object], *, durable: bool = True) -> Path:
    """Write a complete temporary file beside ``final`` with ``write(handle)`` and return its path.

    The file is created exclusively with mode ``0o666`` less the umask (what
    a plain ``open`` gives, so a service running as another user can read an
    artifact). On any failure it is deleted before the error propagates.

    Parameters
    ----------
    final : Path
        Where the file will be moved (its directory must exist).
    write : callable
        Writes the content to the binary handle it is given.
    durable : bool, default=True
        Flush the file to disk (``fsync``) before returning.

    Returns
    -------
    Path
        The temporary file, to :func:`os.replace` onto ``final``.
    """
    temporary = final.with_name(staging_name(final.name))
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
    except BaseException:
        discard(temporary)
        raise
    return temporary


def write_atomically(final: Path, content: bytes | Callable[[BinaryIO], object], *, durable: bool = True) -> None:
    """Write ``content`` to ``final`` atomically: a temporary file beside it, renamed into place when complete.

    Parameters
    ----------
    final : Path
        The file to create or replace.
    content : bytes or callable
        The bytes, or ``write(handle)`` writing them to a binary handle.
    durable : bool, default=True
        Flush the file and the rename to disk.
    """
    data = content
    if not isinstance(data, bytes) and not callable(data):
        raise TypeError(f"content must be bytes or a callable writing to a binary handle, got "
                        f"{type(data).__name__}; encode text first (text.encode())")
    write = (lambda handle: handle.write(data)) if isinstance(data, bytes) else data
    temporary = write_temporary(final, write, durable=durable)
    try:
        os.replace(temporary, final)
    except BaseException:
        discard(temporary)
        raise
    if durable:
        fsync_directory(final.parent)


def discard(*paths: Path | None) -> None:
    """Delete temporary files that were not moved into place (``None`` and missing files are skipped)."""
    for path in paths:
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def fsync_directory(directory: Path) -> None:
    """Persist the renames in ``directory`` (POSIX); a no-op where unsupported."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
