"""System metrics of one node, sampled every few seconds into the training run.

One sampler runs per node (on the worker with local rank 0), so a multi-node
run shows every node: the names are MLflow's ``system/`` names with the node
in them, ``system/<node>/cpu_utilization_percentage``. Sampled: CPU
utilisation, memory used (MB and %), disk used of the root file system (%),
network bytes sent and received since the sampler started; with a GPU and
``nvidia-ml-py`` installed (``pip install 'detr-ray[gpu]'``), each GPU's
utilisation and memory used. Without them the GPU part is skipped.

No MLflow here: the sampler hands its readings to a ``log`` callable.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def cpu_memory_disk_network(psutil: Any, start_net: tuple[int, int]) -> dict[str, float]:
    """CPU, memory, disk and network readings (``psutil`` is the module, or a stand-in)."""
    memory = psutil.virtual_memory()
    net = psutil.net_io_counters()
    return {
        "cpu_utilization_percentage": float(psutil.cpu_percent()),
        "system_memory_usage_megabytes": memory.used / 1e6,
        "system_memory_usage_percentage": float(memory.percent),
        "disk_usage_percentage": float(psutil.disk_usage("/").percent),
        "network_transmit_megabytes": (net.bytes_sent - start_net[0]) / 1e6,
        "network_receive_megabytes": (net.bytes_recv - start_net[1]) / 1e6,
    }


def gpu_readings(nvml: Any) -> dict[str, float]:
    """Each GPU's utilisation and memory, through NVML (``pynvml`` or a stand-in)."""
    readings = {}
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        use = nvml.nvmlDeviceGetUtilizationRates(handle)
        readings[f"gpu_{index}_utilization_percentage"] = float(use.gpu)
        readings[f"gpu_{index}_memory_usage_megabytes"] = memory.used / 1e6
        readings[f"gpu_{index}_memory_usage_percentage"] = 100.0 * memory.used / memory.total
    return readings


def open_nvml() -> Any | None:
    """The initialised ``pynvml`` module, or None (not installed, no driver, no GPU)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        return pynvml if pynvml.nvmlDeviceGetCount() > 0 else None
    except Exception:  # noqa: BLE001 - NVMLError_*: no driver or no device
        return None


class SystemSampler:
    """Samples this node every ``every_s`` seconds in a thread and calls
    ``log({name: value}, step)`` with ``system/<node>/`` names (step = sample number)."""

    def __init__(
        self,
        node: str,
        log_readings: Callable[[dict[str, float], int], None],
        every_s: float = 10.0,
    ):
        import psutil

        self._psutil = psutil
        self._nvml = open_nvml()
        self._node = node
        self._log = log_readings
        self._every_s = every_s
        net = psutil.net_io_counters()
        self._start_net = (net.bytes_sent, net.bytes_recv)
        psutil.cpu_percent()  # the first call only starts the measurement
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="detr-ray-system", daemon=True)
        self._thread.start()

    def sample(self) -> dict[str, float]:
        readings = cpu_memory_disk_network(self._psutil, self._start_net)
        if self._nvml is not None:
            readings.update(gpu_readings(self._nvml))
        return {f"system/{self._node}/{name}": value for name, value in readings.items()}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._every_s + 5)

    def _run(self) -> None:
        step = 0
        while not self._stop.wait(self._every_s):
            try:
                self._log(self.sample(), step)
            except Exception as e:  # noqa: BLE001 - a sample lost is not worth a run
                log.warning("system metrics of %s not logged: %s", self._node, e)
            step += 1
