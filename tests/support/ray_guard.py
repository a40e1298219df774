"""What a test left on the session's Ray: placement groups, CPUs still held.

Ray releases a finished run's resources asynchronously, so this waits up to
``settle_s`` for the cluster to be whole again. Groups still there after that
are removed (so that the next test can run) and described.
"""

from __future__ import annotations

import time


def left_behind(settle_s: float) -> str | None:
    """``None`` if no placement group is left and every CPU is free again
    within ``settle_s``; else a sentence naming what was left (and removed)."""
    import ray
    from ray.util import placement_group_table, remove_placement_group
    from ray.util.placement_group import PlacementGroup

    deadline = time.monotonic() + settle_s
    while True:
        groups = [g for g in placement_group_table().values() if g["state"] != "REMOVED"]
        total = ray.cluster_resources().get("CPU", 0.0)
        free = ray.available_resources().get("CPU", 0.0)
        if not groups and free >= total - 1e-6:
            return None
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for group in groups:
        group_id = ray.PlacementGroupID(bytes.fromhex(group["placement_group_id"]))
        remove_placement_group(PlacementGroup(group_id))
    job = ray.get_runtime_context().get_job_id()
    shown = [
        f"{g['name'] or g['placement_group_id'][:12]} ({g['state']}, "
        f"job {_creator(g['placement_group_id'], job)})"
        for g in groups
    ]
    return (
        f"left {len(groups)} placement group(s) behind {shown}; {free:g} of {total:g} CPUs "
        f"free {settle_s:g} s after it ended"
    )


def _creator(group_id: str, this_job: str) -> str:
    """The job that created a group (its id ends with the job's id)."""
    creator = group_id[-len(this_job) :]
    return f"{creator}, this driver" if creator == this_job else creator
