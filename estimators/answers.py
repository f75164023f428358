"""Read a comparable final answer out of a model's response text.

Agreement between models is the strongest post-hoc signal we have when there
is no verifier: two models that independently reach the same answer are more
often right. Comparing raw texts would almost never match, so each response is
reduced to a normalised final answer first: an option letter for multiple
choice, a number for math, a short lower-cased phrase otherwise. Long free
text and code have no comparable answer (``''``), since exact matching would
only measure formatting.
"""

from __future__ import annotations

import re

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["final_answer", "final_answers"]

_OPTION = re.compile(r"^\(?([A-Ea-e])(?:[).:\]]|\s|$)")
_OPTION_SENTENCE = re.compile(r"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-E])\b[).]?")
_HASHES = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*|-?\.\d+")
_CODE = re.compile(r"```|\bdef |\[PYTHON\]|\bimport |\breturn\b")
_SHORT = 40


def _number(text: str) -> str:
    """Canonical form of a number: no thousands separators, no trailing zeros."""
    text = text.replace(",", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return ""
    return f"{value:.6g}"


def final_answer(response: str) -> str:
    """Return the normalised final answer of one response, ``''`` if none.

    Rules, first match wins: an option letter at the start (``"B"``,
    ``"(C)"``, ``"A) west"``) or after "answer is"; the number after ``####``;
    the content of ``\\boxed{}``; no answer for code; the last number of the
    text; a short text (at most 40 characters) lower-cased with spaces
    collapsed.

    Parameters
    ----------
    response : str
        One model's response text.

    Returns
    -------
    str
        The normalised answer; equal strings mean answers that agree.

    Examples
    --------
    >>> final_answer(" B)\\n"), final_answer("so 9 * 2 = 18.\\n#### 18"), final_answer("I do")
    ('B', '18', 'i do')
    """
    text = response.strip()
    if not text:
        return ""
    match = _OPTION.match(text) or _OPTION_SENTENCE.search(text)
    if match:
        return match.group(1).upper()
    match = _HASHES.search(text)
    if match:
        return _number(match.group(1))
    match = _BOXED.search(text)
    if match:
        inner = match.group(1).strip()
        return _number(inner) or inner
    if _CODE.search(text):
        return ""
    numbers = _NUMBER.findall(text)
    if numbers:
        return _number(numbers[-1])
    if len(text) <= _SHORT:
        return " ".join(text.lower().split())
    return ""


def final_answers(responses: ArrayLike) -> NDArray[np.object_]:
    """Apply :func:`final_answer` to every cell of an object array of texts.

    Parameters
    ----------
    responses : array-like of object
        Response texts; ``None`` and non-strings count as no response.

    Returns
    -------
    ndarray of object
        Same shape, normalised answers (``''`` when none).
    """
    responses = np.asarray(responses, dtype=object)
    flat = [final_answer(r) if isinstance(r, str) else "" for r in responses.ravel()]
    return np.array(flat, dtype=object).reshape(responses.shape)
