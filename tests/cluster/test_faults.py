"""A Ray cluster of three nodes on this machine (a head without CPUs and two
1-CPU worker nodes, one ``ray.cluster_utils.Cluster`` for the module): a run
across nodes, and real faults.

- a node SIGKILLed in the middle of an elastic run's epoch: the run goes on
  with one worker, then grows back to two when a node returns; every image of
  every epoch goes into the model exactly once. Its dataset is in a bucket (a
  real S3 API, moto's server, on loopback), read through a node cache that
  the nodes' workers share;
- in a fixed-size run, a training worker SIGKILLed: restarted from the latest
  checkpoint within ``run.max_failures``, the run FAILED past it; then the
  driver SIGKILLed: the same command resumes the same MLflow run and marks the
  dead driver's run KILLED as it starts (a stopped job's run ending KILLED is
  tested in ``tests/cluster/test_jobs.py``). Its two workers run on two
  nodes: nothing assumes a single node (one storage path, one MLflow run that
  says where its workers ran).

In every case MLflow holds one run whose loss history has no repeated step.

- ``predict --cluster`` over the two nodes, on a few hundred images in a
  bucket: the detections of in-process ``predict``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from detr_ray import storage
from detr_ray.batch.parts import read_records
from detr_ray.evaluation.predict import predict_images
from detr_ray.storage import StorageOptions
from detr_ray.train.hooks import FaultHooks

from tests.support.experiments import tiny_experiment
from tests.support.fault_cluster import (
    Driver,
    attempts,
    cluster_on_this_machine,
    end_running_drivers,
    records,
    trained_images_by_epoch,
    wait_until,
    write_config,
)
from tests.support.predictions import assert_same_predictions
from tests.support.servers import S3_REGION, s3_server, upload_dataset

NUM_TRAIN = 24  # images: 6 steps an epoch with 2 workers x batch 2, 12 with one
# How long a test waits for what it needs a run to reach: on a busy 2-core
# machine a driver's start alone takes up to a minute (only a failure waits it out).
WAIT_S = 300


@pytest.fixture(scope="module")
def cluster():
    with cluster_on_this_machine(worker_nodes=2) as (cluster, nodes):
        yield cluster, nodes


@pytest.fixture(autouse=True)
def no_driver_left_running():
    """A test that fails half-way must not leave its driver holding the
    cluster's CPUs for the next test (which would then wait for them)."""
    yield
    end_running_drivers()


@pytest.fixture(scope="module")
def shapes(make_shapes):
    return make_shapes(num_train=NUM_TRAIN, num_val=2, size=64, seed=3)


def fault_config(shapes, tmp_path: Path, name: str, **sections) -> Path:
    """A tiny run (a checkpoint every 2 steps); its driver's workers record
    what they train on (:func:`recording`)."""
    raw = tiny_experiment(shapes, tmp_path / "runs", name)
    raw["train"].update(report_every=2, eval_every=10, log_every=1)
    raw["tracking"].update(log_images=0, system_metrics_every=0)
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return write_config(raw, tmp_path / f"{name}.yaml")


def recording(tmp_path: Path) -> FaultHooks:
    """Every worker records each step into ``tmp_path/records``, slowed to about
    0.3 s a step, so a test can act in the middle of an epoch."""
    return FaultHooks(record_images=str(tmp_path / "records"), step_delay_s=0.3)


def one_mlflow_run(tmp_path: Path, name: str):
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("detr-ray")
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("detr_ray.run_dir", "").endswith(f"/{name}")
    ]
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def assert_each_image_once_per_epoch(rows: list[dict], epochs: int, shapes) -> None:
    import json

    ids = sorted(im["id"] for im in json.loads(Path(shapes.train_ann).read_text())["images"])
    by_epoch = trained_images_by_epoch(rows)
    assert sorted(by_epoch) == list(range(epochs))
    for epoch, images in by_epoch.items():
        assert sorted(images) == ids, f"epoch {epoch}"


def assert_no_repeated_steps(client, run, last_step: int) -> None:
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, last_step + 1))


