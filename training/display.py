"""Quality-cost plot of strategies against single models.

:class:`QualityCostDisplay` follows scikit-learn's Display convention (as in
``RocCurveDisplay``): the constructor stores the data, :meth:`~QualityCostDisplay.plot`
draws it on a given or new axes and keeps the artists as trailing-underscore
attributes, and :meth:`~QualityCostDisplay.from_curves` does both. Matplotlib is
an optional extra, imported only when drawing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.metrics import upper_hull

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.collections import PathCollection
    from matplotlib.lines import Line2D
    from matplotlib.path import Path as MplPath
    from matplotlib.text import Annotation
    from matplotlib.transforms import Bbox

__all__ = ["QualityCostDisplay"]

Curve = tuple[Any, Any]


class QualityCostDisplay:
    """Mean quality against mean cost, one line per strategy.

    Parameters
    ----------
    curves : dict of str to (costs, qualities)
        Per strategy, the mean cost and mean quality it reached at each budget
        (1-D arrays of equal length).
    single_models : dict of str to (cost, quality), optional
        Mean cost and quality of always running each model; drawn as labelled
        markers.
    hull : bool, default=True
        Also draw the frontier of the single models (the AUC tables' ``hull``
        baseline, ``linear`` in ``report.json``: their upper hull, extended
        flat to the most expensive model). Ignored without ``single_models``.
    fitted : dict of str to (cost, quality), optional
        Points to mark and label on top of the curves, e.g. the router at
        each budget it was fitted for (``"budget 0.001"``: its test cost and quality).

    Attributes
    ----------
    ax_ : matplotlib.axes.Axes
        Axes the plot was drawn on.
    figure_ : matplotlib.figure.Figure
        Figure holding ``ax_``.
    lines_ : dict of str to matplotlib.lines.Line2D
        One line per curve, keyed like ``curves``.
    single_models_ : matplotlib.collections.PathCollection or None
        Markers of the single models.
    hull_line_ : matplotlib.lines.Line2D or None
        The single models' frontier.
    fitted_ : matplotlib.collections.PathCollection or None
        Markers of the ``fitted`` points.
    labels_ : list of matplotlib.text.Annotation
        The labels of the single models and fitted points, placed so that
        none overlaps another label, a marker or a drawn line (the legend sits
        outside the axes). :meth:`place_labels` places them again after the
        figure's layout changed.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> display = QualityCostDisplay.from_curves(
    ...     {"routing": ([0.001, 0.002, 0.004], [0.6, 0.75, 0.8])},
    ...     {"small": (0.001, 0.55), "large": (0.005, 0.8)},
    ...     log_cost=True,
    ... )
    >>> sorted(display.lines_)
    ['routing']
    """

    # Artists of the last plot; ``None`` where that part was not drawn.
    single_models_: PathCollection | None
    hull_line_: Line2D | None
    fitted_: PathCollection | None
    labels_: list[Annotation]

    def __init__(
        self,
        curves: Mapping[str, Curve],
        single_models: Mapping[str, tuple[float, float]] | None = None,
        *,
        hull: bool = True,
        fitted: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        self.curves = curves
        self.single_models = single_models
        self.hull = hull
        self.fitted = fitted

    @classmethod
    def from_curves(
        cls,
        curves: Mapping[str, Curve],
        single_models: Mapping[str, tuple[float, float]] | None = None,
        *,
        hull: bool = True,
        fitted: Mapping[str, tuple[float, float]] | None = None,
        ax: Axes | None = None,
        **plot_kwargs: Any,
    ) -> QualityCostDisplay:
        """Build the display and plot it.

        Parameters
        ----------
        curves, single_models, hull, fitted
            See the class.
        ax : matplotlib.axes.Axes, optional
            Axes to draw on; a new figure by default.
        **plot_kwargs
            Passed to :meth:`plot`.

        Returns
        -------
        QualityCostDisplay
            The plotted display.
        """
        return cls(curves, single_models, hull=hull, fitted=fitted).plot(ax=ax, **plot_kwargs)

    def plot(
        self,
        ax: Axes | None = None,
        *,
        log_cost: bool = False,
        title: str | None = None,
        xlabel: str = "Mean cost per query (USD)",
        ylabel: str = "Mean quality",
        **line_kwargs: Any,
    ) -> QualityCostDisplay:
        """Draw the curves, the single models and their frontier.

        Each curve is drawn through its points sorted by cost, as measured
        (without the running maximum the AUC applies), so a strategy that
        spends more for less stays visible.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Axes to draw on; a new figure by default.
        log_cost : bool, default=False
            Log-scale the cost axis; model costs often span orders of
            magnitude. Lines still join the points straight on screen, so
            the frontier's segments (straight in linear cost) look straight
            in log cost too: read areas off a linear axis.
        title : str, optional
            Axes title.
        xlabel, ylabel : str
            Axis labels.
        **line_kwargs
            Passed to ``Axes.plot`` for every curve (for example
            ``linewidth``); they override the default ``marker="o"``.

        Returns
        -------
        QualityCostDisplay
            ``self``, with ``ax_``, ``figure_``, ``lines_``,
            ``single_models_`` and ``hull_line_`` set.

        Raises
        ------
        ImportError
            If matplotlib is not installed.
        """
        plt = _pyplot()
        if ax is None:
            _, ax = plt.subplots()
        style = {"marker": "o", "markersize": 3, **line_kwargs}
        self.lines_ = {}
        for name, curve in self.curves.items():
            costs, qualities = _as_points(curve, f"curves[{name!r}]")
            order = np.argsort(costs, kind="stable")
            (self.lines_[name],) = ax.plot(costs[order], qualities[order], label=name, **style)
        self.single_models_ = self.hull_line_ = self.fitted_ = None
        self._labelled: list[tuple[str, float, float]] = []
        if self.single_models:
            self._plot_single_models(ax, self.single_models)
            self._labelled += zip(self.single_models,
                                  *_as_points(_transpose(self.single_models.values()), "single_models"), strict=True)
        if self.fitted:
            costs, qualities = _as_points(_transpose(self.fitted.values(), "fitted"), "fitted")
            self.fitted_ = ax.scatter(costs, qualities, marker="*", s=90, color="crimson", zorder=4,
                                      label="router at the fitted budgets")
            self._labelled += zip(self.fitted, costs, qualities, strict=True)
        if log_cost:
            ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel=ylabel)
        if title is not None:
            ax.set_title(title)
        # Outside the axes: a legend inside would hide whatever point lies under it.
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small")
        self.ax_, self.figure_, self.labels_ = ax, ax.figure, []
        return self.place_labels()

    def place_labels(self) -> QualityCostDisplay:
        """Label the single models and fitted points where nothing else is drawn.

        :meth:`plot` calls it; call it again once the figure's layout is final
        (for example after plotting on the other axes of a figure with a
        layout engine, which moves and resizes this one), since the places
        are chosen from on-screen extents.

        Returns
        -------
        QualityCostDisplay
            ``self``, with ``labels_`` replaced.
        """
        for label in self.labels_:
            label.remove()
        self.labels_ = _place_labels(self.ax_, self._labelled)
        return self

    def _plot_single_models(self, ax: Axes, single_models: Mapping[str, tuple[float, float]]) -> None:
        costs, qualities = _as_points(_transpose(single_models.values()), "single_models")
        self.single_models_ = ax.scatter(costs, qualities, marker="x", color="black", zorder=3, label="single models")
        if self.hull:
            hull = upper_hull(costs, qualities)
            (self.hull_line_,) = ax.plot(
                np.append(costs[hull], costs.max()),
                np.append(qualities[hull], qualities[hull[-1]]),
                linestyle="--",
                color="grey",
                label="single-model hull",
            )


def _pyplot() -> Any:
    """Import ``matplotlib.pyplot``, saying how to install it if it is missing."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            'QualityCostDisplay.plot needs matplotlib, an optional extra: pip install "cascade-router[plot]"'
        ) from error
    return plt


