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
So the removal waits for the controllers that began during the sweep to end
first. (Not for older ones: a Train run this driver ran itself through Ray
Train's own ``fit`` leaves its controller alive and idle, held by the SIGINT
handler ``fit`` installs; detr-ray's launcher puts the driver's handler back,
:class:`~detr_ray.cluster.signals.sigint_kept`.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# The class name of Ray Train's controller actor, one per Train run (Ray 2.60).
CONTROLLER_CLASS = "TrainController"


@dataclass(frozen=True)
class Stock:
    """What this job had on the cluster at one moment (hex ids)."""

    groups: frozenset[str]  # placement groups not removed
    controllers: frozenset[str]  # Ray Train controllers not dead


def take_stock() -> Stock:
    """This job's placement groups and live Train controllers, now."""
    return Stock(frozenset(this_jobs_groups()), frozenset(live_controllers() or ()))


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


def live_controllers() -> set[str] | None:
    """Actor ids of this job's Ray Train controllers that are not dead; ``None``
    if Ray's State API (which answers this) does not."""
    import ray
    from ray.util.state import list_actors

    context = ray.get_runtime_context()
    filters = [
        ("job_id", "=", context.get_job_id()),
        ("class_name", "=", CONTROLLER_CLASS),
        ("state", "!=", "DEAD"),
    ]
    try:
        found = list_actors(address=context.gcs_address, filters=filters, timeout=10)
        return {a.actor_id for a in found}
    except Exception:  # noqa: BLE001 (a cluster without its dashboard)
        return None


def wait_for_controllers(older: frozenset[str], timeout_s: float) -> bool:
    """Wait until every live Train controller of this job is one of ``older``;
    ``True`` once so, ``False`` after ``timeout_s`` (or without a State API)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = live_controllers()
        if alive is None:
            return False
        if alive <= older:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)


def remove_groups_left_since(before: Stock, controllers_timeout_s: float = 60.0) -> int:
    """Once the Train controllers started since ``before`` have ended (at most
    ``controllers_timeout_s``), remove this job's groups made since ``before``;
    returns how many were removed."""
    import ray
    from ray.util import remove_placement_group
    from ray.util.placement_group import PlacementGroup

    wait_for_controllers(before.controllers, controllers_timeout_s)
    left = this_jobs_groups() - before.groups
    for group_id in left:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group_id)))
    return len(left)
