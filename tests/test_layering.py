"""The core never loads Ray or MLflow: checked in a fresh interpreter."""

import subprocess
import sys

CORE = [
    "detr_ray.boxes", "detr_ray.matching", "detr_ray.losses", "detr_ray.dist",
    "detr_ray.model", "detr_ray.data", "detr_ray.data.synthetic", "detr_ray.evaluation",
    "detr_ray.inference", "detr_ray.checkpoint", "detr_ray.config", "detr_ray.train.engine",
    "detr_ray.tune.space", "detr_ray.jobs.spec",
]  # fmt: skip


def test_core_modules_do_not_import_ray_or_mlflow():
    code = (
        "import sys\n"
        f"for name in {CORE!r}: __import__(name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow'))\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_command_line_starts_without_heavy_imports():
    code = (
        "import sys\n"
        "from detr_ray.cli import main\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
