"""Train with 2 Ray Train workers on a 2-node Ray cluster on this machine.

Run by ``tests/test_multinode.py`` in its own process (it starts its own Ray):
``python tests/multinode_run.py CONFIG STORAGE_PATH``. Each node has 1 CPU and
each worker asks for 1, so the two workers cannot share a node. Prints the
rank-0 summary as one JSON line prefixed ``OUTCOME``.
"""

import json
import os
import sys

os.environ.update(
    RAY_AUTH_MODE="disabled",  # a throwaway cluster on loopback, gone when this exits
    RAY_USAGE_STATS_ENABLED="0",
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
)

from ray.cluster_utils import Cluster  # noqa: E402

from detr_ray.config import load_config  # noqa: E402
from detr_ray.train.launcher import run_training  # noqa: E402


def main(config_path: str, storage: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    cluster.connect()
    try:
        config = load_config(
            config_path,
            [
                f"run.storage_path={storage}",
                "run.name=two_nodes",
                "scaling.num_workers=2",
                "scaling.cpus_per_worker=1",
                "train.epochs=1",
                "train.max_steps_per_epoch=2",
                "train.eval_every=1",
                "train.log_every=1",
                "train.batch_size=2",
                "data.val_max_images=4",
                "data.synthetic.num_train=16",
            ],
        )
        outcome = run_training(config)
        print("OUTCOME " + json.dumps(outcome, default=str), flush=True)
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
