"""The organiser console in the system Chromium against ``studycast serve --demo``: log in, go
live from the fake camera, watch the dashboard, run a quiz and a presence check, copy the OBS
settings, edit and end the session."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from console_support import (
    DemoServer,
    api_login,
    demo_server,
    launch_chromium,
    send_event,
    token_of,
)
from relay_support import Watcher, shared_clip

from client.publisher import publish
from server.relay.ice import advertise_addresses

pytestmark = pytest.mark.slow

WAIT_MS = 15_000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DemoServer]:
    with demo_server(tmp_path / "data") as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe: the test server lives at an IP address, whose cookies aiohttp refuses by default
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=20)
    ) as session:
        yield session


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await launch_chromium(p)
        try:
            yield b
        finally:
            await b.close()


async def poll(check: Callable[[], Awaitable[Any]], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {within}s waiting for {what} (last: {last!r})")


async def log_in(page: Any, server: DemoServer) -> None:
    await page.goto(f"{server.base}/console.html")
    await page.wait_for_url(re.compile(r"login\.html\?next=console\.html"), timeout=WAIT_MS)
    await page.fill("#username", "organiser")
    await page.fill("#password", server.passwords["organiser"])
    await page.click("#login-submit")
    await page.wait_for_load_state()


async def test_not_logged_in_goes_to_login(
    server: DemoServer, browser: Any, tmp_path: Path
) -> None:
    page = await browser.new_page()
    await page.goto(f"{server.base}/console.html")
    await page.wait_for_url(re.compile(r"/login\.html\?next=console\.html$"), timeout=WAIT_MS)
    await page.screenshot(path=str(tmp_path / "console-login.png"))


async def test_console_runs_a_live_session(
    server: DemoServer, browser: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    base = server.base
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        await _run_console(page, server, http, tmp_path)
    finally:
        await page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
        await context.close()
    assert errors == [], errors


async def _run_console(
    page: Any, server: DemoServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    base = server.base
    await log_in(page, server)
    # login.js may or may not honour ?next=; the console is one click or one URL away.
    if "console.html" not in page.url:
        await page.goto(f"{base}/console.html")
    row = page.locator("#sessions-body tr").first
    await row.wait_for(timeout=WAIT_MS)
    assert "Quarterly study" in await row.inner_text()
    await row.locator("a").click()
    await page.locator("#s-title").filter(has_text="Quarterly").wait_for(timeout=WAIT_MS)
    session_id = int(re.search(r"s=(\d+)", page.url).group(1))  # type: ignore[union-attr]

    # The OBS settings are there, and copy to the clipboard.
    whip_url = await page.input_value("#whip-url")
    whip_token = await page.input_value("#whip-token")
    assert whip_url == f"{base}/whip/{session_id}"
    assert whip_token.count(".") == 2, "a JWT"
    await page.click("button[data-copy=whip-token]")
    await page.locator("#copy-status").filter(has_text="Copied").wait_for(timeout=WAIT_MS)
    assert await page.evaluate("navigator.clipboard.readText()") == whip_token
    assert await page.locator("#member-links li").count() == 20
    assert await page.locator("#venue-links li").count() == 5

    # Go live from the fake camera: the relay sees a broadcaster with packets flowing.
    await api_login(http, base, "organiser", server.passwords["organiser"])
    await page.click("#publish-start")
    await page.locator("#publish-state[data-state=live]").wait_for(timeout=WAIT_MS)

    async def broadcasting() -> dict[str, Any] | None:
        async with http.get(f"{base}/api/sessions/{session_id}/stats") as r:
            stats: dict[str, Any] = await r.json()
        b = stats.get("broadcaster")
        return stats if b and b["packets_in"].get("video", 0) > 50 else None

    stats = await poll(broadcasting, 20, "video packets from the browser broadcaster")
    assert stats["broadcaster"]["video_codec"].lower() == "h264"
    assert stats["state"] == "live"
    await page.locator("#m-broadcaster[data-connection=connected]").wait_for(timeout=WAIT_MS)

    # A venue screen (a Python WHEP viewer with the venue's token) receives the video.
    async with http.get(f"{base}/api/sessions/{session_id}/member-links") as r:
        links = await r.json()
    venue = links["venues"][0]
    advertise_addresses(["127.0.0.1"])
    watcher = Watcher()
    try:
        await watcher.start(http, f"{base}/whep/{session_id}", token_of(venue["url"]))
        await watcher.wait_connected(15)
        await poll(lambda: _true(len(watcher.of("video")) > 30), 15, "video at the venue viewer")
        online = page.locator(f"#venues-body tr[data-venue='{venue['slug']}'] [data-online=true]")
        await online.wait_for(timeout=WAIT_MS)
        await page.locator("#m-viewers").filter(has_text="1").wait_for(timeout=WAIT_MS)
        await page.screenshot(path=str(tmp_path / "console-live.png"), full_page=True)

        # A question made in the form, opened with a timer.
        await page.fill("#q-prompt", "安全生产的第一责任人是？")
        await page.fill("#q-choices", "员工\n单位主要负责人\n安全员")
        await page.fill("#q-correct", "B")
        await page.fill("#time-limit", "120")
        await page.click("#q-add")
        question_row = page.locator("#questions-body tr").last
        await question_row.filter(has_text="第一责任人").wait_for(timeout=WAIT_MS)
        qid = int(await question_row.get_attribute("data-question"))
        await question_row.locator("[data-action=open]").click()
        await page.locator("#active-question[data-state=open]").wait_for(timeout=WAIT_MS)
        await (
            page.locator("#aq-countdown")
            .filter(has_text=re.compile(r"\d+ s left"))
            .wait_for(timeout=WAIT_MS)
        )
        await page.locator("#aq-missing-count").filter(has_text="20").wait_for(timeout=WAIT_MS)

        # A member answers through the API: a bar with count 1, one fewer not answered.
        member = links["members"][0]
        result = await send_event(
            http,
            base,
            session_id,
            token_of(member["url"]),
            "quiz_answer",
            question=qid,
            choices=[1],
        )
        assert result["status"] == "accepted", result
        bar = page.locator("#aq-bars [data-choice='1'] .console-bar-count")
        await bar.filter(has_text="1").wait_for(timeout=WAIT_MS)
        await page.locator("#aq-missing-count").filter(has_text="19").wait_for(timeout=WAIT_MS)
        assert member["member_no"] not in await page.inner_text("#aq-missing")
        assert await page.inner_text("#aq-bars [data-choice='0'] .console-bar-count") == "0"

        await question_row.locator("[data-action=close]").click()
        await page.locator("#active-question[data-state=closed]").wait_for(timeout=WAIT_MS)
        await question_row.locator("[data-action=reveal]").click()
        await page.locator("#active-question[data-state=revealed]").wait_for(timeout=WAIT_MS)
        await page.locator("#aq-bars .console-bar.is-correct[data-choice='1']").wait_for(
            timeout=WAIT_MS
        )
        await page.click("#lb-refresh")

        # A presence check: its code and the pass rate appear.
        await page.fill("#window-s", "60")
        await page.click("#presence-trigger")
        await (
            page.locator("#presence-code")
            .filter(has_text=re.compile(r"\w+"))
            .wait_for(timeout=WAIT_MS)
        )
        await page.locator("#presence-rate").filter(has_text="of 20").wait_for(timeout=WAIT_MS)
        async with http.get(f"{base}/api/sessions/{session_id}/presence-checks") as r:
            checks = (await r.json())["checks"]
        assert [c["code"] for c in checks] == [await page.inner_text("#presence-code")]
        await page.screenshot(path=str(tmp_path / "console-quiz.png"), full_page=True)
    finally:
        await watcher.close()

    # Edit the title, and ask make-up viewers to pass the recording's presence checks; the
    # rest of the rule, which the form does not show, is kept.
    async with http.get(f"{base}/api/sessions/{session_id}") as r:
        rule_before = (await r.json())["attendance_rule"]
    assert rule_before["makeup_presence"] is False
    await page.click("#edit-session")
    await page.fill("#f-title", "季度学习会（已改期）")
    await page.check("#f-makeup-presence")
    await page.click("#form-save")
    await page.locator("#s-title").filter(has_text="已改期").wait_for(timeout=WAIT_MS)
    async with http.get(f"{base}/api/sessions/{session_id}") as r:
        edited = await r.json()
    assert edited["title"] == "季度学习会（已改期）"
    assert edited["attendance_rule"] == {**rule_before, "makeup_presence": True}

    # Stop broadcasting, then end the session (after confirming).
    await page.click("#publish-stop")
    await page.locator("#publish-state[data-state=stopped]").wait_for(timeout=WAIT_MS)
    await page.click("#end-session")
    await page.click("#end-no")  # changed one's mind: the prompt closes, nothing ends
    await page.locator("#end-confirm").wait_for(state="hidden", timeout=WAIT_MS)
    async with http.get(f"{base}/api/sessions/{session_id}") as r:
        assert (await r.json())["state"] != "ended"
    await page.click("#end-session")
    await page.click("#end-yes")
    await page.locator("#s-state.is-ended").wait_for(timeout=WAIT_MS)
    async with http.get(f"{base}/api/sessions/{session_id}") as r:
        assert (await r.json())["state"] == "ended"


async def test_a_broadcast_taken_over_by_another_device_says_so_and_is_taken_back(
    server: DemoServer, browser: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Another broadcaster (here aiortc, as OBS would) takes the session from the console: the
    console does not take it back by itself (they would replace each other for ever), says why
    in the page's language, Go live takes it back, and Stop turns the camera off."""
    base = server.base
    context = await browser.new_context(locale="zh-CN")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    advertise_addresses(["127.0.0.1"])
    other = None
    try:
        await log_in(page, server)
        if "console.html" not in page.url:
            await page.goto(f"{base}/console.html")
        row = page.locator("#sessions-body tr").first
        await row.wait_for(timeout=WAIT_MS)
        await row.locator("a").click()
        await page.locator("#whip-url").wait_for(timeout=WAIT_MS)
        whip_url = await page.input_value("#whip-url")
        whip_token = await page.input_value("#whip-token")
        session_path = "/api/sessions/" + whip_url.rsplit("/", 1)[1]
        await api_login(http, base, "organiser", server.passwords["organiser"])

        async def broadcaster() -> dict[str, Any]:
            async with http.get(f"{base}{session_path}/stats") as r:
                stats: dict[str, Any] = await r.json()
            return stats

        await page.click("#publish-start")
        await page.locator("#publish-state[data-state=live]").wait_for(timeout=WAIT_MS)

        async def broadcasting() -> bool:
            return (await broadcaster())["broadcaster"] is not None

        await poll(broadcasting, 20, "the console's broadcast")
        seen_before = (await broadcaster())["broadcasters_seen"]

        other = await publish(whip_url, whip_token, shared_clip("h264"), http=http)
        await other.wait_connected(10)
        state = page.locator("#publish-state[data-state=taken_over]")
        await state.wait_for(timeout=30_000)
        assert "另一台设备接管了本次直播" in await state.inner_text()
        assert not await page.is_disabled("#publish-start")
        assert not await page.is_disabled("#publish-stop")  # the camera is still on
        # It stays taken over: the other device keeps the session.
        await asyncio.sleep(4)
        assert await page.get_attribute("#publish-state", "data-state") == "taken_over"
        stats = await broadcaster()
        assert stats["broadcasters_seen"] == seen_before + 1, stats
        assert other.pc.connectionState == "connected"
        await page.screenshot(path=str(tmp_path / "console-taken-over.png"), full_page=True)

        # Go live takes it back; the other device's connection is closed.
        await page.click("#publish-start")
        await page.locator("#publish-state[data-state=live]").wait_for(timeout=WAIT_MS)
        await poll(
            lambda: _true(other is not None and other.pc.connectionState != "connected"),
            20,
            "the other device's connection to be closed",
        )
        assert (await broadcaster())["broadcasters_seen"] == seen_before + 2

        # Taken over again, Stop turns the camera off and leaves the other device live.
        await other.pc.close()
        other = await publish(whip_url, whip_token, shared_clip("h264"), http=http)
        await other.wait_connected(10)
        await state.wait_for(timeout=30_000)
        await page.click("#publish-stop")
        await page.locator("#publish-state[data-state=stopped]").wait_for(timeout=WAIT_MS)
        assert await page.evaluate("document.getElementById('preview').srcObject") is None
        assert await page.is_disabled("#publish-stop")
        await asyncio.sleep(1)
        assert other.pc.connectionState == "connected"
        assert (await broadcaster())["broadcaster"] is not None
    finally:
        if other is not None:
            await other.pc.close()
        await context.close()
    assert errors == [], errors


async def _true(value: bool) -> bool:
    return value


async def test_camera_permission_denied_is_explained(
    server: DemoServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await launch_chromium(p, fake_ui=False)
        try:
            page = await b.new_page()
            await log_in(page, server)
            if "console.html" not in page.url:
                await page.goto(f"{server.base}/console.html")
            await page.locator("#sessions-body tr a").first.click()
            await page.locator("#publish-start").wait_for(timeout=WAIT_MS)
            await page.click("#publish-start")
            error = page.locator("#media-error")
            await error.filter(has_text="not allowed").wait_for(timeout=WAIT_MS)
            assert await page.get_attribute("#publish-state", "data-state") == "idle"
            await page.screenshot(path=str(tmp_path / "console-denied.png"))
        finally:
            await b.close()
