"""detr-ray: DETR object detectors trained at scale on Ray.

The core (boxes, matching, losses, model, data, evaluation) imports only torch,
numpy, scipy, pycocotools and pillow; Ray and MLflow live at the edges.
"""

__version__ = "0.1.0"
