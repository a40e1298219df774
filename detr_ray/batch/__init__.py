"""Batch prediction over a Ray cluster with Ray Data (``detr-ray predict --cluster``).

- :mod:`~detr_ray.batch.sources`: the images to predict on (files, folders,
  globs, bucket prefixes), listed once;
- :mod:`~detr_ray.batch.stages`: what each stage does to a row (decode and
  resize on CPU tasks; the model on actors), plain torch;
- :mod:`~detr_ray.batch.parts`: the JSON Lines part files written under
  ``--out``, and which images they hold already (a re-run skips those);
- :mod:`~detr_ray.batch.pipeline`: the Ray Data pipeline that joins them.
"""
