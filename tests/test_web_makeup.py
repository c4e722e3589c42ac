"""Make-up viewing in a real Chromium against ``studycast serve --demo``: the session is broadcast
for a few seconds (the server records it), ended, and then a member who missed it opens their
personal link, plays the recording, and the make-up seconds the server stores grow.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
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

from attendance.makeup import Progress, Segment, makeup_attendance, makeup_code

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


def test_makeup_viewing_stops_at_a_presence_check_until_the_member_answers(
    server: DemoServer,
) -> None:
    """A session whose rule asks make-up viewers to pass its presence checks: the player stops
    where the check opened, shows the member's own code, and goes on once it is answered; the
    report counts the check as passed."""
    organiser = Organiser(server.base, "organiser", server.logins["organiser"])
    demo = organiser.get(f"/api/sessions/{server.session_id}")
    start = datetime.now(UTC)
    created = organiser.post(
        "/api/sessions",
        {
            "title": "补看在场确认",
            "scheduled_start": start.isoformat(),
            "scheduled_end": (start + timedelta(hours=1)).isoformat(),
            "video_codec": "vp8",
            "expected_units": demo["expected_units"],
            "attendance_rule": {"makeup_presence": True, "min_share": 0.5},
        },
    )
    sid = created["id"]
    links = organiser.get(f"/api/sessions/{sid}/links")
    broadcast = Broadcast(links["whip_url"], links["whip_token"], clip_for("vp8"))
    try:
        broadcast.start()
        time.sleep(2.5)
        check = organiser.post(f"/api/sessions/{sid}/presence-checks", {"window_s": 30})
        time.sleep(4)
        broadcast.stop()
    finally:
        broadcast.close()
    organiser.post(f"/api/sessions/{sid}/end")

    def listed() -> Any:
        index = organiser.get(f"/api/sessions/{sid}/recordings")
        closed = all(s["duration_s"] for s in index["segments"] if not s["deleted"])
        return index if closed and index["presence_checks"] else None

    index = wait_until(listed, 20, "the recording with its presence check")
    [stop] = index["presence_checks"]
    assert stop["id"] == check["id"] and index["makeup_presence"] is True
    assert 1.0 < stop["at_s"] < index["total_duration_s"]
    first = organiser.get(f"/api/sessions/{sid}/member-links")["members"][0]
    secret = (server.data_dir / "secret_key").read_text(encoding="ascii").strip()
    member_id = member_id_of(server, first["member_no"])
    code = makeup_code(secret, sid, stop["id"], member_id)

    def report_row() -> dict[str, Any]:
        rows = organiser.get(f"/api/sessions/{sid}/report")["rows"]
        return next(r for r in rows if r["member_no"] == first["member_no"])

    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            page.goto(first["url"])
            expect(page.locator("#makeup-card")).to_have_attribute(
                "data-status", "ready", timeout=WAIT_MS
            )
            page.evaluate(
                "() => { const v = document.getElementById('makeup-video');"
                " v.muted = true; return v.play(); }"
            )
            prompt = page.locator("#makeup-check")
            expect(prompt).to_be_visible(timeout=WAIT_MS)
            expect(prompt).to_have_attribute("data-check", str(stop["id"]))
            video_at = "document.getElementById('makeup-video').currentTime"
            assert page.evaluate("document.getElementById('makeup-video').paused") is True
            stopped_at = page.evaluate(video_at)
            assert stop["position_s"] <= stopped_at < stop["position_s"] + 1.5
            expect(page.locator("#makeup-check-image")).to_have_js_property(
                "complete", True, timeout=WAIT_MS
            )
            assert page.evaluate("document.getElementById('makeup-check-image').naturalWidth") > 100
            # Pressing play does not get past the check.
            page.evaluate("document.getElementById('makeup-video').play().catch(() => {})")
            time.sleep(0.5)
            assert page.evaluate("document.getElementById('makeup-video').paused") is True
            wrong = "1000" if code != "1000" else "2000"
            page.fill("#makeup-check-code", wrong)
            page.click("#makeup-check-form button[type=submit]")
            expect(page.locator("#makeup-check-result")).to_have_attribute(
                "data-status", "wrong_code", timeout=WAIT_MS
            )
            expect(prompt).to_be_visible()
            page.fill("#makeup-check-code", code)
            page.click("#makeup-check-form button[type=submit]")
            expect(prompt).to_be_hidden(timeout=WAIT_MS)
            wait_until(
                lambda: page.evaluate(video_at) > stopped_at + 1,
                WAIT_MS / 1000,
                "the recording to go on after the check",
            )
            page.evaluate("document.getElementById('makeup-video').pause()")  # reports at once
            row = wait_until(
                lambda: (r := report_row())["makeup_presence_passed"] == 1 and r,
                WAIT_MS / 1000,
                "the report to count the make-up presence check",
            )
            assert row["makeup_presence_total"] == 1
            assert row["mode"] == "absent" and row["makeup_minutes"] >= 0
        finally:
            browser.close()


def member_id_of(server: DemoServer, member_no: str) -> int:
    db = sqlite3.connect(f"file:{server.data_dir / 'studycast.db'}?mode=ro", uri=True)
    try:
        (found,) = db.execute("SELECT id FROM members WHERE member_no = ?", (member_no,)).fetchone()
    finally:
        db.close()
    return int(found)
