"""The experiment configuration: typed sections, loaded from YAML, overridable with ``--set``.

Pure: no torch. The public names are re-exported here (``from detr_ray.config
import ExperimentConfig, load_config``).
"""

from detr_ray.config.experiment import *  # noqa: F401,F403
