"""The tiny experiment the Ray tests train (``detr_r18_tiny`` on generated
shapes), and command lines run in a fresh interpreter that says whether
they imported Ray."""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# `detr-ray ARGV` for several command lines in one new interpreter (each new
# interpreter costs seconds of CPU), then each case's exit code, output and
# whether Ray was imported by then, as JSON on the last line: the checks before
# Ray must stop a bad run without importing it.
_CASES_REPORTING_RAY = (
    "import contextlib, io, json, logging, sys, traceback\n"
    "class _Stderr:\n"
    "    def write(self, text): return sys.stderr.write(text)\n"
    "    def flush(self): sys.stderr.flush()\n"
    "logging.basicConfig(level=logging.INFO, stream=_Stderr())  # each case's stderr\n"
    "from detr_ray.cli import main\n"
    "results = []\n"
    "for argv in json.loads(sys.argv[1]):\n"
    "    out, err = io.StringIO(), io.StringIO()\n"
    "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
    "        try:\n"
    "            code = main(argv)\n"
    "        except SystemExit as e:\n"
    "            code = e.code if isinstance(e.code, int) else 1\n"
    "        except BaseException:\n"
    "            traceback.print_exc()\n"
    "            code = 1\n"
    "    results.append({'argv': argv, 'returncode': code, 'stdout': out.getvalue(),\n"
    "                    'stderr': err.getvalue(), 'ray_imported': 'ray' in sys.modules})\n"
    "print(json.dumps(results))\n"
)


@dataclasses.dataclass(frozen=True)
class CliCase:
    """One command line's outcome in :func:`run_cli_cases_reporting_ray`."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    ray_imported: bool  # by the end of this case (cases run in order)


def run_cli_cases_reporting_ray(cwd: Path, argvs: list[list[str]]) -> list[CliCase]:
    """``detr-ray ARGV`` for each of ``argvs``, in order, in one new interpreter in ``cwd``."""
    out = subprocess.run(
        [sys.executable, "-c", _CASES_REPORTING_RAY, json.dumps(argvs)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60 + 30 * len(argvs),
    )
    assert out.returncode == 0 and out.stdout.strip(), out.stdout[-3000:] + out.stderr[-3000:]
    return [CliCase(**case) for case in json.loads(out.stdout.strip().splitlines()[-1])]


@functools.cache
def _empty_mlflow_store() -> Path:
    """A new sqlite MLflow store, made once per process: creating one (MLflow's
    table migrations) costs about 2 s of CPU, and the tiny runs make dozens."""
    from mlflow.tracking import MlflowClient

    path = Path(tempfile.mkdtemp(prefix="mlflow-store-")) / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def tiny_experiment(shapes, storage: Path | str, name: str, **sections: dict) -> dict:
    """A config dict (YAML's shape) for a few steps on ``shapes`` (a generated
    ``SyntheticDataset``), stored in ``storage``; ``sections`` update its sections.

    A local ``storage`` gets a copy of an empty MLflow store, the same file
    MLflow would create there, made once (the store's creation itself is
    tested where detr-ray creates it: the jobs, the dashboard, the demo).
    """
    if "://" not in str(storage) and not (Path(storage) / "mlflow.db").exists():
        Path(storage).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_empty_mlflow_store(), Path(storage) / "mlflow.db")
    raw: dict = {
        "model": {"preset": "detr_r18_tiny"},
        "data": {
            "train_ann": str(shapes.train_ann),
            "train_images": str(shapes.train_images),
            "val_ann": str(shapes.val_ann),
            "val_images": str(shapes.val_images),
            "augmentation": {"scaled_to": 64},
            "num_workers": 0,
        },
        "optim": {"lr": 1e-3, "backbone_lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 2, "log_every": 1, "lr_drop_epochs": []},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1},
        "run": {"name": name, "storage_path": str(storage), "max_failures": 0},
        "tracking": {"log_images": 1},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


# A Deformable DETR at the tiny DETR's size (ResNet-18's three maps plus one
# level, width 64, 2 + 2 layers, 10 queries).
TINY_DEFORMABLE = {
    "preset": "deformable_detr_r18_small",
    "d_model": 64,
    "nhead": 4,
    "dim_feedforward": 128,
    "num_queries": 10,
}

# Every image resized to a long side of 64 and padded to 64 x 64, whatever its
# batch, no random flip or crop: workers see exactly what one worker would.
FIXED_DATA = {
    "augmentation": {
        "train_scales": [64],
        "crop_prob": 0.0,
        "flip_prob": 0.0,
        "max_size": 64,
        "val_scale": 64,
    },
    "size_divisor": 64,
}
