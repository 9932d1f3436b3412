"""System metrics (`system/cpu_utilization_percentage`, memory, disk, network, GPU) sampled on rank 0.

MLflow's own monitors do the measuring (psutil, pynvml where a GPU is). Their values go through the tracker
like every other metric, at the last training step logged, so they land in `metrics.jsonl` and survive an
MLflow outage; MLflow's UI shows them in the run's "System metrics" tab. Our own thread rather than
`mlflow.enable_system_metrics_logging()`, which needs the fluent active run and stops at its first failed call.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)


def _monitors() -> list:
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    try:  # pynvml raises without an NVIDIA driver: no GPU metrics then
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        monitors.append(GPUMonitor())
    except Exception:
        logger.debug("no GPU monitor", exc_info=True)
    return monitors


class SystemMetricsSampler:
    """Logs `system/*` through `tracker` every `interval_s` seconds until `stop()`."""

    def __init__(self, tracker, interval_s: float):
        self.tracker = tracker
        self.interval_s = interval_s
        self.monitors = _monitors()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="system-metrics", daemon=True)
        self._thread.start()

    def sample(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for monitor in self.monitors:
            monitor.collect_metrics()
            values.update({f"system/{k}": float(v) for k, v in monitor.aggregate_metrics().items()})
            monitor.clear_metrics()
        return values

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tracker.log_metrics(self.sample(), step=self.tracker.last_step)
            except Exception:  # a failing probe must never stop training
                logger.warning("system metrics sampling failed; no more system metrics", exc_info=True)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
