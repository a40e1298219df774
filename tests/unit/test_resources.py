"""What a run's workers need of a cluster, and how many sweep trials fit: by hand."""

from __future__ import annotations

import pytest

from detr_ray.cluster.resources import trials_at_once
from detr_ray.config import ScalingConfig
from detr_ray.errors import ConfigError


def _scaling(**values):
    return ScalingConfig(**values)


def test_trials_at_once_counts_whole_trials_on_cpu_and_gpu_clusters():
    # CPU: 2 workers x 0.99 CPU + 0.01 for the trial itself = 1.99 CPUs a trial
    small = _scaling(num_workers=2, cpus_per_worker=0.99)
    assert trials_at_once(small, {"CPU": 2.0}, None)[0] == 1
    assert trials_at_once(small, {"CPU": 4.0}, None)[0] == 2  # 4 / 1.99
    assert trials_at_once(small, {"CPU": 3.97}, None)[0] == 1
    at_once, why = trials_at_once(small, {"CPU": 16.0}, None)
    assert at_once == 8 and "each needs 1.99 CPUs (2 workers x 0.99 + 0.01)" in why
    # --max-concurrent lowers it, never raises it (and says so)
    assert trials_at_once(small, {"CPU": 16.0}, 3)[0] == 3
    at_once, why = trials_at_once(small, {"CPU": 4.0}, 5)
    assert at_once == 2 and "--max-concurrent 5 lowered to 2" in why
    # GPU: whichever runs out first; 8 GPUs hold two 4-worker trials
    gpu = _scaling(num_workers=4, cpus_per_worker=4.0, use_gpu=True)
    assert trials_at_once(gpu, {"CPU": 64.0, "GPU": 8.0}, None)[0] == 2
    assert trials_at_once(gpu, {"CPU": 20.0, "GPU": 8.0}, None)[0] == 1  # 16.01 CPUs a trial
    at_once, why = trials_at_once(gpu, {"CPU": 64.0, "GPU": 15.0}, None)
    assert at_once == 3 and "and 4 GPUs" in why and "15 GPUs" in why
    with pytest.raises(ConfigError, match=r"one trial needs 16.01 CPUs .* and 4 GPUs but the "):
        trials_at_once(gpu, {"CPU": 64.0, "GPU": 3.0}, None)