@pytest.fixture
def data_in_a_bucket(shapes):
    """``(data section, endpoint)``: ``shapes`` in a bucket of an S3 API on loopback."""
    with s3_server("elastic-data") as endpoint:
        yield upload_dataset(shapes, "s3://elastic-data", endpoint), endpoint


def test_elastic_run_survives_a_lost_node_and_grows_back(
    cluster, shapes, data_in_a_bucket, tmp_path
):
    ray_cluster, nodes = cluster
    data, endpoint = data_in_a_bucket
    config = fault_config(
        shapes,
        tmp_path,
        "elastic",
        # long enough with one worker (~30 s) to outlast Ray's view of the
        # cluster catching up with the returning node (refreshed every 20 s)
        train={"epochs": 5},
        scaling={"resize_interval_s": 1.0},
        run={"max_failures": 3, "storage_endpoint": endpoint},
        data=data | {"cache_dir": str(tmp_path / "node-cache")},
    )
    folder = tmp_path / "records"
    driver = Driver(
        config,
        ray_cluster.address,
        tmp_path / "driver.log",
        "--num-workers",
        "1:2",
        hooks=recording(tmp_path),
    )

    def at(world: int, after_step: int = 0):
        def found() -> list[dict]:
            return [r for r in records(folder) if r["world"] == world and r["step"] > after_step]

        return found

    wait_until(
        lambda: [r for r in at(2)() if r["step"] >= 3], WAIT_S, "step 3 with 2 workers", driver
    )
    lost = nodes.pop()  # the node of one worker (the head has no CPU for either)
    ray_cluster.remove_node(lost, allow_graceful=False)  # SIGKILL of its processes
    shrunk = wait_until(at(1), WAIT_S, "a step with 1 worker", driver)
    nodes.append(ray_cluster.add_node(num_cpus=1))  # capacity returns
    wait_until(at(2, after_step=max(r["step"] for r in shrunk)), WAIT_S, "2 workers again", driver)
    assert driver.wait(300) == 0, driver.output()[-4000:]

    rows = records(folder)
    worlds = [a["world"] for a in attempts(rows)]
    assert worlds[0] == 2 and 1 in worlds and worlds[-1] == 2, worlds
    assert_each_image_once_per_epoch(rows, 5, shapes)
    cached = {p.name for p in (tmp_path / "node-cache").rglob("*.png")}
    assert cached >= {p.name for p in Path(shapes.train_images).iterdir()}
    client, run = one_mlflow_run(tmp_path, "elastic")
    assert run.info.status == "FINISHED"
    last_step = max(r["step"] for r in rows)
    assert_no_repeated_steps(client, run, last_step)
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "world_size")}
    assert {1.0, 2.0} <= set(history.values())
    batches = client.get_metric_history(run.info.run_id, "global_batch")
    assert {m.value for m in batches} == {2.0, 4.0}
    redone = client.get_metric_history(run.info.run_id, "restart/steps_redone")
    # one count per restart, at the step it resumed from: two restarts from the
    # same checkpoint (the 1-worker attempt replaced before its next one) share
    # one point, as every metric keeps one value per step
    resumed_at = {a["start"] for a in attempts(rows)[1:]}
    assert sorted(m.step for m in redone) == sorted(resumed_at)


