"""COCO-format data: annotations read and cleaned (``annotations.py``), images
(``images.py``), the dataset (``coco.py``), DETR's transforms (``transforms.py``,
configured by :class:`~detr_ray.config.augmentation.AugmentationConfig`), padding
collation (``collate.py``), the category-id/label map (``labels.py``), which
images each step takes (``epoch_plan.py``), ``data check`` (``check.py``) and the
generated datasets (``synthetic.py``, ``glyphs.py``). This package imports nothing
itself."""
