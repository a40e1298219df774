"""``detr-ray recipe``: a config for a dataset and a time budget, every choice explained.

``rules.py`` (the rules, pure), ``probe.py`` (a timed training step on the
data), ``make.py`` (profile, probe, choose), ``write.py`` (the commented
YAML). Import from the module that owns a name.
"""
