"""Figures of neuron importance and of a run, written as PNG files.

- :func:`plot_lambda_by_layer`: median λ per layer for each component (the paper's Figure 6);
- :func:`plot_persistence_diagram`: one neuron's H0 persistence diagram (the paper's Figure 5);
- :func:`plot_lambda_distributions`: λ's distribution per layer, one panel per component.

Each ``plot_*`` function draws its figure with the matching ``*_figure`` function, which returns the
matplotlib :class:`~matplotlib.figure.Figure` unsaved (to restyle or embed it), and writes it with
:func:`save_png`. The report's own figures (parameters per layer, training curves) are built here too.
Figures are drawn on matplotlib's Agg canvas directly, so no pyplot state or GUI backend is
involved, and each file is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .._io import atomic_open
from ..activations import Activations
from ..importance import ImportanceTable
from ..kernel import h0_deaths
from ..models.adapters import COMPONENTS, check_component

__all__ = [
    "lambda_by_layer_figure",
    "lambda_distributions_figure",
    "parameters_figure",
    "persistence_figure",
    "plot_lambda_by_layer",
    "plot_lambda_distributions",
    "plot_persistence_diagram",
    "save_png",
    "training_figure",
]

_STATISTICS = ("median", "mean", "p30", "p50", "p70")


def save_png(figure: Figure, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``figure`` to ``path`` (a ``.png``) atomically; an existing file only with ``overwrite``."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figures are PNG files; expected a path ending in .png, got {os.fspath(path)!r}")
    FigureCanvasAgg(figure)
    with atomic_open(path, "wb", overwrite=overwrite) as f:
        figure.savefig(f, format="png", dpi=150, bbox_inches="tight")
    return path


def _log_axis(ax, values: np.ndarray) -> None:
    """A logarithmic λ axis that still shows λ = 0 (a constant neuron): symlog, linear only below the
    smallest percent of the positive values."""
    positive = values[values > 0]
    if positive.size:
        ax.set_yscale("symlog", linthresh=float(np.quantile(positive, 0.01)))
        # Limits set before (by ticks or a box plot) were margins of a linear axis, a sliver of a decade.
        ax.autoscale(axis="y")


def _check_not_empty(table: ImportanceTable) -> None:
    if len(table.neurons) == 0:
        raise ValueError("the importance table is empty: there is no λ to plot")


def _layer_ticks(ax, layers: list[int], positions) -> None:
    """One tick per layer, labelled; past 12 layers every other label only, so that they stay apart, counted back
    from the last layer so that it is labelled."""
    step = 1 if len(layers) <= 12 else 2
    last = len(layers) - 1
    ax.set_xticks(list(positions), [str(layer) if (last - i) % step == 0 else "" for i, layer in enumerate(layers)])


def literal(text: str) -> str:
    """``text`` as matplotlib shows it: a ``$`` in a path or a name is a dollar sign, not the start of math."""
    return text.replace("$", r"\$")


def _title(table: ImportanceTable, what: str) -> str:
    model = table.settings.get("model")  # a table of a model object has no name: none is made up
    token = table.settings.get("token", "cls")
    points = table.settings.get("n_points")
    about = [literal(str(model))] if model else []
    return f"{what}\n" + ", ".join([*about, f"token={token}", *([f"{points} points"] if points else [])])


def lambda_by_layer_figure(table: ImportanceTable, *, statistic: str = "median", log: bool = False) -> Figure:
    """The figure of :func:`plot_lambda_by_layer`, unsaved."""
    if statistic not in _STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; expected one of {', '.join(_STATISTICS)}")
    _check_not_empty(table)
    stats = table.stats()
    figure = Figure(figsize=(6.4, 4.2))
    ax = figure.add_subplot()
    for component in table.components:
        rows = stats[stats["component"] == component]
        ax.plot(rows["layer"], rows[statistic], marker="o", label=component)
    _layer_ticks(ax, table.layers, table.layers)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{statistic} λ")
    if log:
        _log_axis(ax, stats[statistic].to_numpy())
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the lines, never on them
    ax.set_title(_title(table, f"{statistic.capitalize()} λ per layer"), fontsize="medium")
    return figure


def plot_lambda_by_layer(
    table: ImportanceTable,
    path: str | os.PathLike,
    *,
    statistic: str = "median",
    log: bool = False,
    overwrite: bool = False,
) -> Path:
    """One line per component: a statistic of λ over each layer's neurons (the paper reads medians).

    Parameters
    ----------
    table : ImportanceTable
    path : str or path-like
        Destination ``.png``.
    statistic : {"median", "mean", "p30", "p50", "p70"}
        Column of :meth:`ImportanceTable.stats` to plot.
    log : bool
        Logarithmic λ axis (symmetric-log near 0, so that zero values are drawn).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        On an unknown statistic, an empty table or a path that is not a ``.png``.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    return save_png(lambda_by_layer_figure(table, statistic=statistic, log=log), path, overwrite)


