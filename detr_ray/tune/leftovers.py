"""Placement groups a stopped trial can leave behind, and their removal.

When Tune stops a trial (ASHA, an interrupt) while the trial's Ray Train
controller is still starting its workers, the workers' placement group was
created but not yet handed to Train's own cleaner. Ray scopes such a group to
the *job*, so it stays until the driver exits: harmless for ``detr-ray tune``
(its process ends), but a notebook or any long-lived driver that calls
:func:`detr_ray.tune.sweep.run_sweep` would keep those CPUs reserved and the
next run would wait for room that never comes.

A placement group's id ends with the id of the job that created it (actors
included), so the sweep can tell its own groups from anyone else's: every
group of this job created during the sweep and still there after
``Tuner.fit`` returns belongs to a trial that has ended.

Order matters. A stopped trial's controller dies shortly *after* ``Tuner.fit``
returns (Ray kills it when its trial's actor is gone). Removing its group while
it still lives kills its workers, and the controller, seeing workers die,
starts new ones in a *new* group (``run.max_failures``) that nothing removes.
So the removal waits for this job's controllers to end first.
"""

from __future__ import annotations

import time

# The class name of Ray Train's controller actor, one per Train run (Ray 2.60).
CONTROLLER_CLASS = "TrainController"


def this_jobs_groups() -> set[str]:
    """Hex ids of this job's placement groups that are not removed."""
    import ray
    from ray.util import placement_group_table

    job = ray.get_runtime_context().get_job_id()
    return {
        group_id
        for group_id, group in placement_group_table().items()
        if group_id.endswith(job) and group["state"] != "REMOVED"
    }


def wait_for_controllers(timeout_s: float) -> bool:
    """Wait until no Ray Train controller of this job is alive; ``True`` if
    none is, ``False`` if one still was after ``timeout_s`` (or Ray's State
    API, which answers this, did not)."""
    import ray
    from ray.util.state import list_actors

    context = ray.get_runtime_context()
    filters = [
        ("job_id", "=", context.get_job_id()),
        ("class_name", "=", CONTROLLER_CLASS),
        ("state", "!=", "DEAD"),
    ]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            alive = list_actors(address=context.gcs_address, filters=filters)
        except Exception:  # noqa: BLE001 (no State API on this cluster: nothing to wait on)
            return False
        if not alive:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)


def remove_groups_left_since(before: set[str], controllers_timeout_s: float = 60.0) -> int:
    """Once this job's Train controllers have ended (at most
    ``controllers_timeout_s``), remove this job's groups that were created
    after ``before`` was taken; returns how many were removed."""
    import ray
    from ray.util import remove_placement_group
    from ray.util.placement_group import PlacementGroup

    wait_for_controllers(controllers_timeout_s)
    left = this_jobs_groups() - before
    for group_id in left:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group_id)))
    return len(left)
