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

import ast
import math
import re

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["CODE_CHECK_CHARS", "code_parses", "final_answer", "final_answers", "hedges", "truncated"]

_OPTION = re.compile(r"^\(?([A-Ea-e])(?:[).:\]]|\s|$)")
_OPTION_SENTENCE = re.compile(r"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-E])\b[).]?")
_HASHES = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*|-?\.\d+")
_CODE = re.compile(r"```|\bdef |\[PYTHON\]|\bimport |\breturn\b")
_SHORT = 40
_FENCE = re.compile(r"```[^\n`]*\n?(.*?)(?:```|\Z)", re.S)
_TAGGED = re.compile(r"\[PYTHON\](.*?)(?:\[/PYTHON\]|\Z)", re.S)
_CODE_START = re.compile(r"^(?:def |class |import |from |@)", re.M)
_HEDGE = re.compile(r"\b(?:i'?m not (?:sure|certain)|i am not (?:sure|certain)|i don'?t know|cannot|can'?t|can not"
                    r"|unable to|i apologi[sz]e|sorry|unfortunately|not enough information|as an ai)\b", re.I)
#: Longest code ``code_parses`` hands to ``ast.parse``; longer code is not checked (parsing is linear,
#: but a bound keeps hostile input cheap, and MBPP answers are under 3,000 characters).
CODE_CHECK_CHARS = 20_000
#: Characters of a response searched for hedging: refusals and doubts come first.
_HEDGE_CHARS = 2_000


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


def _code(text: str) -> str | None:
    """The code of a response: its ``[PYTHON]`` block, else its longest fenced block holding a ``def`` (else its
    longest), else from the first line starting a definition or import; ``None`` when it has none of these."""
    match = _TAGGED.search(text)
    if match:
        return match.group(1)
    blocks = _FENCE.findall(text)
    if blocks:
        defining = [b for b in blocks if "def " in b]
        return max(defining or blocks, key=len)
    match = _CODE_START.search(text)
    return text[match.start():] if match else None


def code_parses(response: str) -> float:
    """Whether the code of a response that looks like code is valid Python: 1.0, 0.0, or NaN when not checked.

    A real and cheap verifier of code answers (MBPP): an answer whose code
    does not even parse fails its tests. The response looks like code by the
    same rule under which :func:`final_answer` gives it no answer (a fence,
    ``def``, ``import``, ``return``, ``[PYTHON]``); its code is the
    ``[PYTHON]`` block, else the longest fenced block holding a ``def``
    (usage examples such as ``>>> f(5)`` are not Python), else the longest
    fenced block (an unclosed fence runs to the end), else the text from the
    first line starting with ``def``,
    ``class``, ``import``, ``from`` or ``@``. The code is only parsed with
    :func:`ast.parse`, never run.

    Parameters
    ----------
    response : str
        One model's response text.

    Returns
    -------
    float
        1.0 if the code parses, 0.0 if not; NaN for a response that does not
        look like code, has no code block, or whose code is longer than
        :data:`CODE_CHECK_CHARS`.

    Examples
    --------
    >>> code_parses("```python\\ndef f(x):\\n    return x\\n```"), code_parses("def f(:"), code_parses("B")
    (1.0, 0.0, nan)
    """
    if not _CODE.search(response):
        return math.nan
    code = _code(response)
    if code is None or len(code) > CODE_CHECK_CHARS:
        return math.nan
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return 0.0
    return 1.0


def hedges(response: str) -> float:
    """1.0 if the response's prose refuses or hedges ("I'm not sure", "cannot", "sorry"), else 0.0.

    Its prose is what comes before the first code fence or ``[PYTHON]``
    tag (code comments say "cannot" about the data, not the answer), at most
    its first 2,000 characters.

    Parameters
    ----------
    response : str
        One model's response text.

    Returns
    -------
    float
    """
    end = min([_HEDGE_CHARS, *(at for at in (response.find("```"), response.find("[PYTHON]")) if at >= 0)])
    return 1.0 if _HEDGE.search(response, 0, end) else 0.0


def truncated(response: str) -> float:
    """1.0 if a code fence or ``[PYTHON]`` block is left open (the answer was cut off), else 0.0.

    Parameters
    ----------
    response : str
        One model's response text.

    Returns
    -------
    float
    """
    return 1.0 if response.count("```") % 2 or response.count("[PYTHON]") > response.count("[/PYTHON]") else 0.0
