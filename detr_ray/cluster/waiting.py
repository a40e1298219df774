"""The one wait before a run's workers start: for the resources they need, bounded.

Ray Train places a run's workers as one placement group and waits, without
a word and without end, until the cluster holds it. The driver looks first
(:func:`wait_for_workers`): a cluster that cannot grow and can never hold the
workers is an error at once; otherwise the driver waits until they fit, says
every :data:`SAY_EVERY_S` seconds what it waits for and what holds the
cluster, and gives up after ``scaling.start_timeout_s`` with that sentence.
Ray is imported inside.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from detr_ray.cluster.resources import CHANGE_KEYS, WorkerNeed, check_fits_ever
from detr_ray.errors import ClusterError

SAY_EVERY_S = 30.0
POLL_S = 1.0


def wait_for_workers(
    need: WorkerNeed,
    can_grow: bool,
    timeout_s: float,
    say: Callable[[str], None] = print,
    say_every_s: float = SAY_EVERY_S,
) -> None:
    """Return once the cluster's free resources hold ``need``.

    ``can_grow``: nodes may join (an autoscaler, a cluster of ``ray up``, a
    node on its way); ``False`` for a Ray started by this command.
    ``timeout_s``: how long to wait (``0``: for ever). The free amounts are
    summed per node, each worker on one node, as Ray places them.

    Raises:
        ConfigError: the cluster cannot grow and can never hold ``need``.
        ClusterError: ``timeout_s`` passed; the message says what was pending.
    """
    import ray

    if not can_grow:
        check_fits_ever(need, _alive_nodes(total=True))
    start = time.monotonic()
    said = None
    while True:
        short = need.shortfall(_alive_nodes(total=False), "free")
        if short is None:
            return
        now = time.monotonic()
        pending = f"waiting for the run's workers: {short}{_holders(ray)}"
        if timeout_s and now - start >= timeout_s:
            raise ClusterError(
                f"{pending}. Gave up after {timeout_s:g} s (scaling.start_timeout_s; 0 waits "
                f"for ever): free the cluster, add nodes, or change {CHANGE_KEYS}"
            )
        if said is None or now - said >= say_every_s:
            limit = f"{timeout_s:g} s" if timeout_s else "no limit"
            say(f"[detr-ray] {pending} (waited {now - start:.0f} s of {limit})")
            said = now
        time.sleep(POLL_S)


def _alive_nodes(total: bool) -> list[dict[str, float]]:
    """Each alive node's resources: its totals, or what is free on it now."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if total:
        return [dict(n.get("Resources", {})) for n in nodes]
    from ray._private.state import available_resources_per_node  # no public per-node view

    free = available_resources_per_node()
    return [dict(free.get(n["NodeID"], {})) for n in nodes]


def _holders(ray) -> str:
    """``; held by placement group 'name' (2 x {CPU: 1})...``: who holds the cluster."""
    from ray.util import placement_group_table

    held = []
    for group in placement_group_table().values():
        if group.get("state") != "CREATED":
            continue
        bundles = list(group.get("bundles", {}).values())
        shape = ", ".join(f"{k}: {v:g}" for k, v in (bundles[0] if bundles else {}).items())
        name = group.get("name") or group["placement_group_id"][:12]
        held.append(f"placement group {name!r} ({len(bundles)} x {{{shape}}})")
    return f"; held by {', '.join(held)}" if held else ""
