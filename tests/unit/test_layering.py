"""Dependencies point one way, package by package; checked in fresh interpreters.

One table, :data:`RULES`: importing every module of the packages on the left
(found by walking the package, so a new module is checked the day it is
added) must not load anything under the prefixes on the right.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import detr_ray

RAY_OR_MLFLOW = ("ray", "mlflow")
TORCH_RAY_MLFLOW = ("torch", "ray", "mlflow")

# (packages or modules whose every module is imported, prefixes they must never load, why)
RULES = [
    (
        ("detr_ray.ops", "detr_ray.criterion", "detr_ray.model", "detr_ray.data"),
        RAY_OR_MLFLOW,
        "the math, the model and the data are plain torch",
    ),
    (("detr_ray.evaluation", "detr_ray.checkpoint"), RAY_OR_MLFLOW, "evaluation runs anywhere"),
    (
        ("detr_ray.batch",),
        RAY_OR_MLFLOW,
        "batch prediction's stages are plain torch (its pipeline imports Ray inside)",
    ),
    (
        (
            "detr_ray.train.engine",
            "detr_ray.train.build",
            "detr_ray.train.hooks",
            "detr_ray.train.prepare",
        ),
        RAY_OR_MLFLOW,
        "the engine is an ordinary training loop; the checks before Ray start nothing",
    ),
    (("detr_ray.config", "detr_ray.schema", "detr_ray.errors"), TORCH_RAY_MLFLOW, "settings"),
    (
        ("detr_ray.data.profile", "detr_ray.train.data_fit", "detr_ray.recipe.rules"),
        TORCH_RAY_MLFLOW,
        "a dataset's profile, the warnings and the recipe's rules are arithmetic",
    ),
    (
        ("detr_ray.recipe", "detr_ray.train.objective", "detr_ray.train.budget"),
        RAY_OR_MLFLOW,
        "the recipe probes the plain engine (Ray only on a cluster, inside a function)",
    ),
    (
        (
            "detr_ray.tune.space",
            "detr_ray.tune.options",
            "detr_ray.jobs.spec",
            "detr_ray.cluster.address",
            "detr_ray.cluster.resources",
            "detr_ray.cluster.local",
            "detr_ray.cluster.session",
            "detr_ray.cluster.signals",
            "detr_ray.cluster.waiting",
            "detr_ray.tracking.names",
            "detr_ray.tracking.store",
            "detr_ray.tracking.metric_queue",
            "detr_ray.tracking.system_metrics",
            "detr_ray.cli",
        ),
        TORCH_RAY_MLFLOW,
        "search spaces, job specs, addresses, tracking names and the command line are instant",
    ),
    (("detr_ray.model",), ("detr_ray.checkpoint",), "the model knows state dicts, not files"),
    (
        ("detr_ray.train", "detr_ray.tune"),
        ("detr_ray.jobs",),
        "training and sweeps never load the Jobs client",
    ),
    (("detr_ray.tracking",), ("detr_ray.train",), "tracking knows runs, not training"),
]


def modules_of(names: tuple[str, ...]) -> list[str]:
    """Every module of the given packages (a module stands for itself; ``__main__``
    modules run a program when imported and are left out)."""
    found = []
    for name in names:
        found.append(name)
        module = __import__(name, fromlist=["_"])
        if hasattr(module, "__path__"):
            walked = pkgutil.walk_packages(module.__path__, prefix=f"{name}.")
            found += [m.name for m in walked if not m.name.endswith(".__main__")]
    return found


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


@pytest.mark.parametrize("packages, never, why", RULES, ids=[r[2] for r in RULES])
def test_a_package_never_loads_what_lies_above_it(packages, never, why):
    assert loaded_after_import(modules_of(packages), never) == []


def test_every_package_module_is_under_some_rule():
    """A new top-level package must get a rule (or a reason here): no unchecked corner."""
    checked = {name.split(".")[1] for packages, _, _ in RULES for name in packages}
    unchecked_on_purpose = {"jobs", "storage"}  # the Jobs client; storage imports pyarrow only
    top_level = {m.name for m in pkgutil.iter_modules(detr_ray.__path__)}
    assert top_level - checked - unchecked_on_purpose == set()


def test_the_checks_above_can_fail():
    """The probe sees an arrow that is there (checkpoint -> model, model -> torch), and
    walks the packages it is given."""
    assert "detr_ray.model.build" in loaded_after_import(["detr_ray.checkpoint"], ("detr_ray",))
    assert "torch" in loaded_after_import(["detr_ray.model.build"], ("torch",))
    assert "detr_ray.criterion.set_loss" in modules_of(("detr_ray.criterion",))