def test_killed_workers_then_a_killed_driver_end_in_one_finished_run(cluster, shapes, tmp_path):
    # One fixed-size run of 2 workers (6 steps an epoch, a checkpoint every 2),
    # run by the same command three times:
    #   A: rank 1 SIGKILLed -> restart from a checkpoint (run.max_failures=1);
    #      rank 1 SIGKILLed again -> past max_failures: exit 1, run FAILED;
    #   B: resumes; its driver's process group SIGKILLed -> run left RUNNING;
    #   C: marks B's run KILLED as it starts, resumes it and finishes.
    ray_cluster, nodes = cluster
    folder = tmp_path / "records"
    config = fault_config(shapes, tmp_path, "fixed", train={"epochs": 3}, run={"max_failures": 1})

    def driver(log: str) -> Driver:
        return Driver(config, ray_cluster.address, tmp_path / log, hooks=recording(tmp_path))

    def new_attempt_past(step: int, seen: set[str], driver: Driver, rank: int = 0) -> dict:
        def found() -> list[dict]:
            rows = records(folder)
            return [
                r
                for r in rows
                if r["attempt"] not in seen and r["rank"] == rank and r["step"] > step
            ]

        return wait_until(found, WAIT_S, f"rank {rank} of a new attempt past step {step}", driver)[
            0
        ]

    def attempt_ids() -> set[str]:
        return {a["attempt"] for a in attempts(records(folder))}

    a = driver("a.log")
    row = new_attempt_past(2, set(), a, rank=1)
    os.kill(row["pid"], signal.SIGKILL)  # the first failure: restarted
    restart = new_attempt_past(0, {row["attempt"]}, a, rank=1)
    os.kill(restart["pid"], signal.SIGKILL)  # the second: past run.max_failures=1
    assert a.wait(120) == 1
    assert "training failed after 1 restart(s) (run.max_failures)" in a.output()
    assert "checkpoints are kept in" in a.output()
    _, run = one_mlflow_run(tmp_path, "fixed")
    assert run.info.status == "FAILED"
    run_id = run.info.run_id
    first_two = attempts(records(folder))
    assert [x["world"] for x in first_two] == [2, 2] and first_two[1]["start"] in (0, 2, 4)

    b = driver("b.log")
    new_attempt_past(0, attempt_ids(), b)  # it trains again...
    b.kill(signal.SIGKILL)  # ...and dies with its process group
    b.wait(30)
    _, run = one_mlflow_run(tmp_path, "fixed")
    assert run.info.status == "RUNNING"  # nobody was left to say otherwise

    c = driver("c.log")
    assert c.wait(300) == 0, c.output()[-4000:]
    assert "was left RUNNING by a driver that died: marked KILLED" in c.output()
    # Each node has 1 CPU and each worker asks for 1: the workers ran on two
    # nodes, and nothing assumed one (one storage path, one checkpoint folder).
    assert "[detr-ray] 2 worker(s) on 2 node(s)" in c.output()
    run_dir = tmp_path / "runs" / "fixed"
    assert f"latest checkpoint: {run_dir / 'epoch0003_step0000018'}" in c.output()
    assert (run_dir / "epoch0003_step0000018" / "checkpoint.pt").is_file()
    rows = records(folder)
    assert len(attempts(rows)) == 4 and {x["world"] for x in attempts(rows)} == {2}
    assert_each_image_once_per_epoch(rows, 3, shapes)
    client, run = one_mlflow_run(tmp_path, "fixed")  # one run all along
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert_no_repeated_steps(client, run, 18)
    worker_nodes = run.data.tags["detr_ray.worker_nodes"].split(",")
    assert len(worker_nodes) == 2 and set(worker_nodes) == {n.node_id for n in nodes}


def test_prediction_over_two_nodes_gives_in_process_predictions(
    cluster, tiny_checkpoint, make_shapes, tmp_path
):
    ray_cluster, _ = cluster
    images = make_shapes(num_train=2, num_val=200, size=64, seed=12).val_images
    checkpoint = str(tiny_checkpoint[0])
    json_path, _ = predict_images(checkpoint, [images], tmp_path / "one", score_threshold=0.05)
    expected = {Path(r["file"]).name: r for r in json.loads(json_path.read_text())}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}

    def predict(source: str, out: str, *more: str) -> None:
        command = [sys.executable, "-m", "detr_ray.cli", "predict", "--cluster", source]
        command += ["--checkpoint", checkpoint, "--out", out, "--threshold", "0.05"]
        command += ["--address", ray_cluster.address, "--actors", "2", "--batch-size", "8"]
        done = subprocess.run(
            command + list(more), env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "predicted 200 image(s)" in done.stdout

    # (from a local folder, which only one machine can read, in tests/ray/test_batch_predict.py)
    with s3_server("predict-data") as endpoint:
        options = StorageOptions(endpoint, S3_REGION)
        for path in sorted(images.iterdir()):
            storage.write_bytes(f"s3://predict-data/val/{path.name}", path.read_bytes(), options)
        predict("s3://predict-data/val", "s3://predict-data/out", "--endpoint", endpoint)
        records = list(read_records("s3://predict-data/out", options))
    assert_same_predictions(records, expected)
