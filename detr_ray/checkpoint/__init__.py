"""Checkpoint files: detr-ray's format, safe reading, and models built from them.

The public names are re-exported here (``from detr_ray.checkpoint import load_checkpoint``).
"""

from detr_ray.checkpoint.files import *  # noqa: F401,F403
