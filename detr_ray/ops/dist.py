"""The few collective operations the core needs, through ``torch.distributed``.

Each is a no-op (or the single-process answer) when no process group is
initialised or the group holds one process (Ray Train sets one up even for a
single worker, where a collective would only cost a hand-off to gloo's
thread), so the same loss code runs in a notebook, a test and a Ray Train
worker. Nothing here knows about Ray: Ray Train sets up the process group and
this module only reads it.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised."""
    return torch_dist.is_available() and torch_dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the default group (1 without one)."""
    return torch_dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return torch_dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (``model`` if unwrapped)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over all processes (all-reduce sum / world size).

    Returns a new tensor; the input is not modified. Without a process group
    it returns ``tensor`` itself. The result carries no gradient history:
    it is meant for normalisers such as the number of positive boxes.
    """
    world_size = get_world_size()
    if world_size == 1:
        return tensor
    reduced = tensor.detach().clone()
    torch_dist.all_reduce(reduced.div_(world_size), op=torch_dist.ReduceOp.SUM)
    return reduced


def all_gather_objects(obj: object) -> list[object]:
    """Every process's ``obj``, in rank order (``[obj]`` without a process group)."""
    world_size = get_world_size()
    if world_size == 1:
        return [obj]
    gathered: list[object] = [None] * world_size
    torch_dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if is_distributed():
        torch_dist.barrier()


def all_gather_tensor(tensor: Tensor) -> Tensor:
    """Stack every process's equally shaped ``tensor``: ``(world_size, *shape)``."""
    if get_world_size() == 1:
        return tensor[None]
    gathered = [torch.empty_like(tensor) for _ in range(get_world_size())]
    torch_dist.all_gather(gathered, tensor.contiguous())
    return torch.stack(gathered)


def max_across(tensor: Tensor) -> Tensor:
    """Elementwise maximum of ``tensor`` over all processes, left on its device
    (no host read): e.g. a "skip this step" flag that every worker must agree on.
    Without a process group it returns ``tensor`` itself."""
    if get_world_size() == 1:
        return tensor
    reduced = tensor.detach().clone()
    torch_dist.all_reduce(reduced, op=torch_dist.ReduceOp.MAX)
    return reduced
