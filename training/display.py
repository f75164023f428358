"""Quality-cost plot of strategies against single models.

:class:`QualityCostDisplay` follows scikit-learn's Display convention (as in
``RocCurveDisplay``): the constructor stores the data, :meth:`~QualityCostDisplay.plot`
draws it on a given or new axes and keeps the artists as trailing-underscore
attributes, and :meth:`~QualityCostDisplay.from_curves` does both. Matplotlib is
an optional extra, imported only when drawing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from training.metrics import upper_hull

if TYPE_CHECKING:
    from matplotlib.axes import Axes

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
        Also draw the frontier of the single models (the "linear" baseline
        of the AUC: their upper hull, extended flat to the most expensive
        model). Ignored without ``single_models``.
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
        none overlaps another (the legend sits outside the axes).

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
        labelled: list[tuple[str, float, float]] = []
        if self.single_models:
            self._plot_single_models(ax)
            labelled += zip(self.single_models, *_as_points(_transpose(self.single_models.values()), "single_models"))
        if self.fitted:
            costs, qualities = _as_points(_transpose(self.fitted.values(), "fitted"), "fitted")
            self.fitted_ = ax.scatter(costs, qualities, marker="*", s=90, color="crimson", zorder=4,
                                      label="router at the fitted budgets")
            labelled += zip(self.fitted, costs, qualities)
        if log_cost:
            ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel=ylabel)
        if title is not None:
            ax.set_title(title)
        # Outside the axes: a legend inside would hide whatever point lies under it.
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small")
        self.labels_ = _place_labels(ax, labelled)
        self.ax_, self.figure_ = ax, ax.figure
        return self

    def _plot_single_models(self, ax: Axes) -> None:
        costs, qualities = _as_points(_transpose(self.single_models.values()), "single_models")
        self.single_models_ = ax.scatter(costs, qualities, marker="x", color="black", zorder=3, label="single models")
        if self.hull:
            hull = upper_hull(costs, qualities)
            (self.hull_line_,) = ax.plot(
                np.append(costs[hull], costs.max()),
                np.append(qualities[hull], qualities[hull[-1]]),
                linestyle="--",
                color="grey",
                label="linear (single-model hull)",
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


#: Offsets (points) tried in turn for a label, right of its point first, then further up and down.
_LABEL_OFFSETS = tuple((dx, dy) for dy in (-10, 4, -22, 16, -34, 28, -46, 40) for dx in (5, -5))


def _place_labels(ax: Axes, points: list[tuple[str, float, float]]) -> list[Any]:
    """Annotate each point at the first offset whose text stays in the axes and overlaps no earlier label and no point.

    Greedy, cheapest offsets first, points from left to right: enough for
    the handful of models and budgets of a quality-cost plot. A label that
    finds no free offset keeps the last one tried.
    """
    if not points:
        return []
    renderer = ax.figure.canvas.get_renderer()
    ax.figure.canvas.draw()  # settle limits and scales, so that extents are final
    markers = [ax.transData.transform((cost, quality)) for _, cost, quality in points]
    inside = ax.get_window_extent(renderer)
    placed, boxes = [], []
    for name, cost, quality in sorted(points, key=lambda p: (p[1], -p[2])):
        for dx, dy in _LABEL_OFFSETS:
            label = ax.annotate(name, (cost, quality), textcoords="offset points", xytext=(dx, dy),
                                fontsize="small", ha="left" if dx > 0 else "right")
            box = label.get_window_extent(renderer).expanded(1.05, 1.1)
            free = not any(box.overlaps(other) for other in boxes) and not any(box.contains(*m) for m in markers)
            if free and inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1):
                break
            label.remove()
        else:
            ax.add_artist(label)
        placed.append(label)
        boxes.append(box)
    return placed


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
