"""What an organiser hands out for a session: the WHIP settings for OBS or the browser, and the
session's viewer link."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from server.settings import Settings
from server.tokens import TokenRole, issue


def session_links(
    settings: Settings, session_id: int, *, now: datetime, base_url: str | None = None
) -> dict[str, Any]:
    """Absolute WHIP/WHEP URLs with a publish token and a session viewer token."""
    base = (base_url or settings.base_url()).rstrip("/")
    secret = settings.resolved_secret_key()
    subject = f"session:{session_id}"
    return {
        "id": session_id,
        "whip_url": f"{base}/whip/{session_id}",
        "whip_token": issue(
            secret, session_id=session_id, role=TokenRole.BROADCASTER, subject=subject, now=now
        ),
        "whep_url": f"{base}/whep/{session_id}",
        "whep_token": issue(
            secret, session_id=session_id, role=TokenRole.VIEWER, subject=subject, now=now
        ),
    }
