"""The wait for a run's workers on the session's Ray, and the tier's leak guard.

The session's Ray was started by the test process, not by the run: to the
run it is a cluster that may grow, so it waits, bounded, saying what holds
the cluster. A placement group the test itself creates plays the run that
holds it.
"""

from __future__ import annotations

import threading
import time

import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.util import placement_group, remove_placement_group
from ray.util.placement_group import PlacementGroup

from detr_ray.config import ExperimentConfig
from detr_ray.errors import ClusterError
from detr_ray.train.launcher import run_training

from tests.support.experiments import tiny_experiment
from tests.support.ray_guard import left_behind

pytestmark = pytest.mark.usefixtures("ray_session")


def test_a_run_waiting_for_held_cpus_names_the_holder_and_ends_at_its_deadline(
    make_shapes, tmp_path
):
    total = ray.cluster_resources()["CPU"]
    holder = placement_group([{"CPU": total - 1}], name="held-by-the-test")
    ray.get(holder.ready(), timeout=30)
    config = ExperimentConfig.from_dict(
        tiny_experiment(
            make_shapes(8, 4), tmp_path / "runs", "waits", scaling={"start_timeout_s": 2}
        )
    )
    started = time.monotonic()
    try:
        with pytest.raises(ClusterError) as e:
            run_training(config)
    finally:
        remove_placement_group(holder)
    took = time.monotonic() - started
    message = str(e.value)
    assert (
        "the run needs 2 worker(s) x 1 CPU but the cluster has 1 CPU(s) free; held by "
        f"placement group 'held-by-the-test' (1 x {{CPU: {total - 1:g}}})"
    ) in message
    assert "Gave up after 2 s (scaling.start_timeout_s" in message and took < 30
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("detr-ray").experiment_id])
    assert run.info.status == "FAILED" and "held-by-the-test" in run.data.tags["detr_ray.error"]


def test_the_guard_names_and_removes_a_leaked_placement_group():
    leaked = placement_group([{"CPU": 1}], name="leaked-by-the-test")
    ray.get(leaked.ready(), timeout=30)
    left = left_behind(settle_s=1)
    job = ray.get_runtime_context().get_job_id()
    assert left is not None
    assert (
        f"1 placement group(s) behind ['leaked-by-the-test (CREATED, job {job}, this driver)']"
        in left
    )
    total = ray.cluster_resources()["CPU"]
    assert f"{total - 1:g} of {total:g} CPUs free" in left
    assert left_behind(settle_s=10) is None  # removed: the next test finds the cluster whole


@ray.remote(num_cpus=0)
class TrainController:
    """Plays Ray Train's controller inside a stopped trial (Ray names an actor's
    class by its qualified name: this one is at the module's top, as Ray's is)."""

    def start_workers(self) -> str:
        return placement_group([{"CPU": 1}]).id.hex()


def test_a_sweep_removes_only_the_groups_its_own_job_made_since_it_began_once_its_controllers_end():
    from ray.train.v2._internal.execution.controller import TrainController as RaysController

    from detr_ray.tune.leftovers import CONTROLLER_CLASS, remove_groups_left_since, take_stock

    assert RaysController.__name__ == CONTROLLER_CLASS  # the actors the removal waits for
    # An earlier run's controller, idle and alive, with a group: not the sweep's.
    idle = TrainController.remote()
    kept = ray.get(idle.start_workers.remote())
    before = take_stock()
    assert kept in before.groups and len(before.controllers) >= 1

    controller = TrainController.remote()
    try:
        # A controller that outlives the wait (1 s here): its group goes all the same.
        ray.get(controller.start_workers.remote())
        started = time.monotonic()
        assert remove_groups_left_since(before, controllers_timeout_s=1) == 1
        assert time.monotonic() - started >= 1.0
        # A dying controller (killed 3 s from now): its group is removed only once it is
        # dead, else a live one would start new workers in a new group. The idle one,
        # alive throughout, is not waited for (the wait's limit is 60 s).
        made = ray.get(controller.start_workers.remote())
        assert made in take_stock().groups
        threading.Timer(3.0, ray.kill, args=(controller,)).start()
        started = time.monotonic()
        assert remove_groups_left_since(before) == 1
        assert 3.0 <= time.monotonic() - started < 30
        assert take_stock().groups == before.groups  # the older group is not the sweep's
    finally:
        for actor in (controller, idle):
            ray.kill(actor)
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(kept)))
    assert left_behind(settle_s=10) is None
