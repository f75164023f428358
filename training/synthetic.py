"""A built-in **synthetic** routing benchmark: seeded, generated in memory, no download.

.. warning::
   Everything here is made up. The model names start with ``synthetic-``,
   the prompts are filled-in templates, the "responses" are strings picked to
   match a simulated correctness, and the costs come from invented token
   prices. Only the *targets* are real: each synthetic model's mean accuracy
   and mean cost per query follow one real model of RouterBench (Hu et al.
   2024, arXiv:2403.12031), as measured on the RouterBench subset shipped in
   ``../shared/data/routerbench_subset/models.csv``. Never report results on
   this table as results about those real models.

The table exists so that the toolkit has a default benchmark that works on a
fresh machine, with enough structure for every part to show something:

* **Difficulty.** Each query has a latent difficulty ``d = visible + hidden``.
  The probability that model ``m`` answers it correctly is
  ``sigmoid(skill[m, task] + offset[m] - d + noise)``, with ``offset[m]``
  solved for so that the expected mean accuracy equals the target exactly.
  The ``visible`` part is written into the prompt (longer prompts, rarer
  technical words, more and bigger numbers, harder coding problems), so a
  prompt-based estimator can learn it; the ``hidden`` part and the noise
  cannot be learnt from the prompt, as with real data.
* **Specialisation.** ``skill[m, task]`` follows each real model's accuracy
  per task on RouterBench (ARC-Challenge for the science questions,
  Winogrande for commonsense, MBPP for code); the math accuracies are
  invented, in line with GSM8K scores of models of that class. The best
  model on average is therefore not the best everywhere.
* **Agreement.** A correct model gives the canonical answer; a wrong one
  often gives the query's one "attractive" wrong answer (a shared
  misconception), otherwise another wrong answer. Multiple-choice answers are
  option letters, math answers end with ``#### <number>`` (or, for a few
  wrong answers, with no such line), code answers are short snippets. Two
  models that agree are therefore more often right than two that disagree.
* **Cost.** ``cost_usd = input_tokens * input_price + output_tokens *
  output_price`` with prices per 1M tokens chosen so that mean costs match
  the targets (their output/input ratio follows the real list prices), and
  token counts of about one per four characters, with per-model tokenizer
  factors and noise.
* **Latency.** ``latency_s = ttft_s + output_tokens / output_tokens_per_s``
  with the serving speed :data:`ASSUMED_THROUGHPUT` gives the imitated
  model, each term with its own noise (queueing before the first token,
  load during generation), so latency grows with the answer's length, which
  varies with the prompt (task, difficulty, the model's style).
"""

from __future__ import annotations

if __name__ == "__main__":  # parse before the imports below (NumPy, pandas), so that --help answers at once
    import sys

    from training.cli import parse_or_exit_code, synthetic_parser

    if isinstance(code := parse_or_exit_code(synthetic_parser().parse_args, sys.argv[1:]), int):
        sys.exit(code)
    from importlib import import_module

    # run the importable module (parsed again): one copy of it, the one tests import
    sys.exit(import_module("training.synthetic").main())

import functools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd

from estimators.table import RoutingTable

from .data import read_table
from .synthetic_models import SYNTHETIC_MODELS, SyntheticModel

__all__ = [
    "ASSUMED_THROUGHPUT",
    "SYNTHETIC_MODELS",
    "TASKS",
    "TASK_SHARES",
    "SyntheticModel",
    "default_table",
    "make_benchmark",
    "synthetic_prices",
]

TASKS = ("science-mc", "commonsense-2way", "math-word", "code-python")
TASK_SHARES = (0.35, 0.30, 0.20, 0.15)


