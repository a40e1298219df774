"""Scoring and running a trained model: COCO evaluation (``coco_eval.py``) and
prediction on images (``predict.py``). Ray-free and MLflow-free. Import from the
module that owns a name."""
