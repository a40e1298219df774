"""Deformable DETR's parts, in torch alone: ``sampling.py`` (the multi-scale
sampling core, batched over levels, heads and points), ``attention.py``
(multi-scale deformable attention), ``transformer.py`` (encoder and decoder),
``detector.py`` (the detector, with box refinement and two stages). Import
from the module that owns a name."""
