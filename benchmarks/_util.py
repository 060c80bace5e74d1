"""Measurement helpers shared by the benchmarks."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import psutil


class PeakRSS:
    """Samples the resident memory of this process and all its children (Dask workers) every ``interval`` s."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.baseline = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def timer():
    t = {"s": 0.0}
    t0 = time.perf_counter()
    yield t
    t["s"] = time.perf_counter() - t0


def mb(n: float) -> float:
    return round(n / 1e6, 1)
