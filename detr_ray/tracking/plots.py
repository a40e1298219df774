"""The two plots a run logs: every decoder layer's losses, and a sweep's metric by value.

Drawn from data in memory (a run's history is kept by its tracker as it is
logged; nothing is read back from the store). matplotlib only, no MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MAX_PLOT_POINTS = 2000  # per line: a long run's plot is thinned to this


def decoder_layer_losses(
    series: Mapping[str, Sequence[tuple[Sequence[int], Sequence[float]]]],
) -> Any:  # matplotlib Figure
    """One panel per loss term, one line per decoder layer (``series[term]`` holds
    ``(steps, values)`` of each layer, layer 0 first; the last is the last layer)."""
    plt = _pyplot()
    terms = list(series)
    figure, axes = plt.subplots(1, len(terms), figsize=(5 * len(terms), 4), squeeze=False)
    for ax, term in zip(axes[0], terms):
        layers = series[term]
        for layer, (steps, values) in enumerate(layers):
            steps, values = thin(steps, values, MAX_PLOT_POINTS)
            if steps:
                last = layer == len(layers) - 1
                label = f"layer {layer}" + (" (last)" if last else "")
                ax.plot(steps, values, label=label, linewidth=1.2)
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if axes[0][0].lines:  # nothing logged yet in a very short run
        axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    return figure


def metric_by_value(rows: list[dict], keys: list[str], metric: str) -> Any:  # matplotlib Figure
    """A sweep's trials: each trial's best ``metric`` against each swept key; trials
    stopped early are crosses."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for stopped in (False, True):
            shown = [
                (r[key], r[metric])
                for r in rows
                if r.get(metric) is not None and (r["status"] == "stopped early") == stopped
            ]
            if shown:
                xs, ys = zip(*shown)
                ax.scatter(
                    [_plottable(x) for x in xs],
                    ys,
                    marker="x" if stopped else "o",
                    label="stopped early" if stopped else "ran to the end",
                )
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    return figure


def close(figure: Any) -> None:
    _pyplot().close(figure)


def thin(steps: Sequence[int], values: Sequence[float], max_points: int) -> tuple[list, list]:
    """Every k-th point (and the last), so that at most about ``max_points`` remain."""
    stride = max(1, -(-len(steps) // max_points))
    if stride == 1:
        return list(steps), list(values)
    kept = list(range(0, len(steps), stride))
    if kept[-1] != len(steps) - 1:
        kept.append(len(steps) - 1)
    return [steps[i] for i in kept], [values[i] for i in kept]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plottable(value: Any) -> Any:
    return value if isinstance(value, (int, float)) else str(value)
