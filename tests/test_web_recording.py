"""The recording player in a real Chromium against a real server subprocess: a session recorded
in two segments (the recorder fed the test clip as two broadcaster connections, 4 s each with
0.5 s between them) and a quiz question opened 1.5 s into the second segment.

The page plays segment after segment on one timeline, lists the chapter and jumps to it; a
member's personal link plays too, without the staff's downloads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, serve
from playwright.sync_api import expect, sync_playwright
from recording_support import clip_packets
from relay_support import CLIP_FPS, clip_from, create_study_session, shared_clip

from attendance.migrate import upgrade
from attendance.models import Member, OrgUnit, QuizQuestion
from attendance.store import Store
from recordings import Recordings
from server.settings import Settings
from server.tokens import TokenRole, issue

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
SEGMENT_S = 4.0
GAP_S = 0.5
QUESTION_INTO_S = 1.5
PASSWORD = "correct horse battery staple"
WAIT_MS = 15_000


async def _prepare(data_dir: Path) -> int:
    store = Store(f"sqlite:///{data_dir}/studycast.db")
    try:
        await upgrade(store)
        sid = await create_study_session(store, T0, "vp8")
        recordings = Recordings(store, data_dir, lambda: T0, monotonic=lambda: 0.0)
        recordings.start()
        recorder = recordings.recorder(sid, "vp8")
        clip = shared_clip("vp8")
        resume = round(10 * CLIP_FPS)
        assert resume in clip.keyframe_indices
        for connection, part, start in ((1, clip, 0.0), (2, clip_from(clip, resume), 4.5)):
            for item in clip_packets(part, connection):
                if item.at < SEGMENT_S:
                    recorder.media(replace(item.packet, arrived_at=start + item.at))
            await asyncio.sleep(0.5)  # let the writer thread keep up with its queue
        recorder.relay_closed()
        await recordings.close()
        async with store.write() as db:
            unit = OrgUnit(name="北京", path="北京", depth=1, created_at=T0)
            db.add(unit)
            await db.flush()
            db.add(
                Member(member_no="M001", name="王伟", unit_id=unit.id, created_at=T0, updated_at=T0)
            )
            opened = T0 + timedelta(seconds=SEGMENT_S + GAP_S + QUESTION_INTO_S)
            db.add(
                QuizQuestion(
                    session_id=sid,
                    position=1,
                    prompt="What is 6 × 7?",
                    options={"choices": ["42", "24"]},
                    correct={"choices": [0]},
                    opened_at=opened,
                    closes_at=opened + timedelta(seconds=30),
                    closed_at=opened + timedelta(seconds=1),
                )
            )
        return sid
    finally:
        await store.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    data_dir = tmp_path_factory.mktemp("recording-web")
    sid = asyncio.run(_prepare(data_dir))
    with serve(data_dir, [("olga", "organiser", PASSWORD)]) as url:
        yield url, sid, data_dir


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as p:
        b = chromium(p)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(locale="en-GB", timezone_id="UTC")
    ctx.set_default_timeout(WAIT_MS)
    problems: list[str] = []
    page = ctx.new_page()
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    yield page
    ctx.close()
    assert problems == []


def _video(page: Any) -> dict[str, Any]:
    return dict(
        page.evaluate(
            "() => { const v = document.getElementById('video');"
            " return {segment: v.dataset.segment, time: v.currentTime, paused: v.paused}; }"
        )
    )


def _wait(page: Any, condition: str) -> None:
    page.wait_for_function(
        "() => { const v = document.getElementById('video'); return " + condition + "; }",
        timeout=WAIT_MS,
    )


def test_the_player_plays_the_segments_and_jumps_to_a_chapter(
    world: tuple[str, int, Path], page: Any, tmp_path: Path
) -> None:
    url, sid, _ = world
    r = page.context.request.post(
        f"{url}/api/login", data={"username": "olga", "password": PASSWORD}
    )
    assert r.ok, r.text()
    page.goto(f"{url}/recording.html?session={sid}")
    expect(page.locator("#rec-heading")).to_have_text("Recording")
    expect(page.locator("#bar-segments .rec-bar-segment")).to_have_count(2)
    chapter = page.locator("#chapter-list .rec-chapter")
    expect(chapter).to_have_count(1)
    expect(chapter).to_contain_text("Question 1: What is 6 × 7?")
    expect(chapter.locator(".rec-chapter-time")).to_have_text("0:06")
    expect(page.locator("#bar-marks .rec-bar-mark")).to_have_count(1)
    expect(page.locator("#download-all")).to_have_attribute(
        "href", f"/api/sessions/{sid}/recordings/download"
    )
    expect(page.locator("#segment-list a")).to_have_count(2)

    page.get_by_role("button", name="Play").click()
    _wait(page, "v.dataset.segment === '0' && v.currentTime > 1")
    expect(page.locator("#clock")).to_contain_text("/ 0:08")
    page.screenshot(path=str(tmp_path / "playing.png"))

    # The chapter is in the second segment: the player switches to it, 1.5 s in.
    chapter.click()
    _wait(page, "v.dataset.segment === '1' && v.currentTime >= 1.4 && !v.paused")
    at = _video(page)
    assert at["segment"] == "1" and 1.4 <= at["time"] < 3.5, at
    expect(chapter).to_have_attribute("aria-current", "true")
    _wait(page, f"v.currentTime > {at['time'] + 0.3}")
    page.screenshot(path=str(tmp_path / "chapter.png"))

    # Back to the start (Home on the bar): the first segment plays, then hands over.
    page.locator("#bar").focus()
    page.keyboard.press("Home")
    _wait(page, "v.dataset.segment === '0' && v.currentTime < 2")
    _wait(page, "v.dataset.segment === '1' && v.currentTime > 0.2")


def test_a_member_plays_from_the_personal_link_without_downloads(
    world: tuple[str, int, Path], page: Any
) -> None:
    url, sid, data_dir = world
    secret = Settings(_env_file=None, data_dir=data_dir).resolved_secret_key()
    token = issue(
        secret, session_id=sid, role=TokenRole.MEMBER, subject="member:M001", now=datetime.now(UTC)
    )
    page.goto(f"{url}/recording.html#s={sid}&t={token}")
    expect(page.locator("#chapter-list .rec-chapter")).to_have_count(1)
    expect(page.locator("#downloads")).to_be_hidden()
    page.get_by_role("button", name="中文").click()
    expect(page.locator("#rec-heading")).to_have_text("录像")
    expect(page.locator("#chapter-list .rec-chapter")).to_contain_text("第 1 题：What is 6 × 7?")
    page.get_by_role("button", name="播放").click()
    _wait(page, "v.currentTime > 0.5")
