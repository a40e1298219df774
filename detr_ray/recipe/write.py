"""The config a recipe writes: YAML that ``detr-ray train`` reads, every choice explained.

A header holds the profile's table and the probes' speeds; each key the
recipe chose has a comment above it saying why (from the profile or the
probe). Every other key is written out too, at its default, so the file is
the whole experiment.
"""

from __future__ import annotations

import datetime
import re
import textwrap

import yaml

from detr_ray.data.profile import format_profile
from detr_ray.recipe.make import Recipe, RecipeInputs

_KEY = re.compile(r"^(\s*)([A-Za-z_][\w]*):(.*)$")


def recipe_yaml(recipe: Recipe, inputs: RecipeInputs) -> str:
    """The commented YAML of ``recipe``."""
    today = datetime.date.today().isoformat()
    header = [
        f"# Written by `detr-ray recipe` on {today} for {inputs.train_ann},",
        f"# a budget of {inputs.budget_minutes:g} minutes on {inputs.num_workers} worker(s)"
        + (" with a GPU each" if inputs.gpu else f" x {inputs.cpus_per_worker:g} CPU")
        + (f" of the cluster at {inputs.address}" if inputs.address else " of this machine")
        + ".",
        "# Train it with: detr-ray train THIS_FILE",
        "#",
        "# The training set (detr-ray data profile, at the chosen scale):",
        *(f"# {line}" for line in format_profile(recipe.profile).splitlines()[1:]),
        "#",
        "# Probed training speed, one worker:",
        *(
            f"#   {family}: {probe.images_per_s:.1f} images/s ({probe.step_s * 1000:.0f} ms a "
            f"step of {probe.batch}, the median of {probe.steps} timed)"
            for family, probe in recipe.probes.items()
        ),
        "",
    ]
    reasons = {key: choice.why for key, choice in recipe.plan.choices.items()}
    reasons.setdefault("model.family", "the checkpoint's family")
    body = yaml.safe_dump(recipe.config.to_dict(), sort_keys=False)
    return "\n".join(header) + "\n" + _with_comments(body, reasons)


def _with_comments(body: str, reasons: dict[str, str]) -> str:
    """``body`` with ``# why`` above each key of ``reasons`` (dotted paths)."""
    out: list[str] = []
    path: list[tuple[int, str]] = []  # (indent, key) of the keys enclosing the line
    for line in body.splitlines():
        match = _KEY.match(line)
        if match:
            indent, key = len(match[1]), match[2]
            while path and path[-1][0] >= indent:
                path.pop()
            path.append((indent, key))
            dotted = ".".join(k for _, k in path)
            if dotted in reasons:
                prefix = f"{' ' * indent}# "
                out += textwrap.wrap(
                    reasons[dotted], width=96, initial_indent=prefix, subsequent_indent=prefix
                )
        out.append(line)
    return "\n".join(out) + "\n"
