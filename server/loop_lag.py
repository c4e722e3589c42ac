"""How late this process's event loop runs what is due: the relay's own stall meter.

Every packet a viewer gets is forwarded by a callback on one event loop, so a loop that is
late by 0.4 s freezes every viewer of the process for 0.4 s, whatever its CPU use says. A
ticker asks to wake every ``INTERVAL_S`` and records how much later than asked it woke, into a
Prometheus histogram (``studycast_event_loop_lag_seconds``, labelled by node like every other
series) and into the largest lag since the node's last report (``loop_lag_max_s`` in
``GET /api/nodes``). A slow callback, a collector pause or a process starved of CPU all show.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CollectorRegistry, Counter, Histogram

INTERVAL_S = 0.05
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STALL_S = 0.1  # a lag this long or longer is a stall a viewer can see


class LoopLag:
    """Measures the running loop's lag from ``start()`` until ``stop()``."""

    def __init__(self, registry: CollectorRegistry, interval: float = INTERVAL_S) -> None:
        if not 0.001 <= interval <= 1.0:
            raise ValueError(f"interval must be 0.001..1 s, not {interval!r}")
        self.interval = interval
        self.histogram = Histogram(
            "studycast_event_loop_lag_seconds",
            f"How much later than due the event loop woke a ticker due every {interval:g} s.",
            buckets=BUCKETS,
            registry=registry,
        )
        self.stalls = Counter(
            "studycast_event_loop_stalls",
            f"Event-loop lags of {STALL_S:g} s or more.",
            registry=registry,
        )
        self._worst = 0.0
        self._task: asyncio.Task[None] | None = None

    def observe(self, lag: float) -> None:
        lag = max(0.0, lag)
        self.histogram.observe(lag)
        if lag >= STALL_S:
            self.stalls.inc()
        self._worst = max(self._worst, lag)

    def take_worst(self) -> float:
        """The largest lag since the last call (0.0 if none), and start over."""
        worst, self._worst = self._worst, 0.0
        return worst

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._tick(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.observe(loop.time() - due)
