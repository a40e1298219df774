"""The background metric queue: never blocks the caller, retries, counts what it drops."""

from __future__ import annotations

import threading
import time

from detr_ray.tracking.metric_queue import MetricQueue


class Store:
    """A stand-in tracking store: fails its first ``failures`` calls, can be held shut."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.calls = 0
        self.stored: list = []
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()

    def send(self, batch):
        self.calls += 1
        self.entered.set()
        self.open.wait()
        if self.calls <= self.failures:
            raise ConnectionError("store down")
        self.stored.extend(batch)


def test_points_arrive_in_order_and_in_batches_of_at_most_batch_size():
    store = Store()
    store.open.clear()  # hold the first send so the rest pile up
    q = MetricQueue(store.send, batch_size=4, linger_s=0)
    q.put([0])
    store.entered.wait(5)
    q.put(list(range(1, 11)))
    store.open.set()
    assert q.flush(10)
    assert store.stored == list(range(11))
    assert store.calls == 1 + 3  # [0], then 10 queued points in batches of 4, 4, 2
    assert q.dropped == 0


def test_a_store_that_is_briefly_down_loses_nothing():
    store = Store(failures=2)
    q = MetricQueue(store.send, retries=3, backoff_s=0.01, linger_s=0)
    q.put(["a", "b", "c"])
    assert q.flush(10)
    assert store.stored == ["a", "b", "c"]
    assert store.calls == 3  # two failures, then stored
    assert q.dropped == 0


def test_a_store_that_stays_down_costs_the_failed_batch_counted_and_nothing_else():
    store = Store(failures=4)  # the first batch fails 1 + 3 retries, the next one works
    q = MetricQueue(store.send, retries=3, backoff_s=0.01, linger_s=0)
    q.put(["lost", "too"])
    assert q.flush(10)
    q.put(["kept"])
    assert q.flush(10)
    assert q.dropped == 2
    assert store.stored == ["kept"]
    assert store.calls == 5


def test_put_does_not_wait_for_a_stalled_store_and_a_full_queue_drops_the_newest():
    store = Store()
    store.open.clear()  # the store hangs
    q = MetricQueue(store.send, max_points=5, linger_s=0)
    q.put(["in flight"])
    assert store.entered.wait(5)  # the thread holds that point, inside send
    started = time.monotonic()
    q.put(list(range(8)))  # 5 fit in the queue, 3 do not
    assert time.monotonic() - started < 1.0  # returned although the store is stuck
    assert q.dropped == 3
    assert not q.flush(0.05)  # still waiting on the store
    store.open.set()
    assert q.flush(10)
    assert store.stored == ["in flight", 0, 1, 2, 3, 4]


def test_points_logged_close_together_go_in_one_request():
    store = Store()
    q = MetricQueue(store.send, linger_s=0.5)
    for step in range(5):  # five logged steps, well within the linger time
        q.put([("loss", step)])
    deadline = time.monotonic() + 10
    while len(store.stored) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.calls == 1
    assert store.stored == [("loss", step) for step in range(5)]


def test_flush_does_not_wait_out_the_linger_time():
    store = Store()
    q = MetricQueue(store.send, linger_s=600)
    q.put(["x"])
    started = time.monotonic()
    assert q.flush(30)
    assert time.monotonic() - started < 10
    assert store.stored == ["x"]
