"""Lost work per real fault, and what a checkpoint costs, on a Ray cluster on this machine.

    python bench/bench_faults.py [--report-every 2] [--step-delay 0.2] [--quick] [--no-r50]

One ``ray.cluster_utils.Cluster`` (a head without CPUs and two 1-CPU worker
nodes, health checks every 0.5 s as in ``tests/fault_cluster.py``) runs the
tiny model (``detr_r18_tiny``) on generated shapes, each worker recording
every step as a JSON line (``FaultHooks.record_images``) and slowed by
``FaultHooks.step_delay_s``. The faults, in this order:

- ``a_node_lost``: an elastic run (``--num-workers 1:2``, ``resize_interval_s``
  1 s) loses a worker node (``remove_node(allow_graceful=False)``, a SIGKILL of
  its processes) mid-epoch, just after a checkpoint's next step; measured to
  the first step at world size 1;
- ``b_node_back``: a node is added back; measured to the first step at world 2;
- ``c_worker_killed``: a fixed-size 2-worker run, rank 1 SIGKILLed by its
  recorded pid; measured to the first step of the restarted group;
- ``d_driver_killed``: that run's driver process group SIGKILLed, the same
  command run again at once; measured to its first step, and (``d_start_up``)
  from the relaunch to that step;
- ``e_truncated``: the relaunched driver killed again, the run's newest
  checkpoint cut to half its size, the same command again: it resumes from
  the checkpoint before; measured from the relaunch.

Per fault: the seconds from the fault to the next trained step (a record's
time is taken after the step), the steps redone (the last step recorded
before the fault minus the step the next attempt resumed from, read from the
record's ``attempt`` field ``<start_step>-<pid>``; for ``b`` the run goes on
at world 1 until the grow restart, so it is the last step before the
restart), the stall (from the last step before the restart to the next one)
and the restarts (worker groups started between the fault and that step:
``resumed at`` lines of the driver's log).

Checkpoint cost: 2-worker runs of one epoch, ``train.report_every=1``
(a checkpoint after every step, uploaded asynchronously, the default, and
synchronously: ``run.checkpoint_upload``) against no mid-epoch report; the difference of
the median time between rank 0's consecutive steps is the stall a checkpoint
adds to a step. For a checkpoint of DETR-R50's size (the model of
``build_preset("detr_r50", num_classes=91)`` and its AdamW state after one
step) the bench times, without Ray, ``save_checkpoint`` to a temporary folder
and the copy of that folder to a storage folder on the same disk (what
``ray.train.report`` does for a local ``run.storage_path``).

The machine has 2 cores for the head, both nodes, the driver and this
script; a concurrent test run slows every figure. Every process and the
cluster this script starts are stopped by their own handle at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' helpers (tests.support): the same cluster and driver

from detr_ray.train.hooks import FaultHooks  # noqa: E402

from tests.support.experiments import tiny_experiment  # noqa: E402
from tests.support.fault_cluster import (  # noqa: E402
    HEALTH_CHECKS,
    TRAIN_ENV,
    Driver,
    records,
    wait_until,
)

NUM_TRAIN = 48  # images: 12 steps an epoch with 2 workers x batch 2, 24 with one
TIMEOUT_S = 180


def tiny_config(shapes, workdir: Path, name: str, args, **sections) -> Path:
    """The tiny experiment of the Ray tests (``detr_r18_tiny`` on ``shapes``), for
    30 epochs of 3 restarts at most; written as YAML."""
    raw = tiny_experiment(shapes, workdir / "runs", name)
    raw["train"].update(epochs=30, report_every=args.report_every, eval_every=1000)
    raw["run"].update(max_failures=3)
    raw["tracking"].update(log_images=0, system_metrics_every=0)
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start_driver(config: Path, address: str, log: Path, args, *flags: str) -> Driver:
    """The driver of ``config``, its workers recording each step into
    ``records-<config name>`` beside it and slowed by ``--step-delay``."""
    hooks = FaultHooks(
        record_images=str(config.parent / f"records-{config.stem}"), step_delay_s=args.step_delay
    )
    return Driver(config, address, log, *flags, hooks=hooks)


def stop(driver: Driver) -> None:
    """SIGKILL the driver's process group; wait for the driver."""
    driver.kill(signal.SIGKILL)
    driver.process.wait(30)


