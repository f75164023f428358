"""Writing what the ``docs/*.py`` scripts generate, so that a killed run never leaves half a file.

Each script owns a block of a markdown page between two HTML markers; the
prose around the block is written by hand and kept as it is.
"""

from __future__ import annotations

from pathlib import Path

from training import files


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) with :func:`training.files.write_atomically`: a killed run leaves the old file.

    Parameters
    ----------
    path : Path
        Destination.
    text : str
        Its whole new content.
    """
    files.write_atomically(path, text.encode("utf-8"))


def replace_block(path: Path, generated: str, begin: str, end: str, skeleton: str) -> None:
    """Replace the block between ``begin`` and ``end`` in ``path``, creating the file from ``skeleton`` if needed.

    Parameters
    ----------
    path : Path
        The markdown page.
    generated : str
        What goes between the markers.
    begin, end : str
        The markers.
    skeleton : str
        The page to start from when ``path`` does not exist; holds both markers.

    Raises
    ------
    ValueError
        If the page exists without both markers.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else skeleton
    if begin not in text or end not in text:
        raise ValueError(f"{path} lacks the markers {begin} and {end}; add them where the generated block goes")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    write_atomically(path, f"{head}{begin}\n{generated}\n{end}{tail}")
