"""What part of a prompt the featurizers read, and the checks every prompt passes first.

One place for both, so that fitting, batch scoring and every ``Router``
method see the same text: a prompt must be a ``str``; only its last
:data:`PROMPT_CHARS` characters are featurized (few-shot prompts put the
question at the end, and a bounded slice keeps one huge prompt from
costing more memory or time than a normal one, or changing what is
learned from the others); lone surrogate characters, which cannot be
encoded as UTF-8, are replaced by U+FFFD and counted.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["PROMPT_CHARS", "read_prompts"]

#: Characters of each prompt (its tail) that featurization reads.
PROMPT_CHARS = 32_768

_SURROGATE = re.compile("[\ud800-\udfff]")
_SHOWN = 40  # characters of a bad value quoted in an error


def read_prompts(prompts: ArrayLike, *, name: str = "prompts",
                 warn: bool = True) -> tuple[NDArray[np.object_], int]:
    """The featurized slice of each prompt, after checking that every prompt is text.

    Parameters
    ----------
    prompts : array-like of str, shape (N,)
        One prompt per query (``''`` for a query without one).
    name : str, default="prompts"
        How the caller calls them, quoted in errors.
    warn : bool, default=True
        Warn when lone surrogates were replaced (the count is returned either way).

    Returns
    -------
    texts : ndarray of object, shape (N,)
        Each prompt's last :data:`PROMPT_CHARS` characters, lone surrogates
        replaced by U+FFFD.
    repaired : int
        Number of prompts in which lone surrogates were replaced.

    Raises
    ------
    TypeError
        If an entry is not a ``str`` (``None``, a number, ``bytes``), naming its position.
    """
    values = np.asarray(prompts, dtype=object).ravel()
    texts = np.empty(len(values), dtype=object)
    repaired = 0
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise TypeError(f"{name}[{row}] is {type(value).__name__} {repr(value)[:_SHOWN]}, not str; every "
                            "prompt must be text (use '' for a query without one, decode bytes first)")
        text = value[-PROMPT_CHARS:]
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                text = _SURROGATE.sub("\ufffd", text)
                repaired += 1
        texts[row] = text
    if repaired and warn:
        warnings.warn(f"{repaired} of {len(values)} {name} held lone surrogate characters (halves of a UTF-16 "
                      "pair, not valid text); they were replaced by U+FFFD before featurization",
                      UserWarning, stacklevel=3)
    return texts, repaired
