"""The DETR model, in torch alone.

``build.py`` (a :class:`~detr_ray.config.model.ModelConfig` -> model),
``backbone.py``, ``position_encoding.py``, ``transformer.py``, ``detr.py``,
``postprocess.py``; ``training_detr.py`` (the training-only query groups and
dense head around a DETR); ``official.py`` and ``pretrained.py`` convert and
load other models' state dicts (reading their files is
:mod:`detr_ray.checkpoint`'s). Import from the module that owns a name; this
package imports nothing itself.
"""
