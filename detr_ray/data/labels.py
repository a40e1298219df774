"""The map between COCO category ids and the model's contiguous labels.

COCO category ids are sparse (1..90 with gaps) and any dataset may number its
categories as it likes; the model needs labels ``0 .. K-1`` (``K`` is the
background logit). The map is built from the annotation file's categories,
sorted by id, and travels with the dataset into checkpoints so predictions map
back to category ids and names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

# MLflow metric names accept letters, digits, "_ - . space : /".
_UNSAFE_METRIC_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")


@dataclass(frozen=True)
class LabelMap:
    """Contiguous label ``i`` <-> ``category_ids[i]`` named ``names[i]``."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self):
        if len(self.category_ids) != len(self.names):
            raise ValueError("category_ids and names must have the same length")
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"duplicate category ids in {self.category_ids}")
        if not self.category_ids:
            raise ValueError("a label map needs at least one category")

    @classmethod
    def from_categories(cls, categories: Iterable[Mapping]) -> LabelMap:
        """From COCO ``categories`` (dicts with ``id`` and ``name``), sorted by id."""
        ordered = sorted(categories, key=lambda c: int(c["id"]))
        return cls(tuple(int(c["id"]) for c in ordered), tuple(str(c["name"]) for c in ordered))

    @classmethod
    def from_dict(cls, data: Mapping) -> LabelMap:
        """Inverse of :meth:`to_dict` (as stored in checkpoints)."""
        return cls(tuple(int(i) for i in data["category_ids"]), tuple(data["names"]))

    def to_dict(self) -> dict:
        return {"category_ids": list(self.category_ids), "names": list(self.names)}

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label_of(self, category_id: int) -> int:
        """Contiguous label of a category id; KeyError names unknown ids."""
        try:
            return self._label_index[category_id]
        except KeyError:
            raise KeyError(
                f"category id {category_id} is not in the label map {self.category_ids}"
            ) from None

    def category_id(self, label: int) -> int:
        return self.category_ids[label]

    def name(self, label: int) -> str:
        return self.names[label]

    def metric_name(self, label: int) -> str:
        """The category name made safe for an MLflow metric key."""
        return _UNSAFE_METRIC_CHARS.sub("_", self.names[label])

    @cached_property
    def _label_index(self) -> dict[int, int]:
        return {cid: i for i, cid in enumerate(self.category_ids)}
