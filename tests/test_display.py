"""Tests for the quality-cost Display (Agg backend, no window)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from training.display import QualityCostDisplay  # noqa: E402

CURVES = {
    "routing": (np.array([0.003, 0.001, 0.002]), np.array([0.80, 0.60, 0.75])),
    "cascade routing": ([0.001, 0.002, 0.003], [0.62, 0.79, 0.84]),
}
SINGLE = {"small": (0.001, 0.55), "middle": (0.002, 0.60), "large": (0.004, 0.80), "pricey": (0.005, 0.70)}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_lines_hold_the_curves_sorted_by_cost():
    display = QualityCostDisplay.from_curves(CURVES, SINGLE)
    assert list(display.lines_) == ["routing", "cascade routing"]
    routing = display.lines_["routing"]
    np.testing.assert_array_equal(routing.get_xdata(), [0.001, 0.002, 0.003])
    np.testing.assert_array_equal(routing.get_ydata(), [0.60, 0.75, 0.80])
    assert routing.get_label() == "routing"
    assert routing in display.ax_.get_lines()


def test_single_models_and_their_hull():
    display = QualityCostDisplay.from_curves(CURVES, SINGLE)
    np.testing.assert_array_equal(display.single_models_.get_offsets(), [[c, q] for c, q in SINGLE.values()])
    # "middle" (0.002, 0.60) is below the chord small-large (0.6667 at 0.002);
    # "pricey" is dominated; the frontier runs flat to the most expensive model.
    np.testing.assert_array_equal(display.hull_line_.get_xdata(), [0.001, 0.004, 0.005])
    np.testing.assert_array_equal(display.hull_line_.get_ydata(), [0.55, 0.80, 0.80])
    annotations = {text.get_text() for text in display.ax_.texts}
    assert annotations == set(SINGLE)


def test_hull_can_be_left_out_and_single_models_are_optional():
    without_hull = QualityCostDisplay.from_curves(CURVES, SINGLE, hull=False)
    assert without_hull.hull_line_ is None and without_hull.single_models_ is not None
    curves_only = QualityCostDisplay.from_curves(CURVES)
    assert curves_only.hull_line_ is None and curves_only.single_models_ is None
    assert len(curves_only.ax_.get_lines()) == 2


def test_labels_title_legend_and_log_scale():
    display = QualityCostDisplay.from_curves(CURVES, SINGLE, log_cost=True, title="RouterBench, 3 models")
    ax = display.ax_
    assert ax.get_xscale() == "log"
    assert ax.get_title() == "RouterBench, 3 models"
    assert ax.get_xlabel() == "Mean cost per query (USD)" and ax.get_ylabel() == "Mean quality"
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["routing", "cascade routing", "single models", "single-model hull"]
    assert QualityCostDisplay.from_curves(CURVES).ax_.get_xscale() == "linear"


def test_plot_on_a_given_axes_and_kwargs_reach_the_lines():
    figure, (left, right) = plt.subplots(1, 2)
    display = QualityCostDisplay(CURVES, SINGLE).plot(ax=right, linewidth=3, marker="s")
    assert display.ax_ is right and display.figure_ is figure
    assert not left.get_lines()
    line = display.lines_["routing"]
    assert line.get_linewidth() == 3 and line.get_marker() == "s"


def test_saving_a_png(tmp_path):
    display = QualityCostDisplay.from_curves(CURVES, SINGLE, log_cost=True)
    path = tmp_path / "quality_cost.png"
    display.figure_.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    display = QualityCostDisplay(CURVES)  # building needs no matplotlib
    with pytest.raises(ImportError, match=r'pip install "cascade-router\[plot\]"'):
        display.plot()


@pytest.mark.parametrize(
    ("curves", "single", "message"),
    [
        ({"bad": ([0.1, 0.2], [0.5])}, None, r"curves\['bad'\] must be two 1-D arrays of equal length"),
        ({"bad": ([0.1, np.nan], [0.5, 0.6])}, None, r"curves\['bad'\] must be finite"),
        ({"bad": "not a pair"}, None, r"curves\['bad'\] must be a \(costs, qualities\) pair"),
        (CURVES, {"m": 0.3}, r"single_models must map each name to a \(cost, quality\) pair"),
    ],
)
def test_bad_curves_are_rejected_with_their_name(curves, single, message):
    with pytest.raises(ValueError, match=message):
        QualityCostDisplay.from_curves(curves, single)


def test_labels_and_legend_leave_every_marker_readable_and_fitted_budgets_are_marked():
    crowded = {"a": (0.001, 0.60), "b": (0.00105, 0.601), "c": (0.0011, 0.602), "large": (0.004, 0.80),
               "pricey": (0.005, 0.79)}
    fitted = {"budget 0.001": (0.00102, 0.605), "budget 0.004": (0.0039, 0.81)}
    display = QualityCostDisplay.from_curves(CURVES, crowded, fitted=fitted, log_cost=True)
    ax = display.ax_
    np.testing.assert_array_equal(display.fitted_.get_offsets(), list(fitted.values()))
    assert "router at the fitted budgets" in [t.get_text() for t in ax.get_legend().get_texts()]
    renderer = display.figure_.canvas.get_renderer()
    display.figure_.canvas.draw()
    markers = [ax.transData.transform(point) for point in [*crowded.values(), *fitted.values()]]
    legend = ax.get_legend().get_window_extent(renderer)
    assert not any(legend.contains(*m) for m in markers)
    assert not legend.overlaps(ax.get_window_extent(renderer))
    labels = display.labels_
    assert sorted(label.get_text() for label in labels) == sorted([*crowded, *fitted])
    boxes = [Text.get_window_extent(label, renderer) for label in labels]  # the words, not their leader lines
    for i, box in enumerate(boxes):
        assert not box.overlaps(legend)
        assert not any(box.contains(*m) for m in markers)
        assert not any(box.overlaps(other) for other in boxes[i + 1:]), labels[i].get_text()