def persistence_figure(points, layer: int, component: str, neuron: int) -> Figure:
    """The figure of :func:`plot_persistence_diagram`, unsaved, from the neuron's outputs ``points``
    (one per input, or an ``(n_points, dim)`` cloud), labelled with its layer (from 1), component and
    index."""
    points = np.asarray(points)
    cloud = points.reshape(1, len(points), -1)
    deaths = np.asarray(h0_deaths(cloud)[0], dtype=np.float64)
    lam = float(deaths.max()) if deaths.size else 0.0
    top = lam * 1.15 if lam > 0 else 1.0

    figure = Figure(figsize=(4.8, 4.6))
    ax = figure.add_subplot()
    ax.plot([0, top], [0, top], color="grey", linewidth=0.8)
    ax.scatter(np.zeros_like(deaths), deaths, s=14, label=f"finite deaths ({deaths.size})")
    ax.scatter([0], [top], marker="^", color="black", label="infinite bar")
    ax.axhline(lam, color="C3", linestyle="--", linewidth=1, label=f"λ = {lam:.4g}")
    ax.set_xlim(-0.05 * top, top)
    ax.set_ylim(-0.02 * top, top * 1.05)
    ax.set_xlabel("birth")
    ax.set_ylabel("death")
    ax.ticklabel_format(style="sci", scilimits=(-2, 3))
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(f"H0 persistence diagram\nlayer {layer} {literal(component)}, neuron {neuron}", fontsize="medium")
    return figure


