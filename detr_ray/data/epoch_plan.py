"""Which images each optimiser step of an epoch trains on, at any world size.

An epoch is one pass over a permutation of the training set, fixed by
``(seed, epoch)`` alone. Training stands at a *position* in it: the number of
its images already trained on. Each step takes the next ``world x batch``
images and gives rank ``r`` the ``r``-th contiguous share. Because the plan is
built from (position, world size) and nothing else, a run that restarts with a
different number of workers in the middle of an epoch goes on at the image
where it stopped: no image of the epoch is skipped or trained on twice.

The epoch's last step takes what is left. If that would leave some worker
without an image (fewer left than workers), those few images join the step
before instead, so a worker's batch is at most one image larger than
configured, once an epoch. A training set smaller than the world size cannot
be split and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detr_ray.errors import ConfigError


def epoch_permutation(num_images: int, seed: int, epoch: int) -> list[int]:
    """The epoch's order of the dataset's indices (the same order
    ``DistributedSampler(shuffle=True, seed=seed)`` draws for ``epoch``)."""
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(num_images, generator=generator).tolist()


def step_sizes(remaining: int, world: int, batch: int) -> list[int]:
    """Images each of the remaining steps takes (globally), given ``remaining``
    images of the epoch, ``world`` workers and ``batch`` images per worker.

    Every worker gets at least one image per step: a last step smaller than
    ``world`` is folded into the step before it.
    """
    if remaining <= 0:
        return []
    full = world * batch
    sizes = [full] * (remaining // full)
    if remaining % full:
        sizes.append(remaining % full)
    if len(sizes) >= 2 and sizes[-1] < world:
        tail = sizes.pop()
        sizes[-1] += tail
    return sizes


def share(step_size: int, world: int, rank: int) -> tuple[int, int]:
    """``rank``'s contiguous ``[start, stop)`` of a step of ``step_size`` images:
    as even as possible, the first ``step_size % world`` ranks one image more."""
    base, extra = divmod(step_size, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass(frozen=True)
class EpochPlan:
    """The rest of one epoch from ``position``: per step, the images it consumes.

    Attributes:
        order: the epoch's permutation of dataset indices (all of it).
        position: images of ``order`` already trained on.
        sizes: global images per remaining step (see :func:`step_sizes`).
    """

    order: list[int]
    position: int
    world: int
    sizes: list[int]

    @classmethod
    def build(
        cls,
        num_images: int,
        seed: int,
        epoch: int,
        position: int,
        world: int,
        batch: int,
        max_steps: int | None = None,
    ) -> EpochPlan:
        """The plan from ``position`` on; at most ``max_steps`` steps (a debug cap)."""
        if num_images < world:
            raise ConfigError(
                f"the training set has {num_images} image(s), fewer than the {world} "
                "workers: each worker needs at least one image per step; use fewer "
                "workers (scaling.num_workers) or more images"
            )
        if not 0 <= position <= num_images:
            raise ValueError(f"position {position} outside an epoch of {num_images} images")
        sizes = step_sizes(num_images - position, world, batch)
        if max_steps is not None:
            sizes = sizes[:max_steps]
        order = epoch_permutation(num_images, seed, epoch)
        return cls(order=order, position=position, world=world, sizes=sizes)

    def rank_batches(self, rank: int) -> list[list[int]]:
        """``rank``'s dataset indices for each remaining step."""
        batches, start = [], self.position
        for size in self.sizes:
            first, stop = share(size, self.world, rank)
            batches.append(self.order[start + first : start + stop])
            start += size
        return batches


def full_epoch_steps(num_images: int, world: int, batch: int, max_steps: int | None) -> int:
    """Steps in a whole epoch at this world size (for progress lines and ETAs)."""
    steps = len(step_sizes(num_images, world, batch))
    return min(steps, max_steps) if max_steps else steps
