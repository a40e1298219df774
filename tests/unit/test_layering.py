"""Dependencies point one way, package by package; checked in a fresh interpreter.

One table, :data:`RULES`: importing every module of the packages on the left
(found by walking the package, so a new module is checked the day it is
added) must not load anything under the prefixes on the right.
"""

from __future__ import annotations

import json
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


# One new interpreter answers many checks: each check imports its modules in a
# child forked for it, so every check starts from the same few modules. Checks
# that may load torch fork after the parent has imported it (a fresh torch
# import costs seconds of CPU, once for all); checks that watch for torch
# itself fork before. A preloaded module can only add to what a check sees,
# never hide an arrow.
_CHECKS = """
import json, os, sys, traceback

def loaded(roots):
    return sorted(m for m in sys.modules if any(m == r or m.startswith(r + '.') for r in roots))

def in_a_child(modules, roots):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            for name in modules:
                __import__(name)
            answer = {"loaded": loaded(roots)}
        except BaseException:
            answer = {"error": traceback.format_exc()}
        with os.fdopen(write, "w") as out:
            out.write(json.dumps(answer))
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        text = answer.read()
    os.waitpid(pid, 0)
    return json.loads(text)

checks = json.loads(sys.argv[1])
answers = [None] * len(checks)
watch_torch = [i for i, (_, roots) in enumerate(checks) if "torch" in roots]
for i in watch_torch:
    answers[i] = in_a_child(*checks[i])
import torch
for i, check in enumerate(checks):
    if i not in watch_torch:
        answers[i] = in_a_child(*check)
print(json.dumps(answers))
"""


def loaded_after_imports(checks: list[tuple[list[str], tuple[str, ...]]]) -> list[list[str]]:
    """For each ``(modules, roots)``: the modules under ``roots`` (top-level names or
    dotted prefixes) that importing ``modules`` loads, in a new interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", _CHECKS, json.dumps(checks)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    answers = json.loads(out.stdout.strip().splitlines()[-1])
    for (modules, _), answer in zip(checks, answers):
        assert "error" not in answer, f"importing {modules}:\n{answer.get('error')}"
    return [answer["loaded"] for answer in answers]


@pytest.fixture(scope="module")
def loaded_by_rule() -> dict[str, list[str]]:
    """Every rule's forbidden modules that its packages load, by its reason."""
    answers = loaded_after_imports([(modules_of(packages), never) for packages, never, _ in RULES])
    return {why: loaded for (_, _, why), loaded in zip(RULES, answers)}


@pytest.mark.parametrize("packages, never, why", RULES, ids=[r[2] for r in RULES])
def test_a_package_never_loads_what_lies_above_it(packages, never, why, loaded_by_rule):
    assert loaded_by_rule[why] == []


def test_every_package_module_is_under_some_rule():
    """A new top-level package must get a rule (or a reason here): no unchecked corner."""
    checked = {name.split(".")[1] for packages, _, _ in RULES for name in packages}
    unchecked_on_purpose = {"jobs", "storage"}  # the Jobs client; storage imports pyarrow only
    top_level = {m.name for m in pkgutil.iter_modules(detr_ray.__path__)}
    assert top_level - checked - unchecked_on_purpose == set()


def test_the_checks_above_can_fail():
    """The probe sees an arrow that is there, in a child forked after torch's import
    (checkpoint -> model) and in one forked before it (model -> torch), and walks
    the packages it is given."""
    to_model, to_torch = loaded_after_imports(
        [(["detr_ray.checkpoint"], ("detr_ray",)), (["detr_ray.model.build"], ("torch",))]
    )
    assert "detr_ray.model.build" in to_model and "torch" in to_torch
    assert "detr_ray.criterion.set_loss" in modules_of(("detr_ray.criterion",))
