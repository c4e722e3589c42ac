"""How ``bench_scale.py`` judges its capacity steps: pure functions of the recorded steps.

A step is served when enough of its viewers got >= 95 % of the frame rate. Two capacities come
from the same steps:

- **by frame rate**: the largest served step before ``misses`` + 1 failed steps in a row; a
  step failing alone is measured again by the next one, unless that one's viewers got over
  ``DRAIN_SHARE`` of the frame rate (a saturated relay draining the backlog of the failed
  window into this one);
- **keeping up**: the same, where a step also fails if at its end the relay left more than
  ``BEHIND_KB`` queued on a socket (``relay_backlog_kb``, its deepest UDP receive queue). The
  broadcaster's socket holds up to 8 MB here (``server.relay.ingest``: 4 MB asked, doubled by
  the kernel), ~45 s of the benchmark's 0.7 Mbit/s clip: a relay short of CPU can go on
  delivering 30 fps for many 8 s windows while its viewers fall further behind live, until the
  broadcaster's consent checks (answered within 0.5 s or failed, six failures in a row drop it,
  aioice) are stuck behind the queue. ``BEHIND_KB`` is about one second of the clip's packets
  as the kernel counts them (~2.3 KB per 1.1 KB video datagram, 72 a second, and 50 audio).
"""

from __future__ import annotations

from typing import Any

from clip_publisher import FPS

GOOD_FPS_SHARE = 0.95  # a viewer is served at >= 95 % of the published frame rate
DRAIN_SHARE = 1.05  # above this after a failed step: a backlog drained, not a relay keeping up
BEHIND_KB = 256  # queued at the end of a step: the relay is about a second behind live


def behind(row: dict[str, Any]) -> bool:
    """Whether the relay ended this step more than ``BEHIND_KB`` behind on a socket."""
    backlog = row.get("relay_backlog_kb") or [0, 0]
    return backlog[-1] > BEHIND_KB


def failing(steps: list[dict[str, Any]], *, keeping_up: bool = False) -> list[bool]:
    """Per step, whether it counts as failed (see the module's two rules)."""
    out: list[bool] = []
    for row in steps:
        median = row.get("fps_median") or 0.0
        draining = bool(out) and out[-1] and median > DRAIN_SHARE * FPS
        out.append(not row["served"] or draining or (keeping_up and behind(row)))
    return out


def one_miss(steps: list[dict[str, Any]], misses: int) -> bool:
    """Whether the run goes on after its last step: up to ``misses`` failed steps in a row (by
    frame rate) are measured again at the next step (a transient, if that one is served)."""
    failed = 0
    for bad in reversed(failing(steps)):
        if not bad:
            break
        failed += 1
    return failed <= misses


def run_end(steps: list[dict[str, Any]], misses: int, *, keeping_up: bool = False) -> int:
    """The index of the first of ``misses + 1`` failed steps in a row (len(steps) if none):
    capacity is the largest served step before it."""
    failed = 0
    for i, bad in enumerate(failing(steps, keeping_up=keeping_up)):
        failed = failed + 1 if bad else 0
        if failed > misses:
            return i - misses
    return len(steps)


def capacity(steps: list[dict[str, Any]], misses: int, *, keeping_up: bool) -> dict[str, Any]:
    """The capacity by one rule: ``viewers`` (0 if no step passed), the step it was measured
    in, whether the steps ran out before the rule ended the run, the steps failed alone."""
    ended = run_end(steps, misses, keeping_up=keeping_up)
    kept = list(zip(steps[:ended], failing(steps, keeping_up=keeping_up), strict=False))
    passing = [r for r, bad in kept if not bad]
    best = passing[-1] if passing else None
    return {
        "viewers": best["viewers"] if best else 0,
        "at": best,
        "is_lower_bound": ended == len(steps),
        "missed_alone": [r["viewers"] for r, bad in kept if bad],
    }
