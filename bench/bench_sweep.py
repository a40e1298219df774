"""Sweep cost on this machine: wall time, trials per hour, and the fixed cost of a trial.

    python bench/bench_sweep.py [--trials 4] [--epochs 2] [--steps 8]

Runs ``tune_spaces/matching_costs.yaml`` over ``configs/shapes_tiny.yaml`` with
a tiny budget per trial (``--epochs`` x ``--steps`` optimiser steps, 2 Ray
workers, one trial at a time, FIFO so every trial runs its whole budget), in a
temporary folder. For each trial it compares the trial's wall time (Tune's
``time_total_s``) with its training window (first to last step logged in its
MLflow run): the difference is what starting a trial costs (Ray Train's worker
group, process group, model build, datasets, the first evaluation...).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps per epoch")
    args = parser.parse_args()
    os.chdir(ROOT)

    from mlflow.tracking import MlflowClient

    from detr_ray.config import load_config
    from detr_ray.tune.options import SweepOptions
    from detr_ray.tune.space import load_space
    from detr_ray.tune.sweep import run_sweep

    with tempfile.TemporaryDirectory() as storage:
        base = load_config(
            "configs/shapes_tiny.yaml",
            [
                f"train.epochs={args.epochs}",
                f"train.max_steps_per_epoch={args.steps}",
                "train.lr_drop_epochs=[]",
                "tracking.log_images=0",
                f"run.storage_path={storage}",
                "train.log_every=1",
            ],
        )
        space = load_space("tune_spaces/matching_costs.yaml", base.to_dict())
        options = SweepOptions(
            name="bench", num_samples=args.trials, max_concurrent=1, scheduler="fifo", seed=0
        )
        start = time.perf_counter()
        outcome = run_sweep(base, space, options)
        wall = time.perf_counter() - start
        client = MlflowClient(outcome.tracking_uri)
        fixed = []
        for row in outcome.rows:
            history = client.get_metric_history(row["mlflow_run_id"], "loss")
            stamps = sorted(m.timestamp for m in history)
            training = (stamps[-1] - stamps[0]) / 1000 if len(stamps) > 1 else 0.0
            total = _trial_seconds(outcome.sweep_dir, row["trial"])
            fixed.append(total - training)
            print(
                f"trial {row['trial']}: {total:6.1f} s in the trial, {training:6.1f} s "
                f"between its first and last logged step",
                flush=True,
            )
    print(
        f"\n{len(outcome.rows)} trials of {args.epochs} x {args.steps} steps: sweep wall time "
        f"{wall:.0f} s, {3600 * len(outcome.rows) / wall:.0f} trials/hour"
    )
    print(
        f"fixed cost of a trial (trial time - training window): median "
        f"{statistics.median(fixed):.1f} s"
    )


def _trial_seconds(sweep_dir: Path, trial_id: str) -> float:
    import json

    (result_file,) = [p for p in sweep_dir.glob(f"*{trial_id}*/result.json")]
    last = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()][-1]
    return float(last["time_total_s"])


if __name__ == "__main__":
    main()
