"""A training step that does not log reads the device exactly once.

On a GPU every host read (``.item()``, ``.tolist()``, ``bool(tensor)``,
``.cpu()``, a boolean-mask index) waits for the queued kernels to finish.
The step needs one: the matching costs for scipy, with the workers' agreed
"skip this step" flag in the same copy (``.numpy()`` of the copied array).
These tests count, on the CPU, every call of those methods and every aten
op whose output size depends on the data during one ``train_step``.
"""

from __future__ import annotations

import collections
import contextlib
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from detr_ray.data.collate import PadCollate
from detr_ray.errors import TrainingStopped
from detr_ray.train.engine import StepWindow

from tests.engine.test_query_groups import _engine, shapes  # noqa: F401 (a fixture)
from tests.support.experiments import TINY_DEFORMABLE

HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")
# aten ops that read a value on the host (or size their output by the data)
DATA_DEPENDENT = ("_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal")


class _DataDependentOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in DATA_DEPENDENT:
            self.seen[name] += 1
        if name.startswith("index") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for arg in args
            if isinstance(arg, (list, tuple))
            for i in arg
        ):
            self.seen[f"{name} with a boolean mask"] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _counting_host_reads(monkeypatch):
    calls: collections.Counter = collections.Counter()
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    try:
        yield calls
    finally:
        monkeypatch.undo()


def _batch(engine):
    return PadCollate(32)([engine.train_set[i] for i in range(4)])


@pytest.mark.parametrize(
    "accelerator",
    [
        {},
        {"query_groups": 3},
        {"dense_aux_weight": 2.0},
        {"model": TINY_DEFORMABLE},
        {
            "model": {**TINY_DEFORMABLE, "with_box_refine": True, "two_stage": True},
            "dense_aux_weight": 2.0,
        },
    ],
    ids=["detr", "query groups", "dense head", "deformable", "deformable two-stage dense head"],
)
def test_a_step_that_does_not_log_reads_the_device_once(shapes, monkeypatch, accelerator):  # noqa: F811
    engine = _engine(shapes, **accelerator)
    batch = _batch(engine)
    engine.train_step(batch)  # the first step creates the optimiser's state
    before = {n: p.detach().clone() for n, p in engine.reference_detr.named_parameters()}
    with _counting_host_reads(monkeypatch) as calls, _DataDependentOps() as ops:
        result = engine.train_step(batch)
    assert not result.skipped
    assert dict(calls) == {"numpy": 1}  # the costs and the skip flag, one copy
    assert dict(ops.seen) == {}
    # the counters did not disturb the step: it trained
    assert any(not torch.equal(p, before[n]) for n, p in engine.reference_detr.named_parameters())
    # the counter itself counts: a logged step reads the device (its metrics)
    with _counting_host_reads(monkeypatch) as calls:
        engine.settle_skips()
        engine.step_log(result, StepWindow())
    assert calls["item"] + calls["tolist"] + calls["cpu"] + calls["__float__"] > 0


def _poison_gradients(engine):
    """NaN gradients for the next backward pass (finite outputs and losses)."""
    weight = next(engine.reference_detr.parameters())
    return weight.register_hook(lambda grad: grad * math.nan)


def test_a_non_finite_gradient_skips_the_update_on_the_device_and_is_counted_later(shapes):  # noqa: F811
    engine = _engine(shapes, max_nan_steps=1)
    assert engine.skips_on_device  # the fused AdamW
    batch = _batch(engine)
    engine.train_step(batch)
    engine.state.global_step = 1
    weights = {n: p.detach().clone() for n, p in engine.reference_detr.named_parameters()}
    moments = {k: v["exp_avg"].clone() for k, v in engine.optimizer.state.items()}
    hook = _poison_gradients(engine)
    result = engine.train_step(batch)
    hook.remove()
    assert not result.skipped and engine.state.skipped_steps == []  # not read yet
    for name, value in engine.reference_detr.named_parameters():  # ...but nothing was updated
        assert torch.equal(value, weights[name]), name
    for key, state in engine.optimizer.state.items():
        assert torch.equal(state["exp_avg"], moments[key])
        assert float(state["step"]) == 1.0  # the skipped update is not counted
    engine.settle_skips()
    assert engine.state.skipped_steps == [2] and engine.state.nan_streak == 1
    # a good step trains again and ends the streak
    engine.state.global_step = 2
    engine.train_step(batch)
    engine.settle_skips()
    assert engine.state.nan_streak == 0
    assert any(not torch.equal(p, weights[n]) for n, p in engine.reference_detr.named_parameters())
    # two in a row, past max_nan_steps=1: the run stops when they are read
    for step in (4, 5):
        engine.state.global_step = step - 1
        hook = _poison_gradients(engine)
        engine.train_step(batch)
        hook.remove()
    with pytest.raises(TrainingStopped, match=r"stopped at step 5 .*non-finite loss or gradient"):
        engine.settle_skips()
    assert engine.state.skipped_steps == [2, 4, 5]
