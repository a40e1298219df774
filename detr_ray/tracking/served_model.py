"""The file MLflow loads as a registered detr-ray model ("models from code").

:func:`detr_ray.tracking.registry.register_checkpoint` logs this file, not a
pickled object, as the model's code: loading a model runs no pickle.
"""

from mlflow.models import set_model

from detr_ray.tracking.registry import DetrModel

set_model(DetrModel())
