"""System metrics: the readings from given counters, the GPU part skipped without NVML."""

from __future__ import annotations

import sys
import threading
import time
import types
from types import SimpleNamespace

from detr_ray.tracking import system_metrics
from detr_ray.tracking.system_metrics import SystemSampler, cpu_memory_disk_network, gpu_readings


def test_cpu_memory_disk_network_from_psutil_counters():
    fake = SimpleNamespace(
        virtual_memory=lambda: SimpleNamespace(used=3_500_000_000, percent=21.5),
        net_io_counters=lambda: SimpleNamespace(bytes_sent=2_500_100, bytes_recv=10_000_200),
        cpu_percent=lambda: 87.5,
        disk_usage=lambda path: SimpleNamespace(percent=40.0 if path == "/" else -1.0),
    )
    assert cpu_memory_disk_network(fake, start_net=(100, 200)) == {
        "cpu_utilization_percentage": 87.5,
        "system_memory_usage_megabytes": 3500.0,
        "system_memory_usage_percentage": 21.5,
        "disk_usage_percentage": 40.0,
        "network_transmit_megabytes": 2.5,  # since the sampler started
        "network_receive_megabytes": 10.0,
    }


class FakeNvml:
    """Two GPUs: 25% and 75% busy, 4 of 16 GB and 12 of 16 GB used."""

    used = (4_000_000_000, 12_000_000_000)

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=self.used[handle], total=16_000_000_000)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=(25, 75)[handle])


def test_gpu_readings_name_each_gpu():
    assert gpu_readings(FakeNvml()) == {
        "gpu_0_utilization_percentage": 25.0,
        "gpu_0_memory_usage_megabytes": 4000.0,
        "gpu_0_memory_usage_percentage": 25.0,
        "gpu_1_utilization_percentage": 75.0,
        "gpu_1_memory_usage_megabytes": 12000.0,
        "gpu_1_memory_usage_percentage": 75.0,
    }


def test_no_nvml_means_no_gpu_readings(monkeypatch):
    # Here: nvidia-ml-py is not installed (the optional `gpu` extra) ...
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    assert system_metrics.open_nvml() is None
    # ... or it is, but there is no driver: nvmlInit raises.
    broken = types.ModuleType("pynvml")

    def no_driver():
        raise OSError("NVML Shared Library Not Found")

    broken.nvmlInit = no_driver  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert system_metrics.open_nvml() is None


def test_the_sampler_logs_this_node_every_period_until_stopped(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    logged: list[tuple[dict, int]] = []
    three = threading.Event()

    def log(values, step):
        logged.append((values, step))
        if len(logged) == 3:
            three.set()

    sampler = SystemSampler("node-abc", log, every_s=0.05)
    assert three.wait(10)
    sampler.stop()
    count = len(logged)
    assert [step for _, step in logged] == list(range(count))
    for values, _ in logged:
        assert {k.rsplit("/", 1)[0] for k in values} == {"system/node-abc"}
        assert not any("gpu" in k for k in values)  # skipped cleanly without NVML
        assert 0.0 <= values["system/node-abc/cpu_utilization_percentage"] <= 100.0
        assert 0.0 < values["system/node-abc/system_memory_usage_percentage"] < 100.0
        assert values["system/node-abc/network_receive_megabytes"] >= 0.0
    threading.Event().wait(0.2)
    assert len(logged) == count  # stopped means stopped


def test_a_failing_log_costs_a_sample_not_the_sampler(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    steps: list[int] = []
    two = threading.Event()

    def flaky(values, step):
        if step == 0:
            raise ConnectionError("tracking server down")
        steps.append(step)
        if len(steps) == 2:
            two.set()

    sampler = SystemSampler("n", flaky, every_s=0.05)
    assert two.wait(10)
    sampler.stop()
    assert steps[:2] == [1, 2]


def test_stop_does_not_wait_out_the_period(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    sampler = SystemSampler("n", lambda values, step: None, every_s=600.0)
    started = time.monotonic()
    sampler.stop()
    assert not sampler._thread.is_alive()
    assert time.monotonic() - started < 5.0