#: Offsets (points) tried in turn for a label: right of its point first, then further up and down, then further
#: aside, so that a crowded point's label can move sideways rather than across the curve.
_LABEL_OFFSETS = tuple((dx, dy) for dy in (-10, 4, -22, 16, -34, 28, -46, 40, -58, 52) for dx in (5, -5)) + tuple(
    (dx, dy) for dx in (30, -30, 60, -60) for dy in (-10, 4, -22, 16, -34, 28))
#: Vertical offsets (points) up to which a label reads as its point's without a leader line.
_NEAR_OFFSET = 10
#: Weight of hiding a label or a point against crossing one line, when no place is free.
_HIDES = 100
#: Weight of a label a reader may pair with the wrong point (see :func:`_place_labels`) against crossing a line.
_MISLEADS = 10
#: A label less than this many pixels further from its own point than from another is ambiguous.
_AMBIGUOUS_PX = 8.0
#: Most passes moving each label to its best place given all the others, after the greedy first one.
_SWEEPS = 5


def _leader(box: Bbox, marker: Any) -> MplPath:
    """The leader line from a label's box to its point, as drawn (from the box's centre; the part outside it)."""
    from matplotlib.path import Path as MplPath

    (x0, y0), (x1, y1) = box.get_points()
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    dx, dy = marker[0] - centre[0], marker[1] - centre[1]
    # leave the box where the line from its centre does: scale to the nearer of the two edges it crosses
    half_w, half_h = (x1 - x0) / 2, (y1 - y0) / 2
    t = min(half_w / abs(dx) if dx else float("inf"), half_h / abs(dy) if dy else float("inf"), 1.0)
    return MplPath([(centre[0] + t * dx, centre[1] + t * dy), tuple(marker)])


