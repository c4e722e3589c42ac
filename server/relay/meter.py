"""Rates over a sliding window from cumulative counters (pure; the caller samples)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 5.0


@dataclass
class RateMeter:
    """Feed ``sample(now, **totals)`` regularly; ``rate(name)`` is per second over the window."""

    window: float = WINDOW_S
    _samples: deque[tuple[float, dict[str, int]]] = field(default_factory=deque)

    def sample(self, now: float, **totals: int) -> None:
        self._samples.append((now, totals))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def rate(self, name: str) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return 0.0
        return (last.get(name, 0) - first.get(name, 0)) / (t1 - t0)
