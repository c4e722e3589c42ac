"""Venue check-in codes, pure: what a venue screen shows and what a member's phone sends back.

Each venue screen shows a QR code for a signed check-in URL that rotates every 30 s; a code is
accepted for 90 s after it first appears (its own window and the two after it), so a phone that
scans just before a rotation still has time. A code names its time window, which tells an expired
code (genuine, too old) from a forged one (the signature does not match). Beside the QR code the
screen shows a six-digit short code for members who type it in; short codes are checked against
the accepted windows only.

Signatures are HMAC-SHA256 over (session, venue, window) with the server's secret key, so a code
of one session or venue is worthless for another.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

ROTATE_S = 30
ACCEPT_S = 90
_ACCEPTED_WINDOWS = ACCEPT_S // ROTATE_S  # the current window and the two before it
SIGNATURE_CHARS = 20
SHORT_CODE_DIGITS = 6


def window_of(at: datetime) -> int:
    """The number of the 30-second window ``at`` falls in."""
    return int(at.timestamp()) // ROTATE_S


def _mac(secret: str, label: str, session_id: int, venue_id: int, window: int) -> bytes:
    message = f"checkin|{label}|{session_id}|{venue_id}|{window}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def signature(secret: str, session_id: int, venue_id: int, window: int) -> str:
    return _mac(secret, "sig", session_id, venue_id, window).hex()[:SIGNATURE_CHARS]


def short_code(secret: str, session_id: int, venue_id: int, window: int) -> str:
    number = int.from_bytes(_mac(secret, "short", session_id, venue_id, window)[:8], "big")
    return str(number % 10**SHORT_CODE_DIGITS).zfill(SHORT_CODE_DIGITS)


@dataclass(frozen=True)
class CheckinCode:
    """What a venue screen shows now."""

    session_id: int
    venue_id: int
    window: int
    signature: str
    short_code: str
    shown_at: datetime
    rotates_at: datetime
    expires_at: datetime


def current_code(secret: str, session_id: int, venue_id: int, now: datetime) -> CheckinCode:
    window = window_of(now)
    shown = datetime.fromtimestamp(window * ROTATE_S, tz=UTC)
    return CheckinCode(
        session_id=session_id,
        venue_id=venue_id,
        window=window,
        signature=signature(secret, session_id, venue_id, window),
        short_code=short_code(secret, session_id, venue_id, window),
        shown_at=shown,
        rotates_at=shown + timedelta(seconds=ROTATE_S),
        expires_at=shown + timedelta(seconds=ACCEPT_S),
    )


# Outcomes of checking a code. Everything but OK is refused; FORGED and OTHER_SESSION are
# suspicious (nobody gets those by scanning a real screen of this session).
OK = "ok"
EXPIRED = "expired"
FORGED = "forged"
WRONG_CODE = "wrong_code"
OTHER_SESSION = "other_session"
SUSPICIOUS = frozenset({FORGED, OTHER_SESSION})


def check_signed(
    secret: str, session_id: int, venue_id: int, window: int, sig: str, now: datetime
) -> str:
    """Judge a scanned code (window and signature from the QR URL)."""
    if not hmac.compare_digest(signature(secret, session_id, venue_id, window), sig):
        return FORGED
    current = window_of(now)
    if window > current:
        return FORGED  # genuine signatures of future windows cannot have been shown yet
    if window <= current - _ACCEPTED_WINDOWS:
        return EXPIRED
    return OK


def check_short(secret: str, session_id: int, venue_id: int, code: str, now: datetime) -> str:
    """Judge a typed short code: it must be one of the codes shown in the last 90 s."""
    current = window_of(now)
    for window in range(current, current - _ACCEPTED_WINDOWS, -1):
        if hmac.compare_digest(short_code(secret, session_id, venue_id, window), code):
            return OK
    return WRONG_CODE
