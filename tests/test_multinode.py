"""A 2-worker training across two Ray nodes on one machine (``ray.cluster_utils.Cluster``).

Nothing may assume a single node: the workers land on different nodes (each
node has 1 CPU, each worker asks for 1), yet the run checkpoints into one
storage path, logs one MLflow run, and says where its workers ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_two_workers_on_two_nodes_share_one_run(tmp_path):
    storage = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "multinode_run.py"),
            str(ROOT / "configs" / "shapes_tiny.yaml"),
            str(storage),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("OUTCOME "))
    outcome = json.loads(line[len("OUTCOME ") :])
    nodes = outcome["worker_nodes"]
    assert len(nodes) == 2 and len(set(nodes)) == 2, nodes
    assert outcome["status"] == "completed" and outcome["global_step"] == 2
    # One checkpoint in the one storage path, written by the two-node run.
    assert outcome["latest_checkpoint"] == str(storage / "two_nodes" / "epoch0001_step0000002")
    assert (Path(outcome["latest_checkpoint"]) / "checkpoint.pt").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    run = client.get_run(outcome["mlflow_run_id"])
    assert run.data.tags["detr_ray.worker_nodes"].split(",") == nodes
    assert [m.step for m in client.get_metric_history(run.info.run_id, "d0.loss_cls")] == [1, 2]
