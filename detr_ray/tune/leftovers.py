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
"""

from __future__ import annotations


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


def remove_groups_left_since(before: set[str]) -> int:
    """Remove this job's groups that were created after ``before`` was taken;
    returns how many were removed."""
    import ray
    from ray.util import remove_placement_group
    from ray.util.placement_group import PlacementGroup

    left = this_jobs_groups() - before
    for group_id in left:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group_id)))
    return len(left)
