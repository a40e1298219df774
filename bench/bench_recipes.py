"""Judge ``detr-ray recipe`` on datasets it was not tuned on: recipe, then train, within a budget.

    python bench/bench_recipes.py --data shapes=data/shapes8k,glyphs=DIR,swarm=DIR \\
        --budget 20 --variants recipe:42,recipe:43,shapes_tiny:42,detr:42 --out runs/recipes

For each dataset (a generated set's folder: ``annotations/{train,val}.json``,
``train/``, ``val/``) and each variant, one run, in this order:

- ``recipe:SEED``: ``detr-ray recipe --budget-minutes B`` then ``detr-ray train``;
- ``detr:SEED``, ``deformable:SEED``: the same with the family forced
  (``--family detr``, ``--family deformable_detr``);
- ``shapes_tiny:SEED``: today's CPU recipe (``configs/shapes_tiny.yaml``) on
  this data, with the same time budget;
- ``finetune:SEED:FROM``: the recipe with ``--init-from`` the best checkpoint
  of this script's run named ``FROM`` (e.g. ``swarm-recipe-42``).

Each run trains with 2 workers on this machine; the script records its
command, the wall time from the command's start to its end, the validation
AP, AP50 and AP_small at every evaluation (the curve, from MLflow) and what
the recipe chose, into ``OUT/results.jsonl``, and prints a line per run.
Runs are sequential: each has the machine to itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(command: list[str], log: Path) -> tuple[int, float]:
    start = time.monotonic()
    with log.open("w") as out:
        code = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    return code, time.monotonic() - start


def curve(storage: Path, name: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("detr-ray")
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("detr_ray.run_dir", "").endswith(f"/{name}")
    ]
    if not runs:
        return {}
    run_id = runs[0].info.run_id
    points = {}
    for key in ("val/AP", "val/AP50", "val/APs", "images_per_s"):
        points[key] = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
    tags = runs[0].data.tags
    return {"points": points, "best_checkpoint": tags.get("best_checkpoint")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="name=folder,...")
    parser.add_argument("--budget", type=float, default=20.0, help="minutes of training")
    parser.add_argument("--variants", default="recipe:42,recipe:43,shapes_tiny:42,detr:42")
    parser.add_argument("--out", default="runs/recipes")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage = out / "runs"
    datasets = dict(item.split("=", 1) for item in args.data.split(","))
    for data_name, folder in datasets.items():
        folder = str(Path(folder).resolve())
        files = [
            f"{folder}/annotations/train.json",
            f"{folder}/train",
            f"{folder}/annotations/val.json",
            f"{folder}/val",
        ]
        for variant in args.variants.split(","):
            kind, seed, *rest = variant.split(":")
            name = f"{data_name}-{kind}-{seed}"
            config = out / f"{name}.yaml"
            recipe_log = None
            if kind == "shapes_tiny":
                config = ROOT / "configs" / "shapes_tiny.yaml"
                overrides = [
                    f"data.train_ann={files[0]}",
                    f"data.train_images={files[1]}",
                    f"data.val_ann={files[2]}",
                    f"data.val_images={files[3]}",
                    "data.synthetic=null",
                    f"train.time_budget_minutes={args.budget}",
                    "train.epochs=100",
                    "train.lr_drop_epochs=[80]",
                    f"train.seed={seed}",
                    "tracking.register_model=null",
                ]
            else:
                command = [str(BIN / "detr-ray"), "recipe", "--train-ann", files[0]]
                command += ["--train-images", files[1], "--val-ann", files[2]]
                command += ["--val-images", files[3], "--budget-minutes", str(args.budget)]
                command += ["--out", str(config), "--name", name, "--seed", seed]
                command += ["--storage-path", str(storage)]
                if kind in ("detr", "deformable"):
                    command += ["--family", {"detr": "detr", "deformable": "deformable_detr"}[kind]]
                if kind == "finetune":
                    source = curve(storage, rest[0]).get("best_checkpoint")
                    command += ["--init-from", str(source)]
                recipe_log = out / f"{name}.recipe.log"
                code, _ = run(command, recipe_log)
                if code:
                    print(f"{name}: recipe failed ({code}), see {recipe_log}", flush=True)
                    continue
                overrides = []
            train = [str(BIN / "detr-ray"), "train", str(config)]
            train += [f"--set=run.name={name}", f"--set=run.storage_path={storage}"]
            train += [f"--set={o}" for o in overrides]
            code, seconds = run(train, out / f"{name}.log")
            result = {
                "name": name,
                "data": data_name,
                "variant": variant,
                "command": " ".join(train),
                "exit": code,
                "wall_s": seconds,
                "budget_min": args.budget,
                **curve(storage, name),
            }
            if recipe_log is not None:
                result["recipe"] = [
                    line for line in recipe_log.read_text().splitlines() if "  (" in line
                ]
            with (out / "results.jsonl").open("a") as f:
                f.write(json.dumps(result) + "\n")
            last = {k: (v[-1][1] if v else None) for k, v in result.get("points", {}).items()}
            print(
                f"{name}: exit {code}, {seconds / 60:.1f} min, AP {last.get('val/AP')}, "
                f"AP50 {last.get('val/AP50')}, APs {last.get('val/APs')}",
                flush=True,
            )


if __name__ == "__main__":
    main()