def _place_labels(ax: Axes, points: list[tuple[str, float, float]]) -> list[Annotation]:
    """Annotate each point where its text and leader stay clear of every label, leader, point and line.

    Greedy, cheapest offsets first, points from left to right, then
    passes (at most :data:`_SWEEPS`, until none moves) that move each label to its best place given all
    the others (a label placed early cannot see the leaders of later ones):
    enough for the handful of models and budgets of a quality-cost plot.
    Where no place is free, a label takes the one hiding the fewest labels and
    points, then misleading least (read as another point's: nearer another
    point than its own, or a leader crossing another leader, a label or a
    point), then crossing the fewest lines. Labels are left out of the layout
    (they sit inside the axes), so that placing them does not move the axes
    they were placed on.
    """
    if not points:
        return []
    renderer = ax.figure.canvas.get_renderer()  # type: ignore[attr-defined]  # Agg canvases (savefig's) have it
    ax.figure.canvas.draw()  # settle limits, scales and layout, so that extents are final
    points = sorted(points, key=lambda p: (p[1], -p[2]))
    markers = [ax.transData.transform((cost, quality)) for _, cost, quality in points]
    lines = [line.get_transform().transform_path(line.get_path()) for line in ax.get_lines()]
    inside = ax.get_window_extent(renderer)
    # every place each label may take: (offset, its box, its leader or None), inside the axes only
    options: list[list[tuple[tuple[int, int], Bbox, MplPath | None]]] = []
    for (name, cost, quality), marker in zip(points, markers, strict=True):
        mine = []
        for dx, dy in _LABEL_OFFSETS:
            label = _annotate(ax, name, (cost, quality), (dx, dy), leader=False)
            box = label.get_window_extent(renderer).expanded(1.05, 1.1)
            label.remove()
            if inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1):
                mine.append(((dx, dy), box, _leader(box, marker) if _needs_leader(dx, dy) else None))
        options.append(mine or [(_LABEL_OFFSETS[0], _annotate_box(ax, renderer, name, (cost, quality)), None)])

    def penalty(i: int, option: tuple[tuple[int, int], Bbox, MplPath | None], chosen: dict[int, int]) -> float:
        _, box, leader = option
        others = [options[j][k] for j, k in chosen.items() if j != i]
        other_markers = [m for j, m in enumerate(markers) if j != i]
        hides = sum(box.overlaps(b) for _, b, _ in others) + sum(box.contains(*m) for m in markers)
        own = _distance(box, markers[i])  # a leader says whose label it is; without one, nearness does
        misleads = 0 if leader is not None else sum(_distance(box, m) < own + _AMBIGUOUS_PX for m in other_markers)
        misleads += sum(line.intersects_bbox(box, filled=True) for _, _, line in others if line is not None)
        crosses = sum(path.intersects_bbox(box, filled=False) for path in lines)
        if leader is not None:
            misleads += (sum(leader.intersects_path(line, filled=False) for _, _, line in others if line is not None)
                         + sum(leader.intersects_bbox(b, filled=True) for _, b, _ in others)
                         + sum(leader.intersects_bbox(_around(m), filled=True) for m in other_markers))
            crosses += sum(leader.intersects_path(path, filled=False) for path in lines)
        return _HIDES * hides + _MISLEADS * misleads + crosses

    chosen: dict[int, int] = {}
    for sweep in range(1 + _SWEEPS):
        before = dict(chosen)
        for i in range(len(points)):
            costs = [penalty(i, option, chosen) for option in options[i]]
            # the first sweep takes the first free place; later ones the best (ties keep the cheaper offset)
            free = [k for k, c in enumerate(costs) if c == 0]
            chosen[i] = free[0] if sweep == 0 and free else min(range(len(costs)), key=costs.__getitem__)
        if chosen == before:
            break
    return [_annotate(ax, name, (cost, quality), options[i][chosen[i]][0],
                      leader=options[i][chosen[i]][2] is not None)
            for i, (name, cost, quality) in enumerate(points)]


def _annotate(ax: Axes, name: str, point: tuple[float, float], offset: tuple[int, int], *,
              leader: bool) -> Annotation:
    """A point's label at ``offset`` points from it; with a thin leader when it stands away from its point."""
    style: dict[str, Any] = {"arrowprops": {"arrowstyle": "-", "color": "grey", "linewidth": 0.6, "shrinkA": 0,
                                            "shrinkB": 3}} if leader else {}
    return ax.annotate(name, point, textcoords="offset points", xytext=offset, fontsize="small",
                       ha="left" if offset[0] > 0 else "right", in_layout=False, **style)


