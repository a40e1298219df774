"""Metric points sent from a background thread, so that tracking never stalls training.

Rank 0 logs at every logged step; on a cluster each ``log_batch`` is an HTTP
round trip to the MLflow server, and while rank 0 waits every other worker
waits for it at the next all-reduce. :class:`MetricQueue` takes the points at
once (``put`` never blocks) and a thread sends them in batches: it waits
``linger_s`` after the first point of a batch for more to join it, so a run
logging every step makes one request every ``linger_s`` seconds, not one per
step (less work for a server many runs share). A server that
is slow delays nothing; one that is briefly down is retried (``retries``
times, with growing pauses); one that stays down costs the points of the
batch that failed, which are counted (``dropped``) and warned about once per
batch, not retried forever. When the queue holds ``max_points`` unsent points
the newest are dropped and counted too. ``flush()`` (at each report, at the
end, on failure) waits until everything queued has been sent or dropped.

No MLflow here: ``send`` is any callable taking a list of points.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)


class MetricQueue:
    """A bounded queue of points and the thread that sends them (see the module docstring).

    Args:
        send: sends one batch (e.g. ``lambda b: client.log_batch(run_id, metrics=b)``);
            an exception means the batch was not stored.
        max_points: unsent points held at most.
        batch_size: points per ``send`` at most (MLflow takes 1000 per request).
        retries: attempts of a failing batch after the first.
        backoff_s: pause before the first retry; doubled each time.
        linger_s: how long a batch waits for more points before it is sent
            (``flush`` sends at once).
    """

    def __init__(
        self,
        send: Callable[[list[Any]], None],
        max_points: int = 100_000,
        batch_size: int = 1000,
        retries: int = 3,
        backoff_s: float = 1.0,
        linger_s: float = 1.0,
    ):
        self._send = send
        self._batch_size = batch_size
        self._retries = retries
        self._backoff_s = backoff_s
        self._linger_s = linger_s
        self._hurry = threading.Event()  # set while someone waits in flush
        self._queue: queue.Queue = queue.Queue(maxsize=max_points)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="detr-ray-metrics", daemon=True)
        self._thread.start()

    def put(self, points: Sequence[Any]) -> None:
        """Queue ``points`` without waiting; if the queue is full they are dropped (counted)."""
        for point in points:
            try:
                self._queue.put_nowait(point)
            except queue.Full:
                self.dropped += 1

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued point is sent or dropped; False if ``timeout_s`` passed."""
        self._hurry.set()
        try:
            if timeout_s is None:
                self._queue.join()
                return True
            deadline = time.monotonic() + timeout_s
            while self._queue.unfinished_tasks and time.monotonic() < deadline:
                time.sleep(0.01)
            return not self._queue.unfinished_tasks
        finally:
            self._hurry.clear()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            self._hurry.wait(self._linger_s)  # let more points join, unless flushed
            while len(batch) < self._batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._deliver(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _deliver(self, batch: list[Any]) -> None:
        pause = self._backoff_s
        for attempt in range(self._retries + 1):
            try:
                self._send(batch)
                return
            except Exception as e:  # noqa: BLE001 - any failure of the store is the same to us
                if attempt == self._retries:
                    self.dropped += len(batch)
                    log.warning(
                        "tracking: %d metric points not stored after %d attempts (%s: %s); "
                        "%d dropped in all; training goes on",
                        len(batch),
                        attempt + 1,
                        type(e).__name__,
                        e,
                        self.dropped,
                    )
                    return
                time.sleep(pause)
                pause *= 2
