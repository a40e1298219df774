"""Fault hooks for tests: installed beside a run, never part of its experiment."""

from __future__ import annotations

import json

import pytest
import torch

from detr_ray.config import ExperimentConfig
from detr_ray.errors import ConfigError, DataError
from detr_ray.train.hooks import HOOKS_ENV, FaultHooks


def test_hooks_travel_as_a_dict_or_an_environment_variable(monkeypatch):
    hooks = FaultHooks(fail_once_at_step=3, nan_at_steps=(2, 5), step_delay_s=0.1)
    assert FaultHooks.from_dict(hooks.to_dict()) == hooks
    assert FaultHooks.from_dict(json.loads(json.dumps(hooks.to_dict()))) == hooks  # lists
    assert FaultHooks.from_dict(None) is None and FaultHooks.from_dict({}) is None
    monkeypatch.delenv(HOOKS_ENV, raising=False)
    assert FaultHooks.from_env() is None
    monkeypatch.setenv(HOOKS_ENV, json.dumps({"record_images": "/tmp/r"}))
    assert FaultHooks.from_env() == FaultHooks(record_images="/tmp/r")


def test_bad_hooks_are_named(monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown hook 'fail_at'; hooks are \["):
        FaultHooks.from_dict({"fail_at": 3})
    with pytest.raises(ConfigError, match="step_delay_s must be >= 0"):
        FaultHooks(step_delay_s=-1)
    monkeypatch.setenv(HOOKS_ENV, "{not json")
    with pytest.raises(ConfigError, match=f"{HOOKS_ENV} is not JSON"):
        FaultHooks.from_env()


def test_the_experiment_has_no_debug_section():
    assert "debug" not in ExperimentConfig().to_dict()
    with pytest.raises(ConfigError, match="unknown key debug"):
        ExperimentConfig.from_dict({"debug": {"step_delay_s": 1}})


def test_what_a_worker_does_with_the_hooks(tmp_path):
    run_dir = str(tmp_path / "run")
    records = tmp_path / "records"
    hooks = FaultHooks(fail_once_at_step=2, nan_at_steps=(3,), record_images=str(records))
    from detr_ray.storage import DEFAULT_OPTIONS

    rank0 = hooks.for_worker(run_dir, DEFAULT_OPTIONS, rank=0)
    rank1 = hooks.for_worker(run_dir, DEFAULT_OPTIONS, rank=1)
    rank1.before_step(2)  # only rank 0 fails
    with pytest.raises(RuntimeError, match="injected failure at step 2"):
        rank0.before_step(2)
    rank0.before_step(2)  # once per run folder: the restarted attempt goes on
    scores = torch.ones(2, 3)
    assert torch.isnan(rank0.outputs(3, scores)).all()
    assert torch.equal(rank0.outputs(4, scores), scores) and torch.equal(
        rank1.outputs(3, scores), scores
    )
    rank0.start_attempt("0-123")
    rank0.after_step([7, 9], epoch=0, step_number=1, world_size=2)
    (line,) = [
        json.loads(x) for f in records.glob("rank0-*.jsonl") for x in f.read_text().splitlines()
    ]
    assert (line["attempt"], line["images"], line["world"], line["rank"]) == ("0-123", [7, 9], 2, 0)
    FaultHooks().for_worker(run_dir, DEFAULT_OPTIONS, 0).before_scoring()  # off: nothing
    with pytest.raises(DataError, match="injected data error while scoring"):
        FaultHooks(fail_scoring=True).for_worker(run_dir, DEFAULT_OPTIONS, 0).before_scoring()