def wait_for(check, driver: Driver, what: str, timeout: float = TIMEOUT_S):
    return wait_until(check, timeout, what, driver)


def step_after(folder: Path, since: float, world: int | None = None, step: int = 0):
    """A check: the first record after time ``since`` (at ``world``, past ``step``)
    of an attempt that recorded nothing before ``since``."""
    old = {r["attempt"] for r in records(folder) if r["time"] <= since}

    def check() -> dict | None:
        for row in records(folder):
            new = row["attempt"] not in old and row["time"] > since
            if new and row["step"] > step and world in (None, row["world"]):
                return row
        return None

    return check


def lost_work(folder: Path, fault: float, after: dict, log: Path, log_offset: int) -> dict:
    """Seconds from ``fault`` to the step ``after``, the stall (from the last
    step of any earlier attempt to ``after``), steps redone, restarts."""
    before = [r for r in records(folder) if r["time"] < after["time"]]
    before = [r for r in before if r["attempt"] != after["attempt"]]
    start = int(after["attempt"].split("-")[0])
    resumed = log.read_text(errors="replace")[log_offset:].count("[detr-ray] resumed at")
    return {
        "seconds": after["time"] - fault,
        "stall": after["time"] - max(r["time"] for r in before),
        "redone": max(r["step"] for r in before) - start,
        "restarts": resumed,
        "from_step": start,
    }


def wait_for_cpus(cpus: float, timeout: float = 60) -> None:
    """Until the cluster has ``cpus`` free (a killed run's actors are gone)."""
    import ray

    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < cpus and time.monotonic() < deadline:
        time.sleep(0.1)


