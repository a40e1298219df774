"""Dependencies point one way; checked in fresh interpreters.

- the core (math, model, data, evaluation, engine) never loads Ray or MLflow;
- the model package never loads the checkpoint-file code (``detr_ray.checkpoint``):
  it knows state dicts, the checkpoint module reads files;
- settings (config, search spaces, job specs, errors) load without torch;
- training and sweeps never load the Jobs client (the address probe is
  ``detr_ray.cluster.address``, shared by all three);
- the command line starts without Ray, MLflow or torch.
"""

import subprocess
import sys

import pytest

CORE = [
    "detr_ray.ops.boxes",
    "detr_ray.criterion.matcher",
    "detr_ray.criterion.set_loss",
    "detr_ray.ops.dist",
    "detr_ray.model.build",
    "detr_ray.model.official",
    "detr_ray.model.pretrained",
    "detr_ray.model.postprocess",
    "detr_ray.data.coco",
    "detr_ray.data.transforms",
    "detr_ray.data.collate",
    "detr_ray.data.synthetic",
    "detr_ray.evaluation.coco_eval",
    "detr_ray.evaluation.predict",
    "detr_ray.checkpoint",
    "detr_ray.config",
    "detr_ray.train.engine",
    "detr_ray.train.step_stats",
    "detr_ray.tune.space",
    "detr_ray.jobs.spec",
]
MODEL = [
    "detr_ray.model.build",
    "detr_ray.model.official",
    "detr_ray.model.pretrained",
    "detr_ray.model.postprocess",
    "detr_ray.config.model",
]
WITHOUT_TORCH = [
    "detr_ray.errors",
    "detr_ray.schema",
    "detr_ray.config",
    "detr_ray.config.model",
    "detr_ray.config.augmentation",
    "detr_ray.data.labels",
    "detr_ray.tune.space",
    "detr_ray.jobs.spec",
    "detr_ray.cluster.address",
    "detr_ray.cli",
    "detr_ray.tracking.metric_queue",  # the tracking queue and the system sampler know no MLflow
    "detr_ray.tracking.system_metrics",
]


def loaded_after_import(modules: list[str], roots: tuple[str, ...]) -> list[str]:
    """Modules under ``roots`` (top-level names or dotted prefixes) that importing
    ``modules`` in a fresh interpreter loads."""
    code = (
        "import sys\n"
        f"for name in {modules!r}: __import__(name)\n"
        f"roots = {roots!r}\n"
        "hits = sorted(m for m in sys.modules if any(m == r or m.startswith(r + '.') "
        "for r in roots))\n"
        "print(','.join(hits))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_core_modules_do_not_import_ray_or_mlflow():
    assert loaded_after_import(CORE, ("ray", "mlflow")) == []


def test_the_model_does_not_know_the_checkpoint_file():
    assert loaded_after_import(MODEL, ("detr_ray.checkpoint",)) == []


@pytest.mark.parametrize("module", WITHOUT_TORCH)
def test_settings_and_the_command_line_load_without_torch(module):
    assert loaded_after_import([module], ("torch", "ray", "mlflow")) == []


def test_training_and_sweeps_do_not_import_the_jobs_client():
    modules = ["detr_ray.train.launcher", "detr_ray.tune.sweep", "detr_ray.train.engine"]
    assert loaded_after_import(modules, ("detr_ray.jobs",)) == []


def test_the_checks_above_can_fail():
    """The probe itself sees an arrow that is there (checkpoint -> model, cli -> config)."""
    assert "detr_ray.model.build" in loaded_after_import(["detr_ray.checkpoint"], ("detr_ray",))
    assert "torch" in loaded_after_import(["detr_ray.model.build"], ("torch",))