#: Serving speed ``(ttft_s, output_tokens_per_s)`` we **assume** for each RouterBench model: seconds to
#: the first token and output tokens per second. RouterBench logs tokens, not time, so latency is derived
#: from these (``training.data.derive_latency``). They are not measurements: round figures in the range
#: providers' public speed dashboards (e.g. artificialanalysis.ai) showed in 2024 for these models or
#: models of their size class (small open models fast, 34B-70B dense ones slower, Claude 1/2 and GPT-4
#: Turbo slowest to start and to generate). Latency budgets are relative to them, so a user with real
#: timings should log ``latency_s`` instead.
ASSUMED_THROUGHPUT: dict[str, tuple[float, float]] = {
    "mistralai/mistral-7b-chat": (0.25, 110.0),
    "WizardLM/WizardLM-13B-V1.2": (0.30, 75.0),
    "mistralai/mixtral-8x7b-chat": (0.35, 90.0),
    "meta/code-llama-instruct-34b-chat": (0.45, 45.0),
    "zero-one-ai/Yi-34B-Chat": (0.45, 40.0),
    "claude-instant-v1": (0.50, 95.0),
    "meta/llama-2-70b-chat": (0.55, 35.0),
    "gpt-3.5-turbo-1106": (0.40, 80.0),
    "claude-v1": (0.90, 35.0),
    "claude-v2": (1.00, 30.0),
    "gpt-4-1106-preview": (0.70, 25.0),
}

_HIDDEN_SD = 1.2  # difficulty the prompt does not reveal
_NOISE_SD = 0.7  # per (query, model) luck
_SHARED_WRONG = (0.55, 1.0, 0.5, 0.5)  # P(a wrong answer is the attractive one), per task
_NO_ANSWER_LINE = 0.15  # P(a wrong math answer has no '#### ' line)
#: P(an answer says it is unsure) when it is wrong and when it is right, per model (cheapest first): verbalised
#: doubt, which small models voice more often and which tracks their errors (so reading a cheap model's answer
#: tells whether to escalate, as response checks do on real logs; docs/posthoc_signal.md).
_HEDGE_WRONG = (0.55, 0.55, 0.45, 0.45, 0.40, 0.35, 0.30, 0.25)
_HEDGE_RIGHT = (0.06, 0.06, 0.05, 0.05, 0.04, 0.04, 0.03, 0.03)