def _annotate_box(ax: Axes, renderer: Any, name: str, point: tuple[float, float]) -> Bbox:
    """The box of a label at the first offset, for a label that fits nowhere inside the axes."""
    label = _annotate(ax, name, point, _LABEL_OFFSETS[0], leader=False)
    box = label.get_window_extent(renderer)
    label.remove()
    return box


def _distance(box: Bbox, point: Any) -> float:
    """On-screen distance from a point to a box (0 inside it)."""
    x, y = point
    return float(np.hypot(max(box.x0 - x, 0.0, x - box.x1), max(box.y0 - y, 0.0, y - box.y1)))


def _around(point: Any, half: float = 5.0) -> Bbox:
    """The box a marker covers on screen (``half`` pixels each way)."""
    from matplotlib.transforms import Bbox

    x, y = point
    return Bbox([[x - half, y - half], [x + half, y + half]])


def _needs_leader(dx: float, dy: float) -> bool:
    """Whether a label this far from its point needs a leader line to be read as that point's."""
    return abs(dy) > _NEAR_OFFSET or abs(dx) > _NEAR_OFFSET


def _transpose(pairs: Any, name: str = "single_models") -> Curve:
    """``[(cost, quality), ...]`` to ``(costs, qualities)``, rejecting anything but pairs."""
    try:
        points = np.asarray(list(pairs), dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must map each name to a (cost, quality) pair") from error
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{name} must map each name to a (cost, quality) pair, got {points.shape}")
    return points[:, 0], points[:, 1]


def _as_points(curve: Curve, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return a ``(costs, qualities)`` pair as finite 1-D float64 arrays of equal length."""
    try:
        costs, qualities = (np.asarray(values, dtype=np.float64) for values in curve)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a (costs, qualities) pair of numeric arrays") from error
    if costs.ndim != 1 or costs.shape != qualities.shape:
        raise ValueError(
            f"{name} must be two 1-D arrays of equal length, got shapes {costs.shape} and {qualities.shape}"
        )
    if not (np.isfinite(costs).all() and np.isfinite(qualities).all()):
        raise ValueError(f"{name} must be finite")
    return costs, qualities


def report_figure(report: Mapping[str, Any]) -> Any:
    """Draw a ``training.fit`` report: quality against cost, and against latency when the data has it.

    The panels share one figure with a constrained layout, which makes room
    for each panel's legend beside it; the labels are placed once that
    layout is final, so that no label, legend or tick label lands on
    another.

    Parameters
    ----------
    report : mapping
        The report ``training.fit`` writes (``report.json``): ``strategy``,
        ``data``, ``curve``, ``budgets``, ``single_models`` and ``latency``.

    Returns
    -------
    matplotlib.figure.Figure
        The figure; the caller saves and closes it.
    """
    plt = _pyplot()
    curve, fitted, singles = report["curve"], report["budgets"], report["single_models"]
    panels = 2 if report["latency"] else 1
    figure, axes = plt.subplots(1, panels, figsize=(6.8 * panels, 4.8), squeeze=False, layout="constrained")
    strategy = report["strategy"]
    displays = [QualityCostDisplay.from_curves(
        {strategy: ([r["test_cost"] for r in curve], [r["test_quality"] for r in curve])},
        {s["model"]: (s["cost"], s["quality"]) for s in singles}, log_cost=True,
        fitted={_budget_label(r): (r["test_cost"], r["test_quality"]) for r in fitted}, ax=axes[0, 0],
        title=f"{strategy}, test split\n{Path(report['data']).name}")]  # a file's folders would not fit
    if report["latency"]:  # the same policies against what a caller waits for
        displays.append(QualityCostDisplay.from_curves(
            {strategy: ([r["test_latency"] for r in curve], [r["test_quality"] for r in curve])},
            {s["model"]: (s["latency"], s["quality"]) for s in singles}, hull=False,
            fitted={_budget_label(r): (r["test_latency"], r["test_quality"]) for r in fitted}, ax=axes[0, 1],
            xlabel="Mean latency per query (s)", title="the same policies\nquality vs mean latency"))
    figure.canvas.draw()
    figure.set_layout_engine("none")  # freeze the layout the labels are placed in
    for display in displays:
        display.place_labels()
    return figure


def _budget_label(row: Mapping[str, Any]) -> str:
    latency = "" if row["latency_budget"] is None else f", {row['latency_budget']:.3g} s"
    return f"budget {row['budget']:.3g}{latency}"
