"""COCO-format data: the dataset (``coco.py``), DETR's transforms
(``transforms.py``, configured by ``augmentation.py``), padding collation
(``collate.py``), the category-id/label map (``labels.py``) and the generated
datasets (``synthetic.py``). This package imports nothing itself."""