def make_benchmark(n_queries: int = 4000, *, seed: int = 0) -> pd.DataFrame:
    """Generate the synthetic benchmark as a long table (one row per query and model).

    The result has the columns of ``../shared/data/README.md`` that
    :func:`training.data.read_table` reads, so it goes through the same
    validation as real data. **It is synthetic**: see the module docstring.

    Parameters
    ----------
    n_queries : int, default 4000
        Number of queries; each gets a row for each of the
        ``len(SYNTHETIC_MODELS)`` models.
    seed : int, default 0
        Seed of every random choice; the same seed gives the same table.

    Returns
    -------
    pandas.DataFrame
        Columns ``query_id, task, subtask, split, prompt, model, quality,
        cost_usd, input_tokens, output_tokens, latency_s, response``; quality is 0/1,
        ``split`` is ``''`` (split the queries yourself).

    Examples
    --------
    >>> frame = make_benchmark(200, seed=1)
    >>> frame.shape
    (1600, 11)
    >>> sorted(frame["task"].unique())
    ['code-python', 'commonsense-2way', 'math-word', 'science-mc']
    """
    if isinstance(n_queries, bool) or not isinstance(n_queries, (int, np.integer)) or n_queries < 1:
        raise ValueError(f"n_queries must be an integer >= 1, got {n_queries!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    n, k = int(n_queries), len(SYNTHETIC_MODELS)
    # Independent streams, so that changing how text is written never
    # changes which queries a model gets right.
    # (a sixth stream was added for hedges: the first five, and so everything they drew, are unchanged)
    latent, text, answers, tokens, timing, doubt = (np.random.default_rng(s)
                                                    for s in np.random.SeedSequence(seed).spawn(6))

    task = latent.choice(len(TASKS), size=n, p=TASK_SHARES)
    visible = latent.normal(size=n)
    difficulty = visible + latent.normal(scale=_HIDDEN_SD, size=n)
    logit = _skills()[:, task].T - difficulty[:, None] + latent.normal(scale=_NOISE_SD, size=(n, k))
    logit += _offsets(logit, np.array([m.accuracy for m in SYNTHETIC_MODELS]))
    correct = latent.random((n, k)) < 1.0 / (1.0 + np.exp(-logit))

    writer = random.Random(int(text.integers(2**63)))
    problems = [_WRITERS[t](writer, float(v)) for t, v in zip(task, visible, strict=True)]
    prompts = np.array([_preamble(t) + p.prompt for t, p in zip(task.tolist(), problems, strict=True)], dtype=object)
    responses = _answer(problems, task, correct, random.Random(int(answers.integers(2**63))))
    responses = _hedge(responses, correct, doubt)

    prompt_chars = np.array([len(p) for p in prompts], dtype=float)
    response_chars = np.vectorize(len, otypes=[float])(responses)
    tokenizer = np.array([m.tokenizer for m in SYNTHETIC_MODELS])
    input_tokens = np.maximum(1, np.rint(prompt_chars[:, None] / 4 * tokenizer * tokens.lognormal(0, 0.03, (n, k))))
    output_tokens = np.maximum(1, np.rint(response_chars / 4 * tokens.lognormal(0, 0.15, (n, k))))
    price_in, price_out = (np.array([getattr(m, f) for m in SYNTHETIC_MODELS]) for f in ("input_price", "output_price"))
    cost = (input_tokens * price_in + output_tokens * price_out) / 1e6
    ttft, speed = np.array([ASSUMED_THROUGHPUT[m.imitates] for m in SYNTHETIC_MODELS]).T
    latency = np.round(ttft * timing.lognormal(0, 0.3, (n, k))
                       + output_tokens / speed * timing.lognormal(0, 0.1, (n, k)), 4)

    width = max(5, len(str(n - 1)))
    return pd.DataFrame(
        {
            "query_id": np.repeat([f"synthetic-{i:0{width}d}" for i in range(n)], k),
            "task": np.repeat(np.array(TASKS, dtype=object)[task], k),
            "subtask": np.repeat(np.array([p.subtask for p in problems], dtype=object), k),
            "split": "",
            "prompt": np.repeat(prompts, k),
            "model": np.tile(np.array([m.name for m in SYNTHETIC_MODELS], dtype=object), n),
            "quality": correct.astype(np.float64).ravel(),
            "cost_usd": cost.ravel(),
            "input_tokens": input_tokens.ravel(),
            "output_tokens": output_tokens.ravel(),
            "latency_s": latency.ravel(),
            "response": responses.ravel(),
        }
    )


def default_table(n_queries: int = 4000, *, seed: int = 0, models: Sequence[str] | None = None) -> RoutingTable:
    """Return :func:`make_benchmark` loaded through :func:`training.data.read_table`.

    The default benchmark of the toolkit; **synthetic** (see the module
    docstring). Going through :func:`~training.data.read_table` gives it the
    same validation and layout as a real data set.

    Parameters
    ----------
    n_queries : int, default 4000
        Number of queries, as in :func:`make_benchmark`.
    seed : int, default 0
        Seed of the generator, as in :func:`make_benchmark`.
    models : sequence of str, optional
        Keep only these of :data:`SYNTHETIC_MODELS`, by name; default all.

    Returns
    -------
    RoutingTable
        The benchmark as a validated routing table.
    """
    return read_table(make_benchmark(n_queries, seed=seed), models=models)


def synthetic_prices() -> dict[str, tuple[float, float]]:
    """Return the invented token prices, ``{model: (input, output)}`` in USD per 1M tokens.

    Same layout as :func:`training.data.read_prices`, for cost estimators
    that predict cost from token counts.
    """
    return {m.name: (m.input_price, m.output_price) for m in SYNTHETIC_MODELS}


# --------------------------------------------------------------------------- #
# correctness
# --------------------------------------------------------------------------- #


def _skills() -> np.ndarray:
    """Per-(model, task) skill from the accuracy patterns, shape (K, n_tasks).

    The logit of a task accuracy is stretched because averaging a sigmoid
    over the spread of difficulty and noise pulls accuracies towards 0.5
    (probit approximation).
    """
    pattern = np.array([m.task_accuracy for m in SYNTHETIC_MODELS])
    spread = 1.0 + _HIDDEN_SD**2 + _NOISE_SD**2
    return np.log(pattern / (1 - pattern)) * math.sqrt(1 + math.pi * spread / 8)


def _offsets(logit: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-model shift such that the mean of sigmoid(logit + shift) equals ``target``."""
    low, high = np.full(len(target), -20.0), np.full(len(target), 20.0)
    for _ in range(60):  # bisection: the mean is increasing in the shift
        middle = (low + high) / 2
        too_high = (1.0 / (1.0 + np.exp(-(logit + middle)))).mean(axis=0) > target
        high = np.where(too_high, middle, high)
        low = np.where(too_high, low, middle)
    return (low + high) / 2


# --------------------------------------------------------------------------- #
# prompts: each writer returns a problem with its canonical and wrong answers
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _Problem:
    prompt: str
    subtask: str
    answers: tuple[str, ...]  # [0] correct, [1] the attractive wrong one, [2:] other wrong ones
    render: Callable[[int, int, bool], str] | None = None  # (answer, style, answer line?) -> text


_T = TypeVar("_T")


def _pick(r: random.Random, options: Sequence[_T]) -> _T:
    return options[int(r.random() * len(options))]


def _poisson(r: random.Random, mean: float) -> int:
    limit, count, product = math.exp(-mean), 0, r.random()
    while product > limit:
        count += 1
        product *= r.random()
    return count


def _hard(level: float) -> float:
    """Probability that a slot gets a rare/technical word at this visible difficulty."""
    return 1.0 / (1.0 + math.exp(-(1.5 * level - 0.5)))


def _word(r: random.Random, level: float, easy: Sequence[str], hard: Sequence[str]) -> str:
    return _pick(r, hard if r.random() < _hard(level) else easy)


_SCIENCE = {
    "physics": (
        "ball toy car ramp wheel magnet light sound heat spring rope wagon bicycle mirror balloon swing bell".split(),
        "momentum torque inertia refraction wavelength frequency amplitude acceleration impedance capacitance "
        "resonance diffraction entropy buoyancy trajectory oscillation voltage".split(),
    ),
    "chemistry": (
        "water salt sugar ice steam vinegar soap rust air bubbles juice milk candle smoke oil".split(),
        "catalyst isotope electrolyte oxidation precipitate titration molarity solubility enthalpy polymer "
        "reagent alkali equilibrium valence covalency stoichiometry".split(),
    ),
    "biology": (
        "plant seed leaf root flower bird fish frog dog insect tree egg animal food bee".split(),
        "mitochondria chloroplast enzyme photosynthesis chromosome mutation allele ribosome osmosis "
        "metabolism hormone antibody membrane genotype phenotype".split(),
    ),
    "earth-science": (
        "rock soil rain cloud wind river sun moon sand mountain ocean snow storm lake hill".split(),
        "sediment erosion magma stratosphere humidity aquifer glacier lithosphere mantle weathering "
        "precipitation subduction isotherm basalt tectonics".split(),
    ),
}
_SCIENCE_STEMS = (
    "Which of the following best explains why the {a} changes when the {b} increases?",
    "A student observes that the {a} moves faster near the {b}. What is the most likely cause?",
    "Which property of the {a} is most important when studying the {b}?",
    "What is the most likely effect of the {a} on the {b}?",
    "Scientists compare the {a} and the {b}. Which statement about them is correct?",
    "Which tool would a student use to measure the {a} of the {b}?",
)
_SCIENCE_DETAILS = (
    "The experiment is repeated {n} times at {m} degrees Celsius.",
    "Assume that the {a} stays constant during the test.",
    "The {a} is observed for {n} minutes.",
    "A second sample contains {m} grams of {a}.",
    "The reading changes from {n} to {m} units.",
)
_CHANGES = ("an increase in the", "a decrease in the", "no change in the", "a reversal of the")
_MC_TAIL = 'Print only a single choice from {letters} without explanation. Answer:'


def _science(r: random.Random, level: float) -> _Problem:
    subtask = _pick(r, tuple(_SCIENCE))
    easy, hard = _SCIENCE[subtask]
    lines = [_pick(r, _SCIENCE_STEMS).format(a=_word(r, level, easy, hard), b=_word(r, level, easy, hard))]
    for _ in range(_poisson(r, max(0.1, 0.6 + 0.9 * level))):
        n, m = _number(r, level), _number(r, level)
        lines.append(_pick(r, _SCIENCE_DETAILS).format(a=_word(r, level, easy, hard), n=n, m=m))
    letters = "ABCD"
    options: list[str] = []
    while len(options) < len(letters):
        option = f"{_pick(r, _CHANGES)} {_word(r, level, easy, hard)}"
        if option not in options:
            options.append(option)
    prompt = "\n".join(
        [" ".join(lines)]
        + [f"{letter}) {option}" for letter, option in zip(letters, options, strict=True)]
        + [_MC_TAIL.format(letters=" or ".join(f'"{x}"' for x in letters))]
    )
    return _Problem(prompt, subtask, _letters(r, letters))


_NAMES = (
    "Ian Dennis Sarah Maria Kyle Logan Emily Jessica Brian Kevin Megan Rachel Adam Jason Laura Monica Nick "
    "Craig Tanya Felicia Derrick Victoria Hunter Elena".split()
)
_COMMONSENSE = {
    "object": ("car book lunch bike dog garden kitchen homework house phone".split(),
               "manuscript thesis sculpture portfolio telescope harpsichord spreadsheet itinerary prototype "
               "bonsai".split()),
    "verb": ("borrowed fixed admired cleaned painted returned".split(),
             "appraised refurbished scrutinized catalogued annotated".split()),
    "action": (("swim", "cook", "run", "sing", "draw", "dance"),
               ("negotiate", "improvise", "calibrate instruments", "extemporize", "arbitrate disputes")),
    "reason": (("was tired", "was hungry", "liked it", "was busy", "was sick", "had more time", "was late",
                "was new to it", "knew the way", "was taller"),
               ("was notoriously parsimonious", "found the arrangement unconscionable",
                "had a meticulous temperament", "was ambivalent about the obligation",
                "harbored an inexplicable aversion to it", "had an encyclopedic familiarity with it",
                "was perpetually overextended", "considered it an egregious imposition")),
    "result": (("won the race", "felt sad", "went home early", "was happy", "got the prize"),
               ("relinquished the position", "was reprimanded by the committee",
                "deferred the decision indefinitely", "was commended for diligence")),
}
_COMMONSENSE_STEMS = (
    ("social", "{p} {verb} {q}'s {object} because _ {reason}."),
    ("physical", "{p} could not {action} as well as {q}, so _ {result}."),
    ("social", "{p} asked {q} for help with the {object} since _ {reason}."),
    ("physical", "The {object} was easier for {p} than for {q} because _ {reason}."),
)
_COMMONSENSE_CONTEXT = (
    "{p} and {q} had known each other for {n} years.",
    "It happened on a {object} trip that lasted {n} days.",
    "Neither of them had mentioned the {object} before.",
)


def _commonsense(r: random.Random, level: float) -> _Problem:
    p = _pick(r, _NAMES)
    q = _pick(r, [name for name in _NAMES if name != p])
    slots = {key: _word(r, level, *words) for key, words in _COMMONSENSE.items()}
    subtask, stem = _pick(r, _COMMONSENSE_STEMS)
    context = [
        _pick(r, _COMMONSENSE_CONTEXT).format(
            p=p, q=q, n=_number(r, level), object=_word(r, level, *_COMMONSENSE["object"])
        )
        for _ in range(_poisson(r, max(0.05, 0.3 + 0.6 * level)))
    ]
    sentence = " ".join(context + [stem.format(p=p, q=q, **slots)])
    prompt = "\n".join(
        [sentence, f"A) {p}", f"B) {q}",
         _MC_TAIL.format(letters='"A" or "B"')]
    )
    return _Problem(prompt, subtask, _letters(r, "AB"))


def _letters(r: random.Random, letters: str) -> tuple[str, ...]:
    """Correct letter first, then the attractive wrong one, then the others."""
    order, shuffled = list(letters), []  # by hand: only random() is reproducible across Pythons
    while order:
        shuffled.append(order.pop(int(r.random() * len(order))))
    return tuple(shuffled)


def _number(r: random.Random, level: float) -> int:
    """A number with more digits at a higher visible difficulty."""
    digits = min(4, max(1, int(round(1.5 + 0.8 * level + r.random() - 0.5))))
    return int(10 ** (digits - 1) + r.random() * 9 * 10 ** (digits - 1))


_ITEMS = "apples marbles stickers books cookies pencils cards coins shells stamps".split()


def _math(r: random.Random, level: float) -> _Problem:
    name, items = _pick(r, _NAMES), _pick(r, _ITEMS)
    value = start = _number(r, level) + 1
    sentences = [f"{name} has {value} {items}."]
    steps: list[tuple[str, int]] = []  # (worked line, value after it)
    for _ in range(1 + min(5, _poisson(r, max(0.2, 1.3 + 1.0 * level)))):
        hard = r.random() < _hard(level)
        percent = _pick(r, (10, 20, 25, 50))
        box = next((g for g in (2, 3, 4, 5, 6) if value % g == 0 and r.random() < 0.6), 0)
        if hard and value * percent % 100 == 0:
            sold = value * percent // 100
            sentences.append(f"{name} sells {percent}% of the {items} at a wholesale discount.")
            steps.append((f"{percent}% of {value} is {sold}, and {value} - {sold} = {value - sold}", value - sold))
        elif hard and box:
            sentences.append(f"{name} packs the {items} equally into {box} crates and keeps one crate.")
            steps.append((f"{value} / {box} = {value // box}", value // box))
        elif r.random() < 0.25:
            factor = _pick(r, (2, 3, 4))
            word = {2: "doubles", 3: "triples", 4: "quadruples"}[factor]
            sentences.append(f"Then the number of {items} {word}.")
            steps.append((f"{value} * {factor} = {value * factor}", value * factor))
        elif r.random() < 0.5 and value > 1:
            given = 1 + int(r.random() * (value - 1))
            sentences.append(f"{name} gives {given} {items} to a friend.")
            steps.append((f"{value} - {given} = {value - given}", value - given))
        else:
            bought = _number(r, level)
            sentences.append(f"{name} buys {bought} more {items}.")
            steps.append((f"{value} + {bought} = {value + bought}", value + bought))
        value = steps[-1][1]
    sentences.append(f"How many {items} does {name} have now?")
    correct = value
    skipped = steps[-2][1] if len(steps) > 1 else start  # the classic slip: forget the last step
    if skipped == correct:
        skipped = correct + 3
    slips = [correct + d for d in (1, -1, 10, -10, 2) if correct + d >= 0 and correct + d != skipped]
    answers = tuple(str(v) for v in [correct, skipped] + slips[:3])
    intro = ("", "Let's solve it step by step.\n", f"Sure! Let's work out how many {items} {name} has.\n")

    def render(answer: int, style: int, line: bool) -> str:
        shown = steps[:-1] if answer == 1 else steps
        work = "\n".join(text for text, _ in shown) + "\n" if style else ""
        tail = f"#### {answers[answer]}" if line else f"So {name} ends up with about {answers[answer]} {items}."
        return f"{intro[style]}{work}{tail}"

    return _Problem("Question: " + " ".join(sentences), "one-step" if len(steps) == 1 else "multi-step", answers,
                    render)


# (tier, name, arguments, description, example, correct body, common bug)
_CODE = (
    (0, "sum_list", "xs", "return the sum of a list of numbers", "sum_list([1, 2, 3]) == 6",
     "return sum(xs)", "return sum(xs[1:])"),
    (0, "find_max", "xs", "return the largest element of a list", "find_max([3, 9, 2]) == 9",
     "return max(xs)", "return xs[-1]"),
    (0, "reverse_string", "s", "reverse a string", "reverse_string('abc') == 'cba'",
     "return s[::-1]", "return s[:-1]"),
    (0, "square_area", "a", "return the area of a square with side a", "square_area(4) == 16",
     "return a * a", "return 4 * a"),
    (1, "count_vowels", "s", "count the vowels in a string, ignoring case", "count_vowels('Apple') == 2",
     "return sum(c in 'aeiou' for c in s.lower())", "return sum(c in 'aeiou' for c in s)"),
    (1, "even_numbers", "xs", "return the even numbers of a list, in order", "even_numbers([1, 2, 4]) == [2, 4]",
     "return [x for x in xs if x % 2 == 0]", "return [x for x in xs if x % 2 == 1]"),
    (1, "remove_duplicates", "xs", "remove duplicates from a list while keeping the original order",
     "remove_duplicates([3, 1, 3]) == [3, 1]", "return list(dict.fromkeys(xs))", "return list(set(xs))"),
    (1, "is_palindrome", "s", "check whether a string is a palindrome, ignoring case and non-alphanumeric characters",
     "is_palindrome('A man, a plan') is False",
     "t = ''.join(c.lower() for c in s if c.isalnum())\n    return t == t[::-1]", "return s == s[::-1]"),
    (2, "second_largest", "xs", "find the second largest distinct element of a list",
     "second_largest([4, 4, 2]) == 2", "return sorted(set(xs))[-2]", "return sorted(xs)[-2]"),
    (2, "fibonacci", "n", "compute the n-th Fibonacci number iteratively", "fibonacci(10) == 55",
     "a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
     "a, b = 0, 1\n    for _ in range(n - 1):\n        a, b = b, a + b\n    return a"),
    (2, "flatten", "xss", "flatten a list of lists by one level", "flatten([[1], [2, 3]]) == [1, 2, 3]",
     "return [x for xs in xss for x in xs]", "return [xs[0] for xs in xss]"),
    (2, "gcd", "a, b", "compute the greatest common divisor with the Euclidean algorithm", "gcd(12, 18) == 6",
     "while b:\n        a, b = b, a % b\n    return a", "return min(a, b)"),
    (3, "longest_increasing_subsequence", "xs",
     "compute the length of the longest strictly increasing subsequence using dynamic programming",
     "longest_increasing_subsequence([3, 1, 2, 5]) == 3",
     "best = [1] * len(xs)\n    for i in range(len(xs)):\n        for j in range(i):\n"
     "            if xs[j] < xs[i]:\n                best[i] = max(best[i], best[j] + 1)\n"
     "    return max(best, default=0)",
     "return len(set(xs))"),
    (3, "balanced_brackets", "s", "check whether the brackets ()[]{} in a string are balanced using a stack",
     "balanced_brackets('([)]') is False",
     "pairs, stack = {')': '(', ']': '[', '}': '{'}, []\n    for c in s:\n        if c in '([{':\n"
     "            stack.append(c)\n        elif c in pairs and (not stack or stack.pop() != pairs[c]):\n"
     "            return False\n    return not stack",
     "return s.count('(') == s.count(')')"),
    (3, "edit_distance", "a, b", "compute the Levenshtein edit distance between two strings with memoization",
     "edit_distance('kitten', 'sitting') == 3",
     "prev = list(range(len(b) + 1))\n    for i, x in enumerate(a, 1):\n        cur = [i]\n"
     "        for j, y in enumerate(b, 1):\n"
     "            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))\n"
     "        prev = cur\n    return prev[-1]",
     "return sum(x != y for x, y in zip(a, b))"),
    (3, "merge_intervals", "intervals", "merge overlapping intervals given as (start, end) pairs",
     "merge_intervals([(1, 3), (2, 6)]) == [(1, 6)]",
     "out = []\n    for lo, hi in sorted(intervals):\n        if out and lo <= out[-1][1]:\n"
     "            out[-1] = (out[-1][0], max(out[-1][1], hi))\n        else:\n"
     "            out.append((lo, hi))\n    return out",
     "return sorted(intervals)"),
)
_CODE_EXTRAS = (
    " The solution must run in linear time.",
    " Do not use built-in helpers such as sorted, max or set.",
    " The input may contain negative numbers, duplicates and unicode characters.",
    " Raise a ValueError with an informative message for invalid input.",
)
_CODE_OTHER_WRONG = ("return None", "raise NotImplementedError")


def _code(r: random.Random, level: float) -> _Problem:
    tier = min(3, max(0, int(math.floor(level + 1.5 + (r.random() - 0.5)))))
    _, name, args, description, example, body, bug = _pick(r, [p for p in _CODE if p[0] == tier])
    extras = "".join(extra for extra in _CODE_EXTRAS if r.random() < 0.5 * _hard(level))
    prompt = (
        f"Write a Python function `{name}({args})` to {description}.{extras}\n"
        f"Your code should pass this test:\nassert {example}"
    )
    answers = tuple(f"```python\ndef {name}({args}):\n    {code}\n```" for code in (body, bug) + _CODE_OTHER_WRONG)
    return _Problem(prompt, ("basic", "strings-and-lists", "algorithms", "dynamic-programming")[tier], answers)


_WRITERS = (_science, _commonsense, _math, _code)
_HEADERS = (
    "Please answer with the letter of the correct answer.\n\n",
    "Please answer with the letter of the correct answer.\n\n",
    "Solve the following problem. Finish with a line of the form '#### <answer>'.\n\n",
    "",
)
_SHOTS = (4, 3, 2, 0)  # in-context examples per task, as RouterBench's prompts have


@functools.cache
def _preamble(task: int) -> str:
    """Header and fixed in-context examples of a task (the same for every query)."""
    r = random.Random(8191 + task)
    shots = [_WRITERS[task](r, 0.0) for _ in range(_SHOTS[task])]
    answers = [p.render(0, 1, True) if p.render else p.answers[0] for p in shots]
    return _HEADERS[task] + "".join(f"{p.prompt}\n{a}\n\n" for p, a in zip(shots, answers, strict=True))


# --------------------------------------------------------------------------- #
# responses
# --------------------------------------------------------------------------- #


def _answer(problems: list[_Problem], task: np.ndarray, correct: np.ndarray, r: random.Random) -> np.ndarray:
    """Pick each model's answer: canonical if correct, else a shared or an idiosyncratic wrong one."""
    n, k = correct.shape
    styles = [m.style for m in SYNTHETIC_MODELS]
    out = np.empty((n, k), dtype=object)
    for i, problem in enumerate(problems):
        shared = _SHARED_WRONG[task[i]]
        for j in range(k):
            if correct[i, j]:
                choice = 0
            elif len(problem.answers) == 2 or r.random() < shared:
                choice = 1
            else:
                choice = 2 + int(r.random() * (len(problem.answers) - 2))
            if problem.render is None:
                out[i, j] = problem.answers[choice]
            else:
                line = choice == 0 or r.random() >= _NO_ANSWER_LINE
                out[i, j] = problem.render(choice, styles[j], line)
    return out


def _hedge(responses: np.ndarray, correct: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Prefix "I'm not sure" to some answers, wrong ones far more often (:data:`_HEDGE_WRONG`, :data:`_HEDGE_RIGHT`).

    A bare option letter becomes "I'm not sure, but the answer is B", so that its answer is still read.
    """
    rate = np.where(correct, np.array(_HEDGE_RIGHT), np.array(_HEDGE_WRONG))
    doubt = rng.random(correct.shape) < rate
    out = responses.copy()
    for i, j in zip(*np.nonzero(doubt), strict=True):
        text = responses[i, j]
        out[i, j] = f"I'm not sure, but the answer is {text}" if len(text) <= 2 else f"I'm not sure, but: {text}"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.synthetic --out logs.parquet``: write the synthetic benchmark as a long table.

    So that the README's examples (and a user trying the tools) have a log
    with every column the toolkit reads (prompts, responses, tokens,
    latency) without downloading anything. **Synthetic**: see the module
    docstring.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 2 on bad input (one ``error:`` line; an existing
        ``--out`` without ``--overwrite``), 1 if ``--out`` cannot be written.
    """
    import argparse
    from pathlib import Path

    from .cli import run_command, synthetic_parser, writing
    from .data import write_table

    def job(args: argparse.Namespace) -> tuple[int, Path]:
        frame = make_benchmark(args.n_queries, seed=args.seed)
        if args.models is not None:
            known = {m.name for m in SYNTHETIC_MODELS}
            unknown = [name for name in args.models if name not in known]
            if unknown:
                raise ValueError(f"--models: {unknown} are not synthetic models; choose among {sorted(known)}")
            frame = frame[frame["model"].isin(args.models)].reset_index(drop=True)
        with writing("--out", args.out):
            write_table(frame, args.out, overwrite=args.overwrite)
        return args.n_queries, args.out

    def finish(result: tuple[int, Path]) -> int:
        print(f"wrote {result[0]:,} synthetic queries to {result[1]}")
        return 0

    return run_command(argv, synthetic_parser().parse_args, job, finish)
