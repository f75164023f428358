"""``python -m training.score``: the batch scorer's command line, kept at its documented name.

The scorer itself is :mod:`training.serving.batch`, imported on first use:
its router, pandas and Numba cost seconds that ``--help`` and a usage error
should not pay (the parser is :func:`training.cli.score_parser`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Score a file as ``python -m training.score`` does (:func:`training.serving.batch.main`).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit code.
    """
    from .serving.batch import main as score

    return score(argv)


if __name__ == "__main__":  # parse before importing the scorer, so that --help and usage errors answer at once
    from training.cli import parse_or_exit_code, score_parser

    if isinstance(code := parse_or_exit_code(score_parser().parse_args, sys.argv[1:]), int):
        sys.exit(code)
    sys.exit(main())
