"""The DETR model, in torch alone.

``config.py`` (the model config and presets, importable without torch),
``build.py`` (config -> model), ``backbone.py``, ``position_encoding.py``,
``transformer.py``, ``detr.py``, ``postprocess.py``; ``official.py`` and
``pretrained.py`` convert and load other models' state dicts. Import from the
module that owns a name; this package imports nothing, so reading a config
never loads torch.
"""
