"""GPU-hours lost to preemptions in a long run: fixed-size against elastic, and the
checkpoint interval that minimises the loss (pure Python: no Ray, no torch).

    python bench/fault_model.py [--mtbf-hours 4 12 48] [--runs 300] [--checkpoint-s 1.7]

The run (assumptions, each a flag):

- the official DETR-R50 recipe, 500 epochs of COCO train2017 (118,287 images):
  the paper trains 300 epochs in 3 days on 16 V100s (4 images a GPU, batch 64),
  about 1,150 GPU-hours, so 500 epochs take ~1,920 GPU-hours (``--gpu-hours``);
- on ``--nodes`` 8 x ``--gpus-per-node`` 8 GPUs, with perfect scaling (the same
  GPU-hours: 30 h of wall time, an epoch every 3.6 minutes); an elastic run
  without a node trains at 7/8 of the speed on 7/8 of the GPUs;
- each node is preempted independently, on average every N hours
  (``--mtbf-hours``; exponential times between preemptions, so the cluster
  sees one every N/8 hours); a preempted node's replacement arrives
  ``--replacement-min`` later on average (exponential; ``--fixed-replacement``
  for always that long: then an elastic run whose grow restart comes a fixed
  time after its shrink loses that time modulo M, and the loss is not smooth
  in M); while a node is missing it is not paid;
- a checkpoint every M minutes of training stalls every GPU ``--checkpoint-s``
  seconds (rank 0 writes and uploads it while the others wait at the report;
  default 1.7 s: ``bench/bench_faults.py``'s stall of a Ray report with the
  tiny model's checkpoint, scaled by size to DETR-R50's 497 MB with its AdamW
  state, on this machine's local disk), and a fault loses the training since
  the last finished checkpoint;
- fixed-size: after a preemption the 7 other nodes wait (paid, idle) for the
  replacement, then the worker group restarts (``--restart-s``, measured:
  fault ``c_worker_killed``, 13 s);
- elastic: a preemption costs a shrink restart (``--shrink-s``, measured:
  ``a_node_lost``, 18 s) and training goes on with the nodes left; when the
  replacement arrives a grow restart (``--grow-s``, measured: ``b_node_back``'s
  stall, 14 s) resumes from the latest checkpoint too, so it also loses the
  training since then (``--grow-keeps-work`` if a resize waits for a checkpoint);
- the restart times were measured with the tiny model on this 2-core CPU
  machine (see BENCHMARKS.md); on GPU nodes CUDA and NCCL set-up add to them.

Lost share = 1 - (GPU-hours the recipe needs) / (GPU-hours of the nodes
present while the run lasts). The first-order formula, with the cluster's
MTBF = N / nodes and R the GPU-time a failure costs in restarts:

    fixed:   C/M + (M/2 + R) / MTBF,     R = (nodes-1)/nodes x replacement + restart
    elastic: C/M + (M/2 + M/2 + R) / MTBF,   R = shrink + grow

(the elastic run's two restarts each lose half an interval on average; its
degraded time costs no GPU-hours, only wall time). Young/Daly's rule for the
interval is M* = sqrt(2 C MTBF) (fixed), sqrt(C MTBF) for elastic (two
rollbacks a failure). The Monte-Carlo simulation (``--runs`` runs per point,
seeded, the same random numbers for every M) also counts preemptions during a
restart or a wait, and finds the best M on a grid.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from dataclasses import dataclass

HOUR = 3600.0


@dataclass(frozen=True)
class Scenario:
    """One run to simulate; times in hours."""

    work_h: float  # wall time of the whole run on all nodes, without faults
    nodes: int
    node_mtbf_h: float
    checkpoint_every_h: float  # M: training time between checkpoints
    checkpoint_h: float  # C: the stall of one checkpoint
    replacement_h: float
    restart_h: float  # fixed-size group restart once all nodes are back
    shrink_h: float
    grow_h: float
    grow_loses_work: bool = True
    random_replacement: bool = True  # exponential delays with mean replacement_h


@dataclass(frozen=True)
class Outcome:
    lost_share: float  # of the GPU-hours of the nodes present
    wall_h: float


def _productive(x: float, m: float, c: float) -> float:
    """Training time in the first ``x`` hours of a cycle of M training + C checkpoint."""
    cycles, rest = divmod(x, m + c)
    return cycles * m + min(rest, m)


def _wall_for(productive: float, m: float, c: float) -> float:
    """The inverse of :func:`_productive`: hours from a cycle's start to train ``productive``."""
    if productive <= 0:
        return 0.0
    cycles = math.ceil(productive / m) - 1
    return cycles * (m + c) + productive - cycles * m


