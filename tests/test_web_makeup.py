"""Make-up viewing in a real Chromium against ``studycast serve --demo``: the session is broadcast
for a few seconds (the server records it), ended, and then a member who missed it opens their
personal link, plays the recording, and the make-up seconds the server stores grow.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect, sync_playwright
from web_session_support import (
    Broadcast,
    DemoServer,
    Organiser,
    clip_for,
    demo_server,
    launch_chromium,
    wait_until,
)

from attendance.makeup import Progress, Segment, makeup_attendance

pytestmark = pytest.mark.slow

WAIT_MS = 20_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    with demo_server(tmp_path_factory.mktemp("demo")) as running:
        yield running


def stored_makeup_seconds(server: DemoServer, segments: list[Segment]) -> float:
    """The make-up seconds the server would count, from its own log (read-only)."""
    db = sqlite3.connect(f"file:{server.data_dir / 'studycast.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT payload FROM attendance_events WHERE session_id = ? AND kind = ?",
            (server.session_id, "makeup_progress"),
        ).fetchall()
    finally:
        db.close()
    progress = []
    for (raw,) in rows:
        payload = json.loads(raw) if isinstance(raw, str) else raw
        if payload.get("status") == "accepted":
            progress.append(
                Progress(
                    payload["segment"],
                    payload["from_s"],
                    payload["to_s"],
                    payload["visible"],
                    payload["rate"],
                )
            )
    return makeup_attendance(progress, segments).seconds


def test_a_member_who_missed_the_session_watches_the_recording(server: DemoServer) -> None:
    organiser = Organiser(server.base, "organiser", server.logins["organiser"])
    sid = server.session_id
    organiser.request("PATCH", f"/api/sessions/{sid}", {"video_codec": "vp8"})
    whip = organiser.get(f"/api/sessions/{sid}/links")
    broadcast = Broadcast(whip["whip_url"], whip["whip_token"], clip_for("vp8"))
    try:
        broadcast.start()
        time.sleep(6)
        broadcast.stop()
    finally:
        broadcast.close()
    organiser.post(f"/api/sessions/{sid}/end")

    def recorded() -> Any:
        index = organiser.get(f"/api/sessions/{sid}/recordings")
        kept = [s for s in index["segments"] if not s["deleted"] and s["duration_s"]]
        return kept or None

    kept = wait_until(recorded, 20, "a closed recording segment")
    segments = [Segment(s["index"], s["offset_s"], s["duration_s"]) for s in kept]
    url = organiser.get(f"/api/sessions/{sid}/member-links")["members"][0]["url"]

    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            page.goto(url)
            card = page.locator("#makeup-card")
            expect(card).to_be_visible(timeout=WAIT_MS)
            expect(card).to_have_attribute("data-status", "ready", timeout=WAIT_MS)
            assert stored_makeup_seconds(server, segments) == 0.0
            page.evaluate(
                "() => { const v = document.getElementById('makeup-video');"
                " v.muted = true; return v.play(); }"
            )
            wait_until(
                lambda: page.evaluate("document.getElementById('makeup-video').currentTime") > 3,
                WAIT_MS / 1000,
                "the recording to play 3 s",
            )
            page.evaluate("document.getElementById('makeup-video').pause()")  # reports at once
            watched = wait_until(
                lambda: (
                    stored_makeup_seconds(server, segments) >= 2.5
                    and stored_makeup_seconds(server, segments)
                ),
                WAIT_MS / 1000,
                "the server to count make-up seconds",
            )
            assert watched <= sum(s.duration_s for s in segments)
            expect(page.locator("#makeup-watched")).not_to_have_text("–", timeout=WAIT_MS)
        finally:
            browser.close()
