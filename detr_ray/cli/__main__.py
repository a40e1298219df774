"""``python -m detr_ray.cli``: the same as ``detr-ray``."""

import sys

from detr_ray.cli import main

sys.exit(main())
