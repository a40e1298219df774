"""What drawing the per-decoder-layer loss plot costs as a run grows.

Before (until the code-health change): at every report, rank 0 read the whole
history of every plotted loss key back from MLflow (``get_metric_history``)
and drew every point, so a report's cost grew with the run and the run's total
with its square. After: the tracker keeps the series in memory as it logs
them and draws at most ``detr_ray.tracking.plots.MAX_PLOT_POINTS`` points per line.

The script logs ``N`` points per key (18 keys: 6 decoder layers x 3 terms, as
``detr_r50``) into a local sqlite store, then times one report's plot both
ways for several ``N``, fits the per-point cost, and extrapolates to the
official 500-epoch COCO recipe (``configs/coco_detr_r50.yaml``).

    .venv/bin/python bench/bench_loss_plot.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow.entities import Metric  # noqa: E402

from detr_ray.criterion.loss_keys import keys_by_term  # noqa: E402
from detr_ray.tracking.runs import RunTracker  # noqa: E402
from detr_ray.tracking.store import resolve_tracking_uri  # noqa: E402

LAYERS = 6


def old_plot(tracker: RunTracker) -> None:
    """The earlier implementation: read every point back, draw every point."""
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, keys in zip(axes, tracker.loss_series.values()):
        for key in keys:
            history = sorted(
                (m.step, m.value) for m in tracker.client.get_metric_history(tracker.run_id, key)
            )
            steps, values = zip(*history)
            ax.plot(steps, values, linewidth=1.2)
    figure.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        figure.savefig(Path(tmp) / "plot.png", dpi=100)
    plt.close(figure)


def new_plot(tracker: RunTracker) -> None:
    """The current drawing (without the artifact upload, which both pay alike)."""
    tracker.log_image = lambda figure, name: figure.savefig(  # type: ignore[method-assign]
        Path(tempfile.mkdtemp()) / "plot.png", dpi=100
    )
    tracker.log_loss_plot(force=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", default="1000,4000,16000", help="history lengths per key")
    args = parser.parse_args()
    series = keys_by_term(LAYERS)
    keys = [k for ks in series.values() for k in ks]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp)
        tracker = RunTracker(
            resolve_tracking_uri(None, storage), "bench", "plot", storage / "r", loss_series=series
        )
        logged = 0
        for target in [int(p) for p in args.points.split(",")]:
            batch = [
                Metric(key, 1.0 / (step + 1), 0, step)
                for step in range(logged, target)
                for key in keys
            ]
            for start in range(0, len(batch), 1000):
                tracker.client.log_batch(tracker.run_id, metrics=batch[start : start + 1000])
            for step in range(logged, target):  # what log_metrics keeps in memory
                for key in keys:
                    tracker._history[key][0].append(step)
                    tracker._history[key][1].append(1.0 / (step + 1))
            logged = target
            started = time.perf_counter()
            old_plot(tracker)
            old = time.perf_counter() - started
            started = time.perf_counter()
            new_plot(tracker)
            new = time.perf_counter() - started
            rows.append((target, old, new))
            print(
                f"N={target:>6} points/key: before {old:7.3f} s  after {new:6.3f} s  "
                f"ratio {old / new:5.1f}x",
                flush=True,
            )

    (n0, old0, new0), (n1, old1, new1) = rows[0], rows[-1]
    per_point = (old1 - old0) / (n1 - n0)  # seconds per point per key-set, the growing part
    fixed = old0 - per_point * n0
    # The official recipe: 118,287 images, 8 GPUs x 2 per step, 500 epochs,
    # log_every 50, a report every epoch and every 2,000 steps.
    steps_per_epoch = -(-118_287 // 16)
    total_steps = 500 * steps_per_epoch
    final_points = total_steps // 50
    reports_per_epoch = 1 + steps_per_epoch // 2000
    reports = 500 * reports_per_epoch
    # Report i sees about i / reports of the final history: the sum is reports * N_final / 2.
    before = reports * fixed + per_point * final_points * reports / 2
    after = reports * max(new0, new1)
    print(f"\nper report, before: {fixed:.3f} s + {per_point * 1e6:.1f} us per logged point/key")
    print(
        f"COCO 500 epochs: {total_steps:,} steps, {final_points:,} points per key at the end, "
        f"{reports:,} reports"
    )
    print(f"  plotting before: {before / 3600:.1f} h of rank 0's time (all workers wait)")
    print(f"  plotting after:  {after / 3600:.2f} h  ({before / after:.0f}x less)")


if __name__ == "__main__":
    main()
