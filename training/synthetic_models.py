"""The made-up models of the synthetic benchmark (:mod:`training.synthetic`), in a module that imports nothing heavy.

Apart from the generator so that ``python -m training.synthetic --help``
can name them without loading NumPy and pandas; :mod:`training.synthetic`
re-exports both names.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SYNTHETIC_MODELS", "SyntheticModel"]


@dataclass(frozen=True)
class SyntheticModel:
    """One synthetic model and the real RouterBench model whose figures it imitates.

    Attributes
    ----------
    name : str
        Synthetic name (``synthetic-...``), used as ``model`` in the table.
    imitates : str
        RouterBench model whose mean accuracy and mean cost are the targets.
    accuracy : float
        Target mean quality (RouterBench subset ``models.csv``).
    cost_usd : float
        Target mean cost per query in USD (same source).
    task_accuracy : tuple of float
        Accuracy pattern over :data:`training.synthetic.TASKS`; sets the per-task skill (the
        overall level is re-calibrated to ``accuracy``).
    input_price, output_price : float
        Invented USD per 1M tokens, tuned so that the mean cost is near
        ``cost_usd`` for the default task mix.
    tokenizer : float
        Tokens per (characters / 4): different models count differently.
    style : int
        How much a model writes around its math answer (0 terse, 2 chatty).

    Its serving speed is :data:`training.synthetic.ASSUMED_THROUGHPUT` of ``imitates``.
    """

    name: str
    imitates: str
    accuracy: float
    cost_usd: float
    task_accuracy: tuple[float, float, float, float]
    input_price: float
    output_price: float
    tokenizer: float
    style: int


# Targets: routerbench_subset/models.csv (mean_quality, mean_cost_usd); task
# patterns: RouterBench per-task accuracy on ARC-Challenge, Winogrande and
# MBPP from the same data, math invented. Prices: tuned offline (see
# tests/test_synthetic.py for the tolerance), output/input ratio from the
# list prices RouterBench used (1 for open models, 2 for GPT-3.5, 3 for
# Claude 2 and GPT-4).
SYNTHETIC_MODELS: tuple[SyntheticModel, ...] = (
    SyntheticModel("synthetic-tiny-7b", "mistralai/mistral-7b-chat", 0.584, 8.13e-5,
                   (0.671, 0.566, 0.40, 0.344), 0.323, 0.323, 1.00, 2),
    SyntheticModel("synthetic-small-13b", "WizardLM/WizardLM-13B-V1.2", 0.567, 1.23e-4,
                   (0.658, 0.529, 0.45, 0.370), 0.446, 0.446, 1.10, 2),
    SyntheticModel("synthetic-moe-47b", "mistralai/mixtral-8x7b-chat", 0.741, 2.48e-4,
                   (0.854, 0.679, 0.62, 0.541), 0.989, 0.989, 1.00, 1),
    SyntheticModel("synthetic-coder-34b", "meta/code-llama-instruct-34b-chat", 0.612, 3.11e-4,
                   (0.663, 0.585, 0.35, 0.518), 1.14, 1.14, 1.10, 0),
    SyntheticModel("synthetic-chat-34b", "zero-one-ai/Yi-34B-Chat", 0.773, 3.29e-4,
                   (0.903, 0.754, 0.68, 0.386), 1.25, 1.25, 1.05, 1),
    SyntheticModel("synthetic-turbo", "gpt-3.5-turbo-1106", 0.732, 4.19e-4,
                   (0.834, 0.641, 0.72, 0.653), 1.71, 3.41, 0.95, 1),
    SyntheticModel("synthetic-large-v2", "claude-v2", 0.551, 3.79e-3,
                   (0.589, 0.478, 0.80, 0.642), 13.5, 40.6, 1.05, 2),
    SyntheticModel("synthetic-frontier", "gpt-4-1106-preview", 0.879, 5.02e-3,
                   (0.954, 0.859, 0.92, 0.686), 19.9, 59.6, 0.95, 1),
)