def simulate(s: Scenario, elastic: bool, rng: random.Random) -> Outcome:
    """One run, event by event: preemptions, replacements, restarts, checkpoints."""
    m, c = s.checkpoint_every_h, s.checkpoint_h
    t = paid = 0.0  # paid: node-hours of the nodes present
    alive, returns = s.nodes, []  # returns: when each missing node's replacement arrives
    saved = 0.0  # work (in hours of the full cluster) in the latest checkpoint
    unsaved = 0.0  # work since then
    phase = 0.0  # hours into the current checkpoint cycle
    busy_until = 0.0  # restarting until then (no training)
    waiting = False  # fixed-size: a node is missing

    def lose_and_restart(seconds_h: float) -> None:
        nonlocal unsaved, phase, busy_until
        unsaved, phase, busy_until = 0.0, 0.0, t + seconds_h

    while True:
        training = not waiting and t >= busy_until and alive > 0
        rate = alive / s.nodes if elastic else 1.0
        next_fail = t + rng.expovariate(alive / s.node_mtbf_h) if alive else math.inf
        next_return = returns[0] if returns else math.inf
        if training:
            need = (s.work_h - saved - unsaved) / rate
            done_at = t + _wall_for(_productive(phase, m, c) + need, m, c) - phase
        else:
            done_at = math.inf
        restart_end = busy_until if not training and not waiting and busy_until > t else math.inf
        now = min(next_fail, next_return, done_at, restart_end)
        paid += alive * (now - t)
        if training:  # progress and checkpoints up to `now`
            end_phase = phase + (now - t)
            cycles = int(end_phase // (m + c))
            trained = (_productive(end_phase, m, c) - _productive(phase, m, c)) * rate
            if cycles:  # checkpoints finished: saved up to the last one's start
                in_last = min(end_phase - cycles * (m + c), m) * rate
                saved += unsaved + trained - in_last
                unsaved = in_last
            else:
                unsaved += trained
            phase = end_phase - cycles * (m + c)
        t = now
        if now == done_at:
            return Outcome(1 - s.work_h * s.nodes / paid, t)
        if now == next_fail:
            alive -= 1
            # a spot replacement's delay varies: exponential around its mean
            delay = (
                rng.expovariate(1 / s.replacement_h) if s.random_replacement else s.replacement_h
            )
            returns.append(t + delay)
            returns.sort()
            if elastic:
                lose_and_restart(s.shrink_h)
            else:
                lose_and_restart(0.0)
                waiting = True
        elif now == next_return:
            returns.pop(0)
            alive += 1
            if elastic:
                if s.grow_loses_work or alive == 1:
                    lose_and_restart(s.grow_h)
                else:
                    busy_until = max(busy_until, t + s.grow_h)
            elif alive == s.nodes:
                waiting = False
                lose_and_restart(s.restart_h)
        # restart_end: nothing to do, training resumes on the next pass


def first_order(s: Scenario, elastic: bool) -> float:
    """The lost share to first order in 1/MTBF (see the module docstring)."""
    mtbf = s.node_mtbf_h / s.nodes
    m, c = s.checkpoint_every_h, s.checkpoint_h
    if elastic:
        per_failure = m / 2 * (2 if s.grow_loses_work else 1) + s.shrink_h + s.grow_h
    else:
        per_failure = m / 2 + (s.nodes - 1) / s.nodes * s.replacement_h + s.restart_h
    return c / m + per_failure / mtbf


def young_daly_h(s: Scenario, elastic: bool) -> float:
    rollbacks = 2 if elastic and s.grow_loses_work else 1
    return math.sqrt(2 * s.checkpoint_h * s.node_mtbf_h / s.nodes / rollbacks)


def mean_loss(s: Scenario, elastic: bool, runs: int, seed: int) -> tuple[float, float]:
    """Mean lost share and wall hours over ``runs`` seeded runs."""
    outcomes = [simulate(s, elastic, random.Random(seed + i)) for i in range(runs)]
    return (
        statistics.fmean(o.lost_share for o in outcomes),
        statistics.fmean(o.wall_h for o in outcomes),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu-hours", type=float, default=1920.0, help="the recipe's GPU-hours")
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--mtbf-hours", type=float, nargs="+", default=[4.0, 12.0, 48.0])
    parser.add_argument("--checkpoint-s", type=float, default=1.7, help="C (DETR-R50)")
    parser.add_argument("--replacement-min", type=float, default=5.0)
    parser.add_argument("--restart-s", type=float, default=13.0, help="fixed-size group restart")
    parser.add_argument("--shrink-s", type=float, default=18.0, help="elastic shrink restart")
    parser.add_argument("--grow-s", type=float, default=14.0, help="elastic grow restart")
    parser.add_argument("--grow-keeps-work", action="store_true")
    parser.add_argument("--fixed-replacement", action="store_true")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gpus = args.nodes * args.gpus_per_node
    work_h = args.gpu_hours / gpus
    epoch_min = work_h * 60 / args.epochs
    print(
        f"{args.gpu_hours:.0f} GPU-hours on {args.nodes} x {args.gpus_per_node} GPUs: "
        f"{work_h:.1f} h without faults, an epoch every {epoch_min:.1f} min; "
        f"C = {args.checkpoint_s:.1f} s, replacement {args.replacement_min:.0f} min, "
        f"restarts: fixed {args.restart_s:.0f} s, shrink {args.shrink_s:.0f} s, "
        f"grow {args.grow_s:.0f} s; {args.runs} runs a point"
    )
    grid_min = [0.5, 1, 1.5, 2, 3, 4, 5, 7, 10, 15, 20, 30, 45, 60]
    print(
        f"\n{'node MTBF':>9} {'cluster':>8} | {'best M sim (min)':>17} | "
        f"{'Young/Daly M*':>14} | {'lost at M*: fixed':>18} {'elastic':>16} | "
        f"{'wall h fixed/elastic':>20}"
    )
    print(f"{'(h)':>9} {'MTBF (h)':>8} | {'fixed':>8} {'elastic':>8} | {'fixed':>6} {'elastic':>7} "
          f"| {'sim':>8} {'1st order':>9} {'sim':>7} {'1st order':>8} |")  # fmt: skip
    per_epoch = []
    for mtbf in args.mtbf_hours:

        def scenario(every_min: float, mtbf: float = mtbf) -> Scenario:
            return Scenario(
                work_h=work_h,
                nodes=args.nodes,
                node_mtbf_h=mtbf,
                checkpoint_every_h=every_min / 60,
                checkpoint_h=args.checkpoint_s / HOUR,
                replacement_h=args.replacement_min / 60,
                restart_h=args.restart_s / HOUR,
                shrink_h=args.shrink_s / HOUR,
                grow_h=args.grow_s / HOUR,
                grow_loses_work=not args.grow_keeps_work,
                random_replacement=not args.fixed_replacement,
            )

        best = {}
        for elastic in (False, True):
            losses = {m: mean_loss(scenario(m), elastic, args.runs, args.seed)[0] for m in grid_min}
            best[elastic] = min(losses, key=losses.get)
        base = scenario(1.0)
        star = {e: young_daly_h(base, e) * 60 for e in (False, True)}
        fixed = mean_loss(scenario(star[False]), False, args.runs, args.seed)
        elastic = mean_loss(scenario(star[True]), True, args.runs, args.seed)
        print(
            f"{mtbf:9.0f} {mtbf / args.nodes:8.2f} | {best[False]:8g} {best[True]:8g} | "
            f"{star[False]:6.1f} {star[True]:7.1f} | {fixed[0]:8.2%} "
            f"{first_order(scenario(star[False]), False):9.2%} {elastic[0]:7.2%} "
            f"{first_order(scenario(star[True]), True):8.2%} | "
            f"{fixed[1]:9.1f} / {elastic[1]:.1f}"
        )
        per_epoch.append(
            (
                mtbf,
                mean_loss(scenario(epoch_min), False, args.runs, args.seed)[0],
                mean_loss(scenario(epoch_min), True, args.runs, args.seed)[0],
            )
        )
    print(
        f"\nAn epoch ends every {epoch_min:.1f} min and detr-ray checkpoints at every epoch's "
        "end (train.report_every=None): an interval M above that is not reachable. Lost with "
        "those checkpoints only: "
        + ", ".join(f"N={n:g} h: fixed {f:.2%}, elastic {e:.2%}" for n, f, e in per_epoch)
    )


if __name__ == "__main__":
    main()
