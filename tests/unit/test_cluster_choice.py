"""Which Ray cluster a command joins when none is named, probed before joining.

Ray's temp folder here is the test's own (``RAY_TMPDIR``); the "clusters"
are a listening loopback socket (alive) and a port closed again (dead).
"""

from __future__ import annotations

import socket

import pytest

from detr_ray.cluster.local import choose_cluster, ray_temp_dir, recorded_cluster
from detr_ray.errors import ClusterError

from tests.support.ports import free_port


@pytest.fixture
def ray_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    return tmp_path / "ray"


@pytest.fixture
def listening():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"127.0.0.1:{server.getsockname()[1]}"


def test_no_record_starts_a_local_ray(ray_tmp):
    assert ray_temp_dir() == ray_tmp and recorded_cluster() is None
    choice = choose_cluster(None)
    assert choice.starts_here and choice.stale is None


def test_a_live_record_is_joined_with_a_line_saying_so(ray_tmp, listening):
    (ray_tmp / "ray_current_cluster").write_text(listening + "\n")
    choice = choose_cluster("auto")
    assert choice.address == listening and not choice.starts_here
    assert listening in choice.line and "ray_current_cluster" in choice.line


def test_a_stale_record_is_warned_about_and_a_fresh_ray_started(ray_tmp):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there any more
    record = ray_tmp / "ray_current_cluster"
    record.write_text(dead)
    choice = choose_cluster(None)
    assert choice.starts_here
    assert str(record) in choice.stale and dead in choice.stale
    assert "ray stop --force" in choice.stale


def test_a_named_cluster_that_does_not_answer_stays_an_error(ray_tmp, monkeypatch):
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(ClusterError, match=f"{dead}.*--address"):
        choose_cluster(dead)
    monkeypatch.setenv("RAY_ADDRESS", dead)
    with pytest.raises(ClusterError, match=f"{dead}.*RAY_ADDRESS"):
        choose_cluster(None)
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # Ray's word for "this machine's": the record
    assert choose_cluster(None).starts_here
