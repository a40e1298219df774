"""Generated COCO-format datasets for tests, each generated once per session.

``make_shapes`` (a session fixture, see ``tests/conftest.py``) returns the
:class:`~detr_ray.data.synthetic.SyntheticDataset` of the given size and
seed, generated the first time it is asked for. The datasets are shared:
a test that changes files generates its own with
:func:`detr_ray.data.synthetic.generate`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from detr_ray.data.labels import LabelMap
from detr_ray.data.synthetic import SyntheticDataset, generate

ShapesFactory = Callable[..., SyntheticDataset]
# the shapes dataset's categories (detr_ray.data.synthetic), as training maps them
SHAPE_LABELS = LabelMap((1, 2, 3), ("circle", "rectangle", "triangle"))


def shapes_factory(root: Path) -> ShapesFactory:
    """A ``make(num_train, num_val, size=64, seed=0, kind="shapes")`` that generates
    into ``root`` once per set of arguments."""
    made: dict[tuple, SyntheticDataset] = {}

    def make(
        num_train: int, num_val: int, size: int = 64, seed: int = 0, kind: str = "shapes"
    ) -> SyntheticDataset:
        key = (num_train, num_val, size, seed, kind)
        if key not in made:
            folder = root / f"{kind}-{num_train}-{num_val}-{size}-{seed}"
            made[key] = generate(folder, num_train, num_val, size=size, seed=seed, kind=kind)
        return made[key]

    return make
