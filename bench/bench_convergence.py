"""Learning curves: AP and AP50 against minutes of training, from MLflow.

Runs ``detr-ray train CONFIG --set ...`` once per (variant, seed), as a user
would (2 Ray workers on this machine unless the config says otherwise), one
run at a time, then reads every evaluation's ``val/AP`` and ``val/AP50`` and
its time since the run's first logged step from the run's MLflow store, and
the median images/s of the logged steps. Prints one table per variant and
writes all of it as JSON.

    .venv/bin/python bench/bench_convergence.py --out /tmp/curves \\
        --variant "today=" --variant "groups10=train.query_groups=10" \\
        --seeds 42,1 --set train.epochs=11

A variant is ``NAME=KEY=VALUE,KEY=VALUE`` (overrides of that variant only);
``--set`` applies to every run (e.g. the data paths of a second dataset).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


def run(config: str, overrides: list[str], storage: Path, name: str) -> dict:
    argv = [sys.executable, "-m", "detr_ray.cli", "train", config,
            "--set", f"run.storage_path={storage}", "--set", f"run.name={name}"]  # fmt: skip
    for item in overrides:
        argv += ["--set", item]
    started = time.time()
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    (found,) = client.search_runs(
        [client.get_experiment_by_name("detr-ray").experiment_id],
        filter_string=f"attributes.run_name = '{name}'",
    )
    run_id = found.info.run_id
    first = min(m.timestamp for m in client.get_metric_history(run_id, "loss"))
    ap = {m.step: m.value for m in client.get_metric_history(run_id, "val/AP")}
    ap50 = {m.step: (m.value, m.timestamp) for m in client.get_metric_history(run_id, "val/AP50")}
    speeds = [m.value for m in client.get_metric_history(run_id, "images_per_s")]
    points = [
        {"step": step, "minutes": (stamp - first) / 60000, "AP": ap[step], "AP50": value}
        for step, (value, stamp) in sorted(ap50.items())
    ]
    return {
        "name": name,
        "overrides": overrides,
        "points": points,
        "images_per_s": statistics.median(speeds[1:] or speeds),
        "wall_minutes": (time.time() - started) / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/shapes_tiny.yaml")
    parser.add_argument("--out", required=True, help="storage folder and curves.json")
    parser.add_argument("--variant", action="append", required=True, help="NAME=K=V,K=V")
    parser.add_argument("--seeds", default="42,1")
    parser.add_argument("--set", dest="common", action="append", default=[])
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for variant in args.variant:
        name, _, spec = variant.partition("=")
        overrides = [item for item in spec.split(",") if item]
        for seed in args.seeds.split(","):
            run_name = f"{name}-seed{seed}-{int(time.time())}"
            result = run(args.config, [*args.common, *overrides, f"train.seed={seed}"], out,
                         run_name)  # fmt: skip
            result.update(variant=name, seed=int(seed))
            results.append(result)
            print(f"\n{name}, seed {seed}: {result['images_per_s']:.1f} images/s")
            for p in result["points"]:
                print(f"  step {p['step']:>5}  {p['minutes']:5.1f} min  AP {p['AP']:.3f}  "
                      f"AP50 {p['AP50']:.3f}")  # fmt: skip
            (out / "curves.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
