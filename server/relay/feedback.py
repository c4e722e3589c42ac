"""Coalescing keyframe requests: many viewers asking becomes at most one PLI per interval."""

from __future__ import annotations

from dataclasses import dataclass

MIN_INTERVAL_S = 0.3


@dataclass
class KeyframeRequests:
    """Pure rate limiter: ``request(now)`` says when to send a PLI upstream, if at all.

    The first request goes out at once; requests within ``interval`` of the last PLI are merged
    into one PLI sent when the interval has passed.
    """

    interval: float = MIN_INTERVAL_S
    last_sent: float | None = None
    scheduled_at: float | None = None
    requested: int = 0
    sent: int = 0

    def request(self, now: float) -> float | None:
        """Record a request. Returns the time to send at (``now`` for at once), or None when
        a PLI is already scheduled that will cover it."""
        self.requested += 1
        if self.scheduled_at is not None:
            return None
        due = now if self.last_sent is None else max(now, self.last_sent + self.interval)
        self.scheduled_at = due
        return due

    def mark_sent(self, now: float) -> None:
        self.last_sent = now
        self.scheduled_at = None
        self.sent += 1
