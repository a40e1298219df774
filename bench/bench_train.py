"""Training throughput: the same Engine loop with and without Ray, on 1 and 2 workers.

    python bench/bench_train.py [--config configs/shapes_tiny.yaml] [--steps 40] [--rounds 2]

All runs train the config's model on its data (no evaluation in the measured
window) with the config's batch size per worker, and measure images/s the way
training logs it (``images_per_s``: images of all workers over the wall time of
each ``log_every`` window, data loading included). The first window (warm-up,
process-group setup) is dropped; the median of the others is reported.

- ``no_ray``: :class:`detr_ray.train.engine.Engine` in this process, torch on 2 threads;
- ``ray_1``: ``detr-ray train`` with 1 worker x 2 CPUs (Ray gives it 2 threads);
- ``ray_1_nodash``: ``ray_1`` on a Ray started without its dashboard processes;
- ``no_ray_2``: the same loop in 2 plain processes x 1 thread, DDP over gloo
  (``torch.multiprocessing``; what ``ray_2`` runs, without Ray);
- ``ray_2``: 2 workers x 1 CPU (DDP over gloo; twice the images per step).

Printed ratios: ``ray_1 / no_ray`` and ``ray_2 / no_ray_2`` (Ray Train's
overhead on the same loop and threads) and ``ray_2 / ray_1`` (data-parallel
scaling on this machine). The runs alternate, ``--rounds`` times, so machine
noise hits all of them.

``--spare-core`` measures the setting of a GPU node instead, where the
training process leaves cores free for Ray's own processes: ``no_ray_1t``
(the loop in this process, torch on 1 thread) against ``ray_1t``
(``detr-ray train`` with 1 worker x 1 CPU, which Ray runs on 1 thread), on
this 2-core machine: one core is left to everything else.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOG_EVERY = 5


def overrides(steps: int, storage: str, name: str) -> list[str]:
    return [
        "train.epochs=1",
        f"train.max_steps_per_epoch={steps}",
        f"train.log_every={LOG_EVERY}",
        "train.eval_every=1000",
        "tracking.log_images=0",
        "data.val_max_images=1",
        f"run.storage_path={storage}",
        f"run.name={name}",
    ]


def median_rate(rates: list[float]) -> float:
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def run_no_ray(
    config_path: str, steps: int, storage: str, workers: int = 1, threads: int = 2
) -> float:
    """The loop without Ray: in this process, or (2 workers) in plain processes over gloo."""
    if workers == 1:
        return _no_ray_worker(0, 1, config_path, steps, storage, None, threads)
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_no_ray_worker, args=(workers, config_path, steps, storage, queue), nprocs=workers)
    return queue.get()


def _no_ray_worker(rank, workers, config_path, steps, storage, queue, threads=2) -> float:
    import torch

    from detr_ray.config import load_config
    from detr_ray.train.build import build_engine
    from detr_ray.train.prepare import prepare_run

    torch.set_num_threads(threads // workers)
    prepared = prepare_run(load_config(config_path, overrides(steps, storage, "no_ray")))
    config, label_map = prepared.config, prepared.label_map
    wrap = None
    if workers > 1:  # what Ray Train's prepare_model does on CPU, without Ray
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{storage}/pg", rank=rank, world_size=workers
        )

        def wrap(module):
            return torch.nn.parallel.DistributedDataParallel(module, forward_sync_buffers=False)

    engine = build_engine(config, label_map, wrap=wrap)  # as the Ray worker builds it
    rates: list[float] = []
    engine.train_epoch(on_log=lambda step: rates.append(step.metrics["images_per_s"]))
    if workers > 1:
        torch.distributed.destroy_process_group()
    if queue is not None and rank == 0:
        queue.put(median_rate(rates))
    return median_rate(rates)


def run_ray(config_path: str, steps: int, storage: str, workers: int, cpus: int = 2) -> float:
    from mlflow.tracking import MlflowClient

    from detr_ray.config import load_config
    from detr_ray.train.launcher import run_training

    name = f"ray_{workers}_{time.time_ns()}"
    extra = [f"scaling.num_workers={workers}", f"scaling.cpus_per_worker={cpus // workers}"]
    outcome = run_training(load_config(config_path, overrides(steps, storage, name) + extra))
    client = MlflowClient(outcome.tracking_uri)
    history = client.get_metric_history(outcome.mlflow_run_id, "images_per_s")
    return median_rate([m.value for m in sorted(history, key=lambda m: m.step)])


def child(args) -> None:
    with tempfile.TemporaryDirectory() as storage:
        if args.child == "no_ray_1t":
            rate = run_no_ray(args.config, args.steps, storage, threads=1)
        elif args.child == "ray_1t":
            rate = run_ray(args.config, args.steps, storage, 1, cpus=1)
        elif args.child.startswith("no_ray"):
            workers = int(args.child.split("_")[2]) if args.child != "no_ray" else 1
            rate = run_no_ray(args.config, args.steps, storage, workers)
        else:
            if args.child.endswith("_nodash"):  # Ray without its dashboard processes
                import ray

                ray.init(include_dashboard=False, log_to_driver=True)
            rate = run_ray(args.config, args.steps, storage, int(args.child.split("_")[1]))
    print("RESULT " + json.dumps({"rate": rate}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "shapes_tiny.yaml"))
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--spare-core", action="store_true", help="1 thread, one core left free")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    os.chdir(ROOT)  # the config's relative data paths
    kinds = ["no_ray", "ray_1", "ray_1_nodash", "no_ray_2", "ray_2"]
    if args.spare_core:
        kinds = ["no_ray_1t", "ray_1t"]
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    for round_index in range(args.rounds):
        for kind in kinds:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    kind,
                    "--config",
                    args.config,
                    "--steps",
                    str(args.steps),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if not lines:
                sys.exit(f"{kind} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
            rate = json.loads(lines[0][7:])["rate"]
            rates[kind].append(rate)
            print(f"round {round_index + 1} {kind:<12} {rate:7.1f} images/s", flush=True)
    best = {k: statistics.median(v) for k, v in rates.items()}
    print("\nmedian images/s: " + "  ".join(f"{k} {v:.1f}" for k, v in best.items()))
    if args.spare_core:
        ratio = best["ray_1t"] / best["no_ray_1t"]
        print(f"Ray overhead with a core to spare: {ratio:.3f}x throughput "
              f"({(1 - ratio) * 100:+.1f}% slower)")  # fmt: skip
        return
    print(
        f"Ray overhead, 1 worker vs the same loop without Ray: "
        f"{best['ray_1'] / best['no_ray']:.3f}x throughput "
        f"({(1 - best['ray_1'] / best['no_ray']) * 100:+.1f}% slower)"
    )
    print(
        f"the same without Ray's dashboard: {best['ray_1_nodash'] / best['no_ray']:.3f}x throughput"
    )
    print(
        f"Ray overhead, 2 workers vs the same DDP loop in 2 processes without Ray: "
        f"{best['ray_2'] / best['no_ray_2']:.3f}x throughput "
        f"({(1 - best['ray_2'] / best['no_ray_2']) * 100:+.1f}% slower)"
    )
    print(f"2 workers vs 1 worker: {best['ray_2'] / best['ray_1']:.3f}x throughput")


if __name__ == "__main__":
    main()