def plot_persistence_diagram(
    acts: Activations,
    layer: int,
    component: str,
    neuron: int,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """The H0 persistence diagram of one neuron's outputs.

    Every point is born at 0 and dies at an edge length of the minimum spanning tree; the
    highest finite death is the neuron's λ (marked by a dashed line). The infinite bar is drawn
    at the top edge.

    Parameters
    ----------
    acts : Activations
        The neuron outputs (same points as the table's λ).
    layer : int
        Counted from 1.
    component : str
        One of :data:`~obce.models.COMPONENTS`.
    neuron : int
        Index within the layer's component output.
    path : str or path-like
        Destination ``.png``.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        On an unknown layer, component or neuron, or a path that is not a ``.png``.
    """
    values = acts.get(layer, check_component(component))
    if isinstance(neuron, bool) or not isinstance(neuron, (int, np.integer)) or not 0 <= neuron < values.shape[1]:
        raise ValueError(f"neuron must be an int in 0..{values.shape[1] - 1}, got {neuron!r}")
    points = values[:, neuron].cpu().numpy()
    return save_png(persistence_figure(points, layer, component, int(neuron)), path, overwrite)


def lambda_distributions_figure(
    table: ImportanceTable, *, log: bool = False, cutoffs: Mapping[tuple[int, str], float] | None = None
) -> Figure:
    """The figure of :func:`plot_lambda_distributions`, unsaved."""
    _check_not_empty(table)
    components = table.components
    columns = min(3, len(components))
    rows = -(-len(components) // columns)
    figure = Figure(figsize=(4.2 * columns, 3.4 * rows), layout="constrained")
    for i, component in enumerate(components):
        ax = figure.add_subplot(rows, columns, i + 1)
        layers = [layer for layer in table.layers if component in _components_of(table, layer)]
        values = [table.lam(layer, component) for layer in layers]
        ax.boxplot(values, showfliers=True, flierprops={"markersize": 2})
        _layer_ticks(ax, layers, range(1, len(layers) + 1))
        marks = [
            (i, cutoffs[layer, component]) for i, layer in enumerate(layers, 1) if (layer, component) in (cutoffs or {})
        ]
        if marks:
            x, y = np.array(marks).T
            ax.hlines(y, x - 0.4, x + 0.4, colors="C3", linewidth=1.5, label="cut-off", zorder=3)
            ax.legend(fontsize="small")
        ax.set_title(component, fontsize="medium")
        ax.set_xlabel("layer")
        ax.set_ylabel("λ")
        if log:
            _log_axis(ax, np.concatenate(values))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3, axis="y")
    figure.suptitle(_title(table, "λ per layer and component"), fontsize="medium")
    return figure


def plot_lambda_distributions(
    table: ImportanceTable,
    path: str | os.PathLike,
    *,
    log: bool = False,
    cutoffs: Mapping[tuple[int, str], float] | None = None,
    overwrite: bool = False,
) -> Path:
    """λ's distribution over each layer's neurons, one panel per component (box plots).

    Parameters
    ----------
    table : ImportanceTable
    path : str or path-like
        Destination ``.png``.
    log : bool
        Logarithmic λ axis.
    cutoffs : mapping of (int, str) to float, optional
        λ thresholds to mark, keyed by (layer counted from 1, component), e.g. a pruning plan's
        percentile cut-offs; each is drawn as a red line across its layer's box.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        On an empty table or a path that is not a ``.png``.
    """
    return save_png(lambda_distributions_figure(table, log=log, cutoffs=cutoffs), path, overwrite)


def _components_of(table: ImportanceTable, layer: int) -> set[str]:
    return set(table.neurons.loc[table.neurons["layer"] == layer, "component"])


def parameters_figure(parameters: pd.DataFrame) -> Figure:
    """Stacked bars of each layer's parameters by component, original (outline) and compressed (filled), from a run
    folder's ``parameters.csv``."""
    components = [*COMPONENTS, "other"]
    layers = sorted(parameters["layer"].unique())
    figure = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = figure.add_subplot()
    x = np.arange(len(layers))
    bottom_before, bottom_after = np.zeros(len(layers)), np.zeros(len(layers))
    for i, component in enumerate(components):
        rows = parameters[parameters["component"] == component].set_index("layer").loc[layers]
        before, after = rows["params_original"].to_numpy(float), rows["params_compressed"].to_numpy(float)
        colour = f"C{i}"
        ax.bar(x, before, 0.7, bottom=bottom_before, fill=False, edgecolor=colour, linewidth=0.8)
        ax.bar(x, after, 0.7, bottom=bottom_after, color=colour, label=component)
        bottom_before += before
        bottom_after += after
    _layer_ticks(ax, [int(layer) for layer in layers], x)
    ax.set_xlabel("layer")
    ax.set_ylabel("parameters")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 3))
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("Parameters per layer: original (outline), compressed (filled)", fontsize="medium")
    return figure


def training_figure(logs: Mapping[str, list[dict]], dev_metric: str) -> Figure:
    """Training loss and the dev score by step, one line per fine-tuned model (label -> its logged entries)."""
    figure = Figure(figsize=(8.4, 3.2), layout="constrained")
    loss_ax, dev_ax = figure.subplots(1, 2)
    handles = {}
    for i, (label, log) in enumerate(logs.items()):
        # Dev scores ×100, as in the report's tables.
        for ax, key, scale, style in ((loss_ax, "loss", 1, "-"), (dev_ax, dev_metric, 100, "o-")):
            points = [(entry["step"], scale * entry[key]) for entry in log if key in entry]
            if points:
                (line,) = ax.plot(*zip(*points, strict=True), style, color=f"C{i}", markersize=4)
                handles.setdefault(literal(label), line)
    for ax, title in ((loss_ax, "training loss"), (dev_ax, f"dev {dev_metric.removeprefix('eval_')} ×100")):
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
    # Labels passed with their lines: matplotlib drops a line's own label that starts with "_" (a folder's name may).
    loss_ax.legend(list(handles.values()), list(handles), fontsize="small")
    return figure
