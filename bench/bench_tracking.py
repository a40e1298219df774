"""What tracking costs a training loop when the MLflow server is slow.

    python bench/bench_tracking.py [--config configs/shapes_tiny.yaml] [--steps 48] [--rounds 3]

Starts an MLflow server on 127.0.0.1 (a sqlite store in a temporary folder)
and, in front of it, a small proxy that answers every request 50 ms late
(``--delay-ms``): a tracking server across a busy network. Then trains the
same steps of the config's model in this process (the
:class:`detr_ray.train.engine.Engine` loop that rank 0 runs) three ways:

- ``none``: no tracking at all (the step's metrics are computed and dropped);
- ``sync``: every logged step's metrics sent with one blocking ``log_batch``;
- ``async``: detr-ray's default, through the background queue
  (:mod:`detr_ray.tracking.metric_queue`), flushed at the end inside the timed window.

Images/s is measured over the whole loop's wall time (not the per-window
rate the run logs, whose clock stops while metrics are sent), at the config's
``log_every`` and at ``log_every`` 1, after 4 warm-up steps. Kinds alternate
(in a rotated order each round), ``--rounds`` times; the medians and the
ratios to ``none`` are printed.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' helpers (tests.support): the same servers
WARMUP_STEPS = 4


def wait_healthy(url: str) -> None:
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"no MLflow server answers at {url}")


def serve_delay_proxy(port: int, target_port: int, delay_s: float) -> None:
    """127.0.0.1:port -> 127.0.0.1:target_port, each request ``delay_s`` late (in a
    process of its own, so that its threads take nothing from the training's)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            time.sleep(delay_s)
            upstream = http.client.HTTPConnection("127.0.0.1", target_port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            headers["Host"] = f"127.0.0.1:{target_port}"
            upstream.request(self.command, self.path, body or None, headers)
            response = upstream.getresponse()
            payload = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            upstream.close()

        do_GET = do_POST = do_PATCH = do_DELETE = _forward

        def log_message(self, *args) -> None:
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def measure(engine, tracker) -> float:
    """Images/s over the steps after the warm-up, tracking (and its final flush) included."""
    started: list[float] = []

    def on_log(step) -> None:
        if tracker is not None:
            tracker.log_metrics(step.global_step, step.metrics)

    def before_step(number: int) -> None:  # 1-based number of the step to come
        if number == WARMUP_STEPS + 1:
            started.append(time.perf_counter())

    engine.train_epoch(on_log=on_log, should_fail=before_step)
    if tracker is not None:
        tracker.flush()
    timed_steps = engine.steps_per_epoch - WARMUP_STEPS
    return timed_steps * engine.config.train.batch_size / (time.perf_counter() - started[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "shapes_tiny.yaml"))
    parser.add_argument("--steps", type=int, default=48, help="timed optimiser steps per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    args = parser.parse_args()
    os.chdir(ROOT)  # the config's relative data paths
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    import dataclasses

    import torch

    from detr_ray.config import load_config
    from detr_ray.tracking.runs import RunTracker
    from detr_ray.train.build import build_engine
    from detr_ray.train.inputs import build_datasets
    from detr_ray.train.prepare import prepare_run

    from tests.support.ports import free_port
    from tests.support.servers import start_mlflow_server, stop_mlflow_server

    torch.set_num_threads(2)
    folder = tempfile.mkdtemp(prefix="bench_tracking_")
    server_port = free_port()
    server = start_mlflow_server(Path(folder), server_port)
    proxy_port = free_port()
    proxy = multiprocessing.get_context("spawn").Process(
        target=serve_delay_proxy, args=(proxy_port, server_port, args.delay_ms / 1000)
    )
    proxy.start()
    uri = f"http://127.0.0.1:{proxy_port}"
    wait_healthy(uri)
    try:
        prepared = prepare_run(load_config(args.config, ["tracking.log_images=0"]))
        config, label_map = prepared.config, prepared.label_map
        log_everys = sorted({config.train.log_every, 1}, reverse=True)
        kinds = ["none", "sync", "async"]
        rates: dict[tuple[int, str], list[float]] = {}
        datasets = build_datasets(config, label_map)
        for round_index in range(args.rounds):
            for log_every in log_everys:
                # a different order each round: drift of the machine hits every kind
                for kind in kinds[round_index % 3 :] + kinds[: round_index % 3]:
                    train = dataclasses.replace(
                        config.train,
                        log_every=log_every,
                        max_steps_per_epoch=WARMUP_STEPS + args.steps,
                    )
                    run_config = dataclasses.replace(config, train=train)
                    engine = build_engine(run_config, label_map, datasets=datasets)
                    tracker = None
                    if kind != "none":
                        name = f"{kind}-{log_every}-{round_index}"
                        tracker = RunTracker(
                            uri,
                            "bench-tracking",
                            name,
                            Path(folder) / name,
                            asynchronous=kind == "async",
                        )
                    rate = measure(engine, tracker)
                    if tracker is not None:
                        tracker.finish()
                    rates.setdefault((log_every, kind), []).append(rate)
                    print(
                        f"round {round_index}  log_every {log_every:>2}  {kind:<5} "
                        f"{rate:6.1f} img/s",
                        flush=True,
                    )
        print(
            f"\nMLflow server behind a {args.delay_ms:.0f} ms proxy; "
            f"{args.steps} timed steps of batch {config.train.batch_size}; "
            f"median of {args.rounds}"
        )
        for log_every in log_everys:
            base = statistics.median(rates[(log_every, "none")])
            for kind in kinds:
                rate = statistics.median(rates[(log_every, kind)])
                print(
                    f"log_every {log_every:>2}  {kind:<5} {rate:6.1f} img/s  "
                    f"ratio to none {rate / base:.3f}"
                )
    finally:
        proxy.kill()
        stop_mlflow_server(server)


if __name__ == "__main__":
    main()
