"""The attendance rule applied to one member's attendance, pure: qualified or not, and why."""

from __future__ import annotations

import math
from dataclasses import dataclass

from attendance.sessions import AttendanceRule

# Shares are compared after rounding to 0.1%, so 84.96% watched meets an 85% rule as shown.
_SHARE_DIGITS = 3


@dataclass(frozen=True)
class Verdict:
    qualified: bool
    reason: str


def presence_needed(rule: AttendanceRule, given: int) -> int:
    """How many of ``given`` presence checks must pass (2 of 3 for the default 0.66)."""
    by_share = math.ceil(round(rule.min_presence_share * given, 6)) if given else 0
    return max(by_share, min(rule.min_presence_passed, given) if given else 0)


def evaluate(
    rule: AttendanceRule, *, share: float, presence_passed: int, presence_total: int
) -> Verdict:
    """Apply ``rule``. The reason names every unmet condition, or what was met."""
    problems: list[str] = []
    watched = round(share, _SHARE_DIGITS)
    if watched < round(rule.min_share, _SHARE_DIGITS):
        problems.append(f"watched {share:.0%} of live time (needs {rule.min_share:.0%})")
    needed = presence_needed(rule, presence_total)
    if presence_passed < needed:
        problems.append(
            f"passed {presence_passed} of {presence_total} presence checks (needs {needed})"
        )
    if problems:
        return Verdict(False, "; ".join(problems))
    return Verdict(
        True,
        f"watched {share:.0%} of live time; passed {presence_passed} of {presence_total} "
        "presence checks",
    )
