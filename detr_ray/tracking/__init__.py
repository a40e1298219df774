"""MLflow tracking: where runs are tracked (``store.py``), the tracked runs
(``runs.py``), the metric queue and system metrics, the model registry and the
served model, the dashboard. This package imports nothing itself, so that the
store's resolution and checks load without MLflow."""
