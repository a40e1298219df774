"""How a sweep searches: ``detr-ray tune``'s options, checked before anything starts.

The metrics a sweep ranks trials by are those every training run reports
(:mod:`detr_ray.train.reporting`), named as MLflow shows them. Pure: no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

from detr_ray.errors import ConfigError
from detr_ray.tracking.names import LOSS, VAL_AP, VAL_AP50
from detr_ray.tune.space import SearchSpace

SCHEDULERS = ("asha", "fifo")
SEARCHERS = ("random", "optuna")
METRICS = {VAL_AP: "max", VAL_AP50: "max", LOSS: "min"}  # -> mode
METRIC_ALIASES = {"val_AP": VAL_AP, "val_AP50": VAL_AP50}  # earlier spellings


@dataclass(frozen=True)
class SweepOptions:
    """How to search: ``detr-ray tune``'s flags."""

    name: str
    num_samples: int = 4
    max_concurrent: int | None = None
    scheduler: str = "asha"
    search: str = "random"
    metric: str = VAL_AP
    grace_period: int = 1  # epochs every trial gets before ASHA may stop it
    reduction_factor: float = 2.0
    resume: bool = False
    seed: int | None = None  # of the random search
    register_model: str | None = None  # register the best trial's best checkpoint as this

    def __post_init__(self):
        def bad(key, value, what):
            raise ConfigError(f"--{key.replace('_', '-')} must be {what}, got {value!r}")

        if not self.name or "/" in self.name:
            bad("name", self.name, "a non-empty name without '/'")
        if self.num_samples < 1:
            bad("num_samples", self.num_samples, ">= 1")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            bad("max_concurrent", self.max_concurrent, ">= 1")
        if self.scheduler not in SCHEDULERS:
            bad("scheduler", self.scheduler, f"one of {SCHEDULERS}")
        if self.search not in SEARCHERS:
            bad("search", self.search, f"one of {SEARCHERS}")
        if self.metric not in METRICS:
            bad("metric", self.metric, f"one of {list(METRICS)}")
        if self.grace_period < 1:
            bad("grace_period", self.grace_period, ">= 1")
        if self.reduction_factor <= 1:
            bad("reduction_factor", self.reduction_factor, "> 1")
        if self.register_model is not None and not self.register_model.strip():
            bad("register_model", self.register_model, "a model name")

    @property
    def mode(self) -> str:
        return METRICS[self.metric]


def check_search(options: SweepOptions, space: SearchSpace) -> None:
    """The search algorithm can sample this space and its package is installed."""
    if options.search != "optuna":
        return
    if any(p.kind == "grid" for p in space.params):
        raise ConfigError(
            f"{space.source}: --search optuna cannot sample 'grid' entries; "
            "use 'choice' or --search random"
        )
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--search optuna needs Optuna, which is not installed: pip install -e '.[optuna]' "
            "(or pip install optuna), or use --search random"
        ) from None
