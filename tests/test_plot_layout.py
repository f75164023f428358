"""The fit report's figure as a person sees it: no text drawn over another, nothing cut off, no label misread.

Read from the rendered artists' extents (Agg): every legend, tick label, axis
label, title and point label of the figure ``training.fit`` saves; and each
point label nearest its own point, or joined to it by a leader that crosses
no other leader (issue 32: labels swapped between neighbours). Checked on
the fit shared by the suite, on the README's default run and on a RouterBench
fit (those two are slow).
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from training.display import report_figure  # noqa: E402
from training.fit import main  # noqa: E402


def _texts(figure) -> list[tuple[str, object]]:
    """Every piece of text a reader must be able to read, with its on-screen box."""
    renderer = figure.canvas.get_renderer()
    found = []
    for index, ax in enumerate(figure.axes):
        legend = ax.get_legend()
        if legend is not None:
            found.append((f"axes {index} legend", legend.get_window_extent(renderer)))
        for name, text in (("title", ax.title), ("x label", ax.xaxis.label), ("y label", ax.yaxis.label)):
            if text.get_text():
                found.append((f"axes {index} {name}", text.get_window_extent(renderer)))
        for axis_name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            shown = [tick for tick in axis.get_ticklabels(which="both") if tick.get_visible() and tick.get_text()]
            low, high = sorted(axis.get_view_interval())
            for tick in shown:  # labels of ticks outside the view are not drawn
                position = tick.get_position()[0 if axis_name == "x" else 1]
                if low <= position <= high:
                    found.append((f"axes {index} {axis_name} tick {tick.get_text()!r}",
                                  tick.get_window_extent(renderer)))
        for text in ax.texts:  # the words only: a leader line may cross things, as leaders do
            found.append((f"axes {index} label {text.get_text()!r}", Text.get_window_extent(text, renderer)))
    return found


def _layout_problems(figure) -> list[str]:
    figure.canvas.draw()
    texts = _texts(figure)
    frame = figure.bbox
    problems = [f"{name} leaves the figure" for name, box in texts
                if not (frame.x0 - 0.5 <= box.x0 and box.x1 <= frame.x1 + 0.5
                        and frame.y0 - 0.5 <= box.y0 and box.y1 <= frame.y1 + 0.5)]
    problems += [f"{a} overlaps {b}" for (a, box_a), (b, box_b) in combinations(texts, 2)
                 if box_a.overlaps(box_b) and box_a.intersection(box_a, box_b).width > 0.5
                 and box_a.intersection(box_a, box_b).height > 0.5]
    return problems + _misread_labels(figure)


def _distance(box, point) -> float:
    x, y = point
    return float(np.hypot(max(box.x0 - x, 0, x - box.x1), max(box.y0 - y, 0, y - box.y1)))


def _cross(a, b, c, d) -> bool:
    """Whether segments ab and cd cross (orientation test; touching ends do not count)."""
    def side(p, q, r):
        return np.sign((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))
    return side(a, b, c) * side(a, b, d) < 0 and side(c, d, a) * side(c, d, b) < 0


def _misread_labels(figure) -> list[str]:
    """Labels a reader would pair with the wrong point: one without a leader nearer another labelled point than
    its own, or two leaders crossing (a leader runs from its label's centre to its point)."""
    renderer = figure.canvas.get_renderer()
    problems = []
    for index, ax in enumerate(figure.axes):
        labels = [(text.get_text(), Text.get_window_extent(text, renderer), ax.transData.transform(text.xy),
                   text.arrow_patch is not None) for text in ax.texts]
        for name, box, point, leader in labels:
            if not leader:
                problems += [f"axes {index} label {name!r} is nearer {other!r}'s point than its own"
                             for other, _, elsewhere, _ in labels
                             if other != name and _distance(box, elsewhere) < _distance(box, point)]
        leaders = [(name, ((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2), point)
                   for name, box, point, leader in labels if leader]
        problems += [f"axes {index} leaders of {a!r} and {b!r} cross" for (a, *ab), (b, *cd) in combinations(leaders, 2)
                     if _cross(*ab, *cd)]
    return problems


def _check_report(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    figure = report_figure(report)
    try:
        assert len(figure.axes) == (2 if report["latency"] else 1)
        assert _layout_problems(figure) == []
    finally:
        plt.close(figure)


def test_the_checker_finds_a_legend_drawn_over_the_next_panel():
    """The layout ``training.fit`` drew before: per-panel legends outside the axes of a plain two-panel figure."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 4))
    left.plot([0, 1], [0, 1], label="a curve with a rather long legend entry")
    left.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    right.plot([0, 1], [0, 1])
    try:
        assert any("legend overlaps" in problem for problem in _layout_problems(figure))
    finally:
        plt.close(figure)


def test_the_checker_finds_labels_swapped_between_neighbours():
    """Two labels each drawn beside the other's point, as the RouterBench figure had them before (issue 32)."""
    figure, ax = plt.subplots(figsize=(4, 3))
    ax.set(xlim=(0, 10), ylim=(0, 10))
    ax.annotate("first", (2, 5), textcoords="offset points", xytext=(60, 0))  # lands beside 'second'
    ax.annotate("second", (4.5, 5), textcoords="offset points", xytext=(-70, -20))
    ax.annotate("third", (8, 2), textcoords="offset points", xytext=(-60, 60), arrowprops={"arrowstyle": "-"})
    ax.annotate("fourth", (2, 2), textcoords="offset points", xytext=(60, 60), arrowprops={"arrowstyle": "-"})
    try:
        problems = _misread_labels(figure)
        assert "axes 0 label 'second' is nearer 'first''s point than its own" in problems, problems
        assert "axes 0 leaders of 'third' and 'fourth' cross" in problems, problems
    finally:
        plt.close(figure)


def test_the_shared_fit_figure_has_no_overlaps(fitted_artifact):
    _check_report(fitted_artifact[1])


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The README's main job exactly (``python -m training.fit``, defaults): its report folder."""
    folder = tmp_path_factory.mktemp("default_run")
    assert main(["--out", str(folder / "router.joblib"), "--report", str(folder / "report"), "--quiet"]) == 0
    return folder / "report"


@pytest.mark.slow
def test_the_default_run_figure_has_no_overlaps(default_run):
    """The default run's figure, with its two panels."""
    _check_report(default_run)


@pytest.mark.slow
def test_the_default_run_keeps_cascade_routing_at_most_budgets(default_run):
    """The quick start shows what the product is for (issue 32): at most of its budgets the fit keeps cascade
    routing deeper than one model (depth 1 is routing), over routing, the hull and single models."""
    report = json.loads((default_run / "report.json").read_text())
    chosen = [row["chosen"] for row in report["budgets"]]
    deep = [name for name in chosen if name.startswith("cascade_routing depth ") and int(name.split()[-1]) >= 2]
    assert len(deep) > len(chosen) / 2, chosen
    assert report["auc"]["cascade_routing"] > report["auc"]["linear"], report["auc"]


@pytest.mark.slow
def test_a_routerbench_fit_figure_has_no_overlaps(routerbench_subset, tmp_path):
    data = routerbench_subset / "routerbench_subset.parquet"
    assert main(["--data", str(data), "--estimator", "linear", "--budget", "0.0002", "0.001",
                 "--out", str(tmp_path / "router.joblib"), "--report", str(tmp_path / "report"), "--quiet"]) == 0
    _check_report(tmp_path / "report")
