"""Presence checks, pure: codes, schedules and the judgement of one answer.

The organiser triggers a check (or schedules several at random times). Its short code appears
on the stream screens; a member present answers with it within the window (60 s by default).
Judgement, in this order: not open yet; already passed (a replay); too many wrong tries (3); a
wrong code; right code after the window (late: the check is failed, but it confirms presence
from that moment, which restores accrual of watch time); right code in time (passed).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

DEFAULT_WINDOW_S = 60
MIN_WINDOW_S = 10
MAX_WINDOW_S = 600
# An answer sent just before the window closed may arrive a moment later.
ARRIVAL_GRACE = timedelta(seconds=3)
MAX_WRONG_TRIES = 3
CODE_DIGITS = 4
MAX_SCHEDULED = 20

PASSED = "passed"
LATE = "late"
WRONG_CODE = "wrong_code"
REPLAY = "replay"
NOT_OPEN = "not_open"
TOO_MANY = "too_many"
# Outcomes that show the member was there at that moment.
CONFIRMING = frozenset({PASSED, LATE})


def new_code(rng: random.Random) -> str:
    """A code that reads unambiguously aloud and on a screen: four digits, no leading zero."""
    return str(rng.randint(10 ** (CODE_DIGITS - 1), 10**CODE_DIGITS - 1))


def schedule(
    rng: random.Random, count: int, start: datetime, within: timedelta, window: timedelta
) -> list[datetime]:
    """``count`` opening times at random in [start, start + within), at least one window plus
    a minute apart, so checks never overlap and members cannot predict them."""
    gap = window + timedelta(seconds=60)
    if count < 1:
        return []
    if gap * count > within:
        raise ValueError(
            f"{count} checks of {window.total_seconds():.0f} s do not fit in "
            f"{within.total_seconds() / 60:.0f} minutes"
        )
    # Spread the slack at random between the checks (sorted uniform draws keep the order).
    slack = (within - gap * count).total_seconds()
    offsets = sorted(rng.uniform(0, slack) for _ in range(count))
    return [start + timedelta(seconds=o) + gap * i for i, o in enumerate(offsets)]


@dataclass(frozen=True)
class Judgement:
    outcome: str
    message: str

    @property
    def confirms(self) -> bool:
        return self.outcome in CONFIRMING


def judge(
    *,
    code: str,
    opened_at: datetime,
    closes_at: datetime,
    given: str,
    arrived_at: datetime,
    earlier_outcomes: Sequence[str],
) -> Judgement:
    """One member's answer to one check, given their earlier answers to it."""
    if arrived_at < opened_at:
        return Judgement(NOT_OPEN, "this presence check has not started yet")
    if PASSED in earlier_outcomes:
        return Judgement(REPLAY, "this presence check was already answered")
    if earlier_outcomes.count(WRONG_CODE) >= MAX_WRONG_TRIES:
        return Judgement(TOO_MANY, f"more than {MAX_WRONG_TRIES} wrong codes for this check")
    if given.strip() != code:
        return Judgement(WRONG_CODE, "the code does not match the one on the screen")
    if arrived_at > closes_at + ARRIVAL_GRACE:
        return Judgement(LATE, "the check had closed; presence is confirmed from now on")
    return Judgement(PASSED, "presence confirmed")
