"""N workers train like one: losses and DDP gradients of a split batch.

Two real processes in a gloo group (torch.multiprocessing, no Ray) each take
half of a batch; the mean of their losses and their DDP-averaged gradients
must equal one process holding the whole batch.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from detr_ray.ops.dist import get_rank, get_world_size, is_distributed, max_across, reduce_mean

from tests.support.gloo import exit_without_teardown
from tests.support.reference_setup import reference_criterion

NUM_LAYERS, NUM_QUERIES, NUM_CLASSES, FEATURES = 3, 6, 4, 5


class ToyHead(nn.Module):
    """Per-query features -> (L, B, Q, K+1) logits and (L, B, Q, 4) sigmoid boxes."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.cls = nn.Parameter(
            torch.randn(FEATURES, NUM_LAYERS * (NUM_CLASSES + 1), generator=g, dtype=torch.float64)
        )
        self.box = nn.Parameter(
            torch.randn(FEATURES, NUM_LAYERS * 4, generator=g, dtype=torch.float64)
        )

    def forward(self, features):  # (B, Q, F)
        b, q, _ = features.shape
        cls = (features @ self.cls).view(b, q, NUM_LAYERS, -1).permute(2, 0, 1, 3)
        box = (features @ self.box).view(b, q, NUM_LAYERS, 4).permute(2, 0, 1, 3).sigmoid()
        return cls, box


def make_data(counts, seed):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(len(counts), NUM_QUERIES, FEATURES, generator=g, dtype=torch.float64)
    targets = []
    for n in counts:
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.3 + 0.05
        targets.append(
            {
                "labels": torch.randint(0, NUM_CLASSES, (n,), generator=g),
                "boxes": torch.cat([xy, wh], 1),
            }
        )
    return features, targets


def step(model, features, targets):
    """Losses (averaged over workers) and gradients after one backward."""
    criterion = reference_criterion(NUM_CLASSES)
    losses = criterion(*model(features), targets)
    losses["loss"].backward()
    averaged = {k: reduce_mean(v.detach()) for k, v in losses.items()}
    module = model.module if hasattr(model, "module") else model
    return averaged, {n: p.grad.clone() for n, p in module.named_parameters()}


def _worker(rank, world_size, init_file, counts, seed, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        features, targets = make_data(counts, seed)
        half = len(counts) // world_size
        mine = slice(rank * half, (rank + 1) * half)
        model = nn.parallel.DistributedDataParallel(ToyHead())
        result = step(model, features[mine], targets[mine])
        flag = torch.tensor([float(rank == 1), 0.0])  # only rank 1 raises the first flag
        agreed = max_across(flag)
        torch.save(
            {"rank": get_rank(), "world": get_world_size(), "result": result, "agreed": agreed},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
        dist.barrier()  # both ranks have written their results
    except BaseException:
        dist.destroy_process_group()
        raise
    exit_without_teardown()


@pytest.mark.parametrize(
    "counts",
    [
        [2, 0, 5, 1],  # both halves have targets, one image is empty
        [3, 4, 0, 0],  # the second worker has no targets at all
        [0, 0, 0, 0],  # nobody has targets
    ],
)
def test_two_gloo_workers_equal_one_process(tmp_path, counts):
    seed = sum(counts)
    mp.start_processes(
        _worker,
        args=(2, str(tmp_path / "init"), counts, seed, str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    single_losses, single_grads = step(ToyHead(), *make_data(counts, seed))
    for rank in range(2):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        assert (saved["rank"], saved["world"]) == (rank, 2)
        assert saved["agreed"].tolist() == [1.0, 0.0]  # every rank sees rank 1's flag
        losses, grads = saved["result"]
        for name, value in single_losses.items():
            torch.testing.assert_close(losses[name], value, atol=1e-6, rtol=0, msg=name)
        for name, grad in single_grads.items():
            torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=0, msg=name)


def test_helpers_without_a_process_group():
    assert not is_distributed()
    assert get_world_size() == 1 and get_rank() == 0
    t = torch.tensor([3.0, 4.0])
    assert reduce_mean(t) is t


def test_a_one_process_group_answers_without_collectives(tmp_path, monkeypatch):
    """Ray Train sets up a group even for one worker: the helpers must give the
    single-process answers there without sending anything through gloo."""
    import detr_ray.ops.dist as detr_dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:

        def no_collective(*args, **kwargs):
            raise AssertionError("a collective was issued in a one-process group")

        for name in ("all_reduce", "all_gather", "all_gather_object"):
            monkeypatch.setattr(detr_dist.torch_dist, name, no_collective)
        assert is_distributed() and get_world_size() == 1
        t = torch.tensor([1.5, -2.0])
        assert torch.equal(detr_dist.all_gather_tensor(t), t[None])
        assert torch.equal(detr_dist.max_across(t), t)
        assert torch.equal(reduce_mean(t), t)
        assert detr_dist.all_gather_objects("node") == ["node"]
    finally:
        monkeypatch.undo()
        dist.destroy_process_group()
