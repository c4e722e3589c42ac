"""Python's cycle collector, tuned for a relay holding hundreds of peer connections.

Each viewer's aiortc objects (~1,400 tracked by the cycle collector) live for the whole
broadcast, and a full collection walks every one of them: at 750 viewers one takes 0.2-0.4 s,
during which no packet is forwarded, which viewers see as a stall. With the default thresholds
(700, 10, 10) the objects of each packet's work that live a second or so (timers, RTCP, tasks)
survive two young collections and count towards the next full one, so full collections came
every 3-5 s while viewers joined. Young collections every 20,000 allocations (middle ones
every 10 of those) let such objects die first; full collections then come when the long-lived
objects really grew by a quarter (Python's own rule), not every few seconds. Measured at 300 to
750 viewers (bench/RESULTS.md, 2026-12-07): no full collection while serving, 50 ms the longest
collection of any generation.

``gc.freeze()`` after start-up moves what the process loaded (modules, the app) out of the
collector's view for good, so no collection walks it.
"""

from __future__ import annotations

import gc

THRESHOLDS = (20_000, 10, 10)


def tune() -> None:
    """Set the thresholds (call early: before the store and the app are made)."""
    gc.set_threshold(*THRESHOLDS)


def settle() -> None:
    """Once started: collect what start-up left, then keep what remains out of every walk."""
    gc.collect()
    gc.freeze()
