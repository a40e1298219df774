"""What a run's workers need of a cluster, and how many sweep trials fit: by hand."""

from __future__ import annotations

import pytest

from detr_ray.cluster.resources import WorkerNeed, check_fits_ever, trials_at_once
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


def test_worker_need_counts_workers_per_node_and_names_the_numbers():
    need = WorkerNeed.of(_scaling(num_workers=3, cpus_per_worker=1.5))
    assert (need.workers, need.cpus, need.gpus) == (3, 1.5, 0)
    # one bundle per worker, each on one node: 2 CPUs hold one 1.5-CPU worker, 3 hold two
    assert need.held_by([{"CPU": 2.0}, {"CPU": 3.0}]) == 1 + 2
    assert need.shortfall([{"CPU": 2.0}, {"CPU": 3.0}], "free") is None
    # 4.5 CPUs in total would hold three by sum, but no node holds more than one
    short = need.shortfall([{"CPU": 1.5}, {"CPU": 1.5}, {"CPU": 1.4}], "free")
    assert short == (
        "the run needs 3 worker(s) x 1.5 CPU but the cluster has 4.4 CPU(s) free on 3 nodes "
        "(at most 1.5 CPU(s) on one)"
    )
    # an elastic run starts with min_workers
    assert WorkerNeed.of(_scaling(num_workers=4, min_workers=2)).workers == 2
    # GPUs: whichever runs out first on each node
    gpu = WorkerNeed.of(_scaling(num_workers=8, cpus_per_worker=2.0, use_gpu=True))
    assert str(gpu) == "8 worker(s) x 2 CPU + 1 GPU"
    assert gpu.held_by([{"CPU": 16.0, "GPU": 4.0}, {"CPU": 4.0, "GPU": 4.0}]) == 4 + 2
    assert gpu.shortfall([{"CPU": 64.0, "GPU": 4.0}], "free") == (
        "the run needs 8 worker(s) x 2 CPU + 1 GPU but the cluster has 64 CPU(s) free and 4 GPU(s)"
    )


def test_a_fixed_cluster_that_can_never_hold_the_run_is_refused_with_the_keys():
    with pytest.raises(ConfigError) as e:
        check_fits_ever(WorkerNeed.of(_scaling(num_workers=3)), [{"CPU": 2.0}])
    message = str(e.value)
    assert "3 worker(s) x 1 CPU" in message and "2 CPU(s) in total" in message
    assert "--num-workers" in message and "scaling.cpus_per_worker" in message
    assert "--gpu" in message
    check_fits_ever(WorkerNeed.of(_scaling(num_workers=2)), [{"CPU": 2.0}])  # fits: no error