def fault_runs(cluster, nodes: list, shapes, workdir: Path, args) -> dict[str, dict]:
    """Faults a-e (see the module docstring)."""
    results: dict[str, dict] = {}
    every = args.report_every
    mid = every + 1  # the step after the first mid-epoch checkpoint

    # (a) and (b): the elastic run.
    config = tiny_config(shapes, workdir, "elastic", args, scaling={"resize_interval_s": 1.0})
    folder, log = workdir / "records-elastic", workdir / "elastic.log"
    driver = start_driver(config, cluster.address, log, args, "--num-workers", "1:2")
    try:
        wait_for(step_after(folder, 0, world=2, step=mid - 1), driver, f"step {mid} at world 2")
        offset, fault = len(log.read_text(errors="replace")), time.time()
        cluster.remove_node(nodes.pop(), allow_graceful=False)
        row = wait_for(step_after(folder, fault, world=1), driver, "a step at world 1")
        results["a_node_lost"] = lost_work(folder, fault, row, log, offset)
        # a few steps at world 1, past a checkpoint, before the node returns
        wait_for(step_after(folder, fault, world=1, step=row["step"] + every), driver, "world 1")
        offset, fault = len(log.read_text(errors="replace")), time.time()
        nodes.append(cluster.add_node(num_cpus=1))
        row = wait_for(step_after(folder, fault, world=2), driver, "a step at world 2 again")
        results["b_node_back"] = lost_work(folder, fault, row, log, offset)
    finally:
        stop(driver)
    wait_for_cpus(2)

    # (c), (d), (e): one fixed-size run, restarted and relaunched.
    config = tiny_config(shapes, workdir, "fixed", args)
    folder, log = workdir / "records-fixed", workdir / "fixed.log"
    driver = start_driver(config, cluster.address, log, args)
    try:
        row = wait_for(
            lambda: [r for r in records(folder) if r["rank"] == 1 and r["step"] >= mid],
            driver,
            f"rank 1 at step {mid}",
        )[0]
        offset, fault = len(log.read_text(errors="replace")), time.time()
        os.kill(row["pid"], signal.SIGKILL)
        row = wait_for(step_after(folder, fault), driver, "a step of the restarted group")
        results["c_worker_killed"] = lost_work(folder, fault, row, log, offset)

        checkpoint = (row["step"] // every + 1) * every  # the next checkpoint's step
        wait_for(step_after(folder, fault, step=checkpoint), driver, f"step {checkpoint + 1}")
        fault = time.time()
        stop(driver)
        offset, relaunch = len(log.read_text(errors="replace")), time.time()
        driver = start_driver(config, cluster.address, log, args)
        row = wait_for(step_after(folder, fault), driver, "a step of the relaunched run")
        results["d_driver_killed"] = lost_work(folder, fault, row, log, offset)
        results["d_start_up"] = {**results["d_driver_killed"], "seconds": row["time"] - relaunch}

        checkpoint = (row["step"] // every + 1) * every
        wait_for(step_after(folder, fault, step=checkpoint), driver, f"step {checkpoint + 1}")
        time.sleep(0.2)  # the controller registers the checkpoint it just reported
        fault = time.time()
        stop(driver)
        newest = truncate_newest_checkpoint(workdir / "runs" / "fixed")
        offset, relaunch = len(log.read_text(errors="replace")), time.time()
        driver = start_driver(config, cluster.address, log, args)
        row = wait_for(step_after(folder, fault), driver, "a step after the truncation")
        results["e_truncated"] = {
            **lost_work(folder, fault, row, log, offset),
            "seconds": row["time"] - relaunch,
            "truncated": newest,
        }
    finally:
        stop(driver)
    wait_for_cpus(2)
    return results


def truncate_newest_checkpoint(run_dir: Path) -> str:
    """Cut the newest checkpoint's file to half its size (a node lost mid-write)."""
    newest = sorted(run_dir.glob("epoch*_step*/checkpoint.pt"))[-1]
    size = newest.stat().st_size
    with newest.open("r+b") as file:
        file.truncate(size // 2)
    return newest.parent.name


def step_seconds(folder: Path) -> list[float]:
    """Rank 0's time between consecutive steps of one epoch and attempt (the
    first two of an attempt, warm-up, left out)."""
    rows = [r for r in records(folder) if r["rank"] == 0]
    gaps, seen = [], 0
    for prev, row in zip(rows, rows[1:]):
        same = prev["attempt"] == row["attempt"] and prev["epoch"] == row["epoch"]
        if same and row["step"] == prev["step"] + 1:
            seen += 1
            if seen > 2:
                gaps.append(row["time"] - prev["time"])
        else:
            seen = 0
    return gaps


def checkpoint_stall(cluster, shapes, workdir: Path, args) -> dict:
    """Median step time with a checkpoint after every step against none mid-epoch."""
    steps = 8 if args.quick else 20
    medians: dict[str, float] = {}
    size = 0
    variants = (("no_reports", None, "async"), ("report_every_1", 1, "async"))
    variants += (("report_every_1_sync", 1, "sync"),)
    for name, every, upload in variants:
        config = tiny_config(
            shapes,
            workdir,
            name,
            args,
            train={"epochs": 1, "report_every": every, "max_steps_per_epoch": steps},
            run={"max_failures": 0, "keep_checkpoints": 2, "checkpoint_upload": upload},
        )
        driver = start_driver(config, cluster.address, workdir / f"{name}.log", args)
        try:
            if driver.process.wait(TIMEOUT_S) != 0:
                raise RuntimeError(f"{name} failed:\n{driver.output()[-3000:]}")
        finally:
            stop(driver)
        medians[name] = statistics.median(step_seconds(workdir / f"records-{name}"))
        files = list((workdir / "runs" / name).glob("epoch*/checkpoint.pt"))
        size = max([size] + [f.stat().st_size for f in files])
        wait_for_cpus(2)
    base = medians["no_reports"]
    stalls = {
        "stall": medians["report_every_1"] - base,
        "stall_sync": medians["report_every_1_sync"] - base,
    }
    return {**medians, **stalls, "bytes": size}


def r50_checkpoint_cost(repeats: int) -> dict:
    """Seconds to save a DETR-R50 checkpoint (model + AdamW state) and to copy it."""
    import torch

    from detr_ray.checkpoint import CHECKPOINT_FILE, checkpoint_dict, save_checkpoint
    from detr_ray.config.model import preset_config
    from detr_ray.data.labels import LabelMap
    from detr_ray.model.build import build_preset

    torch.manual_seed(0)
    model = build_preset("detr_r50", num_classes=91)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in trained if "backbone" not in n], "lr": 1e-4},
            {"params": [p for n, p in trained if "backbone" in n], "lr": 1e-5},
        ],
        weight_decay=1e-4,
    )
    for _, p in trained:
        p.grad = torch.zeros_like(p)
    optimizer.step()  # fills exp_avg, exp_avg_sq: the state a resume needs
    label_map = LabelMap(tuple(range(1, 92)), tuple(f"class{i}" for i in range(1, 92)))
    checkpoint = checkpoint_dict(
        model, preset_config("detr_r50"), label_map, optimizer=optimizer.state_dict()
    )
    saves, copies, size = [], [], 0
    with tempfile.TemporaryDirectory() as root:
        for i in range(repeats):
            local, stored = Path(root) / f"local{i}", Path(root) / f"storage{i}"
            begin = time.perf_counter()
            save_checkpoint(checkpoint, local / CHECKPOINT_FILE)
            saves.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            shutil.copytree(local, stored)
            copies.append(time.perf_counter() - begin)
            size = (local / CHECKPOINT_FILE).stat().st_size
            shutil.rmtree(local)
            shutil.rmtree(stored)
    return {"save": statistics.median(saves), "copy": statistics.median(copies), "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report-every", type=int, default=2, help="train.report_every (steps)")
    parser.add_argument("--step-delay", type=float, default=0.2, help="FaultHooks.step_delay_s")
    parser.add_argument("--quick", action="store_true", help="shorter checkpoint-cost runs")
    parser.add_argument("--no-r50", action="store_true", help="skip the DETR-R50 checkpoint")
    args = parser.parse_args()

    os.environ.update(TRAIN_ENV)
    import ray
    from ray.cluster_utils import Cluster

    from detr_ray.data.synthetic import generate

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_faults_"))
    cluster = None
    try:
        shapes = generate(workdir / "shapes", num_train=NUM_TRAIN, num_val=2, size=64, seed=3)
        begin = time.perf_counter()
        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": HEALTH_CHECKS}
        )
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)  # to see free CPUs
        print(f"cluster up in {time.perf_counter() - begin:.1f} s", flush=True)

        faults = fault_runs(cluster, nodes, shapes, workdir, args)
        print(
            f"\nfaults (tiny model, 2 x 1-CPU nodes, report_every={args.report_every}, "
            f"step_delay_s={args.step_delay})"
        )
        print(
            f"{'fault':<16} {'to next step (s)':>16} {'stall (s)':>9} {'steps redone':>12} "
            f"{'restarts':>8}"
        )
        for name, found in faults.items():
            print(
                f"{name:<16} {found['seconds']:16.1f} {found['stall']:9.1f} "
                f"{found['redone']:12d} {found['restarts']:8d}   "
                f"(resumed from step {found['from_step']})"
            )
        if "truncated" in faults.get("e_truncated", {}):
            print(f"e: truncated {faults['e_truncated']['truncated']}")

        stall = checkpoint_stall(cluster, shapes, workdir, args)
        print(
            f"\ncheckpoint cost, tiny model ({stall['bytes'] / 1e6:.1f} MB): step "
            f"{stall['no_reports']:.3f} s without mid-epoch reports, "
            f"{stall['report_every_1']:.3f} s with a checkpoint every step: "
            f"{stall['stall']:+.3f} s a checkpoint "
            f"({stall['report_every_1'] / stall['no_reports']:.2f}x the step; "
            f"run.checkpoint_upload async, the default); with sync upload "
            f"{stall['report_every_1_sync']:.3f} s, {stall['stall_sync']:+.3f} s a checkpoint "
            f"(async / sync stall: {stall['stall'] / max(stall['stall_sync'], 1e-9):.2f})"
        )
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)

    if not args.no_r50:
        r50 = r50_checkpoint_cost(repeats=1 if args.quick else 3)
        ratio = r50["bytes"] / max(stall["bytes"], 1)
        print(
            f"DETR-R50 checkpoint ({r50['bytes'] / 1e6:.0f} MB, {ratio:.1f}x the tiny one): "
            f"save {r50['save']:.2f} s + copy to storage {r50['copy']:.2f} s = "
            f"{r50['save'] + r50['copy']:.2f} s without Ray; the tiny stall scaled by size "
            f"(a report is bound by the bytes it writes and copies): "
            f"{stall['stall'] * ratio:.1f} s a checkpoint (fault_model.py --checkpoint-s)"
        )


if __name__ == "__main__":
    main()
