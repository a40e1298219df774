"""The epoch plan: which images each step takes, at any world size.

The promise: an epoch is one pass over its permutation whatever the number of
workers, also when the number changes in the middle of the epoch.
"""

import random

import pytest
from torch.utils.data import DistributedSampler

from detr_ray.data.epoch_plan import EpochPlan, full_epoch_steps, share, step_sizes
from detr_ray.errors import ConfigError


def test_step_sizes_by_hand():
    assert step_sizes(16, 2, 2) == [4, 4, 4, 4]
    assert step_sizes(10, 3, 2) == [6, 4]  # the last step short, every worker has one
    assert step_sizes(7, 3, 2) == [7]  # 6 + 1: the one left over joins the step before
    assert step_sizes(13, 3, 2) == [6, 7]
    assert step_sizes(2, 3, 2) == [2]  # (a single short step cannot be folded)
    assert step_sizes(0, 2, 2) == []


def test_shares_are_contiguous_and_as_even_as_possible():
    assert [share(7, 3, r) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [share(4, 2, r) for r in range(2)] == [(0, 2), (2, 4)]


def test_a_fixed_size_epoch_is_the_samplers_order_in_contiguous_shares():
    # The order is DistributedSampler's for the same (seed, epoch), read whole.
    sampler = DistributedSampler(range(20), num_replicas=1, rank=0, shuffle=True, seed=5)
    sampler.set_epoch(3)
    plan = EpochPlan.build(20, seed=5, epoch=3, position=0, world=2, batch=3)
    assert plan.order == list(sampler)
    rank0, rank1 = plan.rank_batches(0), plan.rank_batches(1)
    assert rank0[0] == plan.order[0:3] and rank1[0] == plan.order[3:6]
    assert [len(b) for b in rank0] == [3, 3, 3, 1] and [len(b) for b in rank1] == [3, 3, 3, 1]


def _trained(num_images, seed, epoch, batch, segments):
    """What a run trains on in one epoch when it restarts at each (world, steps)
    segment's start from the position the previous one reached (steps None: to
    the end). A straightforward second implementation keeps the position."""
    position, seen = 0, []
    for world, steps in segments:
        plan = EpochPlan.build(num_images, seed, epoch, position, world, batch)
        sizes = plan.sizes if steps is None else plan.sizes[:steps]
        batches = [plan.rank_batches(r) for r in range(world)]
        for i, size in enumerate(sizes):
            step = [index for r in range(world) for index in batches[r][i]]
            assert len(step) == size and all(batches[r][i] for r in range(world))
            seen += step
            position += size
    return seen


@pytest.mark.parametrize("trial", range(30))
def test_an_epoch_resized_anywhere_trains_each_image_exactly_once(trial):
    rng = random.Random(trial)
    num_images, batch = rng.randint(8, 60), rng.randint(1, 4)
    segments = [(rng.randint(1, 4), rng.randint(0, 3)) for _ in range(rng.randint(1, 4))]
    segments.append((rng.randint(1, 4), None))
    seen = _trained(num_images, seed=trial, epoch=1, batch=batch, segments=segments)
    assert sorted(seen) == list(range(num_images))
    # and in the epoch's order: a resize neither reorders nor skips
    assert seen == EpochPlan.build(num_images, trial, 1, 0, 1, 1).order


def test_max_steps_caps_an_epoch_and_steps_count_per_world_size():
    plan = EpochPlan.build(20, 0, 0, 0, 2, 2, max_steps=2)
    assert plan.sizes == [4, 4]
    assert full_epoch_steps(20, 2, 2, None) == 5 and full_epoch_steps(20, 2, 2, 3) == 3
    assert full_epoch_steps(20, 1, 2, None) == 10


def test_fewer_images_than_workers_is_refused_with_the_numbers():
    with pytest.raises(ConfigError, match="2 image.*fewer than the 3 workers"):
        EpochPlan.build(2, 0, 0, 0, 3, 1)
