"""The venue screen and the member page in a real Chromium against ``studycast serve --demo``.

One demo server, one broadcaster (the Python WHIP publisher) and one browser serve the whole
module; the tests run in order and follow one session: playing, check-in by QR, a quiz, a
presence check, an answer sent offline, a broadcaster that drops out and comes back, and the
pages' error and language states.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
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
    playing,
    wait_until,
)

pytestmark = pytest.mark.slow

VENUE = "bj-chaoyang-1"
WAIT_MS = 20_000
SKY = "What colour is the sky? 天空是什么颜色？"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    with demo_server(tmp_path_factory.mktemp("demo")) as running:
        yield running


@pytest.fixture(scope="module")
def organiser(server: DemoServer) -> Organiser:
    return Organiser(server.base, "organiser", server.logins["organiser"])


@pytest.fixture(scope="module")
def links(server: DemoServer, organiser: Organiser) -> dict[str, Any]:
    return dict(organiser.get(f"/api/sessions/{server.session_id}/member-links"))


@pytest.fixture(scope="module")
def broadcast(server: DemoServer, organiser: Organiser) -> Iterator[Broadcast]:
    session = organiser.get(f"/api/sessions/{server.session_id}")
    whip = organiser.get(f"/api/sessions/{server.session_id}/links")
    b = Broadcast(whip["whip_url"], whip["whip_token"], clip_for(session["video_codec"]))
    b.start()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as p:
        b = launch_chromium(p)
        try:
            yield b
        finally:
            b.close()


class Pages:
    """The module's pages, each in its own context (one person's phone or screen)."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.pages: dict[str, Any] = {}
        self.contexts: dict[str, Any] = {}
        self.errors: list[str] = []

    def open(self, name: str, url: str, locale: str = "en-GB", **context_args: Any) -> Any:
        context = self.contexts.get(name)
        if context is None:
            context = self.browser.new_context(locale=locale, **context_args)
            self.contexts[name] = context
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda e: self.errors.append(f"{name}: {e}"))
        page.goto(url)
        self.pages[name] = page
        return page

    def shoot(self, directory: Path) -> None:
        for name, page in self.pages.items():
            if not page.is_closed():
                page.screenshot(path=str(directory / f"{name}.png"))

    def close(self) -> None:
        for context in self.contexts.values():
            context.close()


@pytest.fixture(scope="module")
def pages(browser: Any) -> Iterator[Pages]:
    p = Pages(browser)
    try:
        yield p
    finally:
        p.close()
    assert p.errors == []


@pytest.fixture
def shots(pages: Pages, tmp_path: Path) -> Iterator[None]:
    yield
    pages.shoot(tmp_path)


def member_url(links: dict[str, Any], i: int) -> str:
    return str(links["members"][i]["url"])


def venue_url(links: dict[str, Any]) -> str:
    return next(str(v["url"]) for v in links["venues"] if v["slug"] == VENUE)


def add_question(organiser: Organiser, session_id: int, prompt: str) -> int:
    created = organiser.post(
        f"/api/sessions/{session_id}/questions",
        {
            "prompt": prompt,
            "kind": "single",
            "choices": ["红色", "Blue", "Green"],
            "correct": [1],
            "points": 10,
            "time_limit_s": 300,
        },
    )
    return int(created["questions"][0]["id"])


def test_venue_and_members_play_check_in_answer_and_confirm(
    server: DemoServer,
    organiser: Organiser,
    links: dict[str, Any],
    broadcast: Broadcast,
    pages: Pages,
    shots: None,
) -> None:
    sid = server.session_id
    venue = pages.open("venue", venue_url(links), viewport={"width": 1280, "height": 720})
    alice = pages.open("alice", member_url(links, 0))
    bob = pages.open("bob", member_url(links, 1), viewport={"width": 390, "height": 844})

    # The links leave the address bar at once.
    for page in (venue, alice, bob):
        assert "#" not in page.url
    expect(venue.locator("#venue-name")).to_have_text("朝阳第1会议室")
    expect(venue.locator("#session-title")).to_contain_text("Quarterly study")
    expect(venue.locator("#short-code")).to_have_text(_six_digits())

    # Everyone plays the broadcast: a picture that advances, with an audio track.
    alice.locator("#mode-remote").click()
    bob.locator("#mode-remote").click()
    for page in (venue, alice, bob):
        info = playing(page)
        assert info["width"] == 640 and info["audio"] == 1 and info["video"] == 1, info
        wait_until(_player_says(page, "playing"), 10, "the player to say it plays")
    expect(venue.locator("#banner")).to_be_hidden()
    expect(alice.locator("#session-state")).to_have_text("Live")
    expect(bob.locator("#player-status")).to_have_text("Playing")
    # The mobile page fits its 390 px: nothing scrolls sideways.
    assert bob.evaluate("document.documentElement.scrollWidth") <= 390

    # Bob scans the venue screen's code: the phone opens the URL in the QR code.
    code = organiser.get(f"/api/sessions/{sid}/venues/{VENUE}/checkin-code")
    shown = venue.evaluate("document.getElementById('qr').src")
    assert shown.startswith("data:image/svg+xml;base64,")
    bob.close()
    bob = pages.open("bob", code["url"])
    assert "#" not in bob.url
    expect(bob.locator("#mode-onsite")).to_have_attribute("aria-pressed", "true")
    # The snapshot names the session's venues, so the member sees the room's name.
    expect(bob.locator("#checkin-status")).to_have_text("Checked in at 朝阳第1会议室")
    expect(venue.locator("#checkin-count")).to_have_text("1", timeout=15_000)

    # A question: both members see it and answer; the reveal shows the right choice.
    qid = add_question(organiser, sid, SKY)
    organiser.post(f"/api/sessions/{sid}/questions/{qid}/open")
    for page, choice in ((alice, 1), (bob, 2)):
        expect(page.locator("#quiz-prompt")).to_have_text(SKY)
        page.locator(f"#quiz-choices [data-index='{choice}']").click()
        page.locator("#quiz-submit").click()
        expect(page.locator("#quiz-result")).to_have_attribute("data-status", "saved")
    expect(venue.locator("#quiz-prompt")).to_have_text(SKY)
    results = organiser.get(f"/api/sessions/{sid}/questions/{qid}/results")
    assert results["answered"] == 2
    assert results["distribution"] == [0, 1, 1], results
    organiser.post(f"/api/sessions/{sid}/questions/{qid}/close")
    organiser.post(f"/api/sessions/{sid}/questions/{qid}/reveal")
    for page, verdict in ((alice, "Your answer is right."), (bob, "Your answer is not right.")):
        expect(page.locator("#quiz-card")).to_have_attribute("data-state", "revealed")
        expect(page.locator("#quiz-choices .correct")).to_have_attribute("data-index", "1")
        expect(page.locator("#quiz-result")).to_have_text(verdict)
    expect(venue.locator("#quiz-choices li.correct")).to_have_text("Blue")

    # A presence check: the code is read off the venue screen and typed on the phone.
    check = organiser.post(f"/api/sessions/{sid}/presence-checks", {"window_s": 60})
    expect(venue.locator("#presence-overlay")).to_be_visible()
    screen_code = venue.locator("#presence-code").inner_text()
    assert screen_code == check["code"]
    expect(venue.locator("#presence-countdown")).to_contain_text("Closes in")
    expect(bob.locator("#presence-card")).to_be_visible()
    expect(alice.locator("#presence-image")).to_be_visible()  # remote: the code as a picture
    bob.locator("#presence-code").fill(screen_code)
    bob.locator("#presence-form button[type=submit]").click()
    expect(bob.locator("#presence-result")).to_have_attribute("data-status", "passed")
    expect(bob.locator("#presence-result")).to_have_text("Presence confirmed.")
    me = wait_until(lambda: (m := _me(bob))["presence"] and m, 10, "the presence answer in /me")
    assert [p["outcome"] for p in me["presence"]] == ["passed"]
    assert me["checked_in"] == VENUE


def test_an_answer_given_offline_is_stored_once(
    server: DemoServer, organiser: Organiser, pages: Pages, shots: None
) -> None:
    sid = server.session_id
    alice = pages.pages["alice"]
    qid = add_question(organiser, sid, "Offline question")
    organiser.post(f"/api/sessions/{sid}/questions/{qid}/open")
    expect(alice.locator("#quiz-prompt")).to_have_text("Offline question")

    pages.contexts["alice"].set_offline(True)
    try:
        alice.locator("#quiz-choices [data-index='1']").click()
        alice.locator("#quiz-submit").click()
        expect(alice.locator("#quiz-result")).to_have_attribute("data-status", "pending")
        expect(alice.locator("#outbox-status")).not_to_have_attribute("data-pending", "0")
        expect(alice.locator("#notice")).to_have_attribute("data-kind", "unreachable")
        alice.wait_for_timeout(2500)  # a retry or two fails meanwhile
        assert organiser.get(f"/api/sessions/{sid}/questions/{qid}/results")["answered"] == 0
    finally:
        pages.contexts["alice"].set_offline(False)
    expect(alice.locator("#quiz-result")).to_have_attribute("data-status", "saved")
    expect(alice.locator("#outbox-status")).to_have_attribute("data-pending", "0")
    alice.wait_for_timeout(1500)  # room for a duplicate send, if there were one
    results = organiser.get(f"/api/sessions/{sid}/questions/{qid}/results")
    assert results["answered"] == 1
    assert results["distribution"][1] == 1
    me = _me(alice)
    assert [q["choices"] for q in me["quiz"] if q["question"] == qid] == [[1]]
    organiser.post(f"/api/sessions/{sid}/questions/{qid}/close")


def test_the_venue_screen_pauses_and_resumes_with_the_broadcaster(
    broadcast: Broadcast, pages: Pages, shots: None
) -> None:
    venue = pages.pages["venue"]
    playing(venue)
    # Record every banner the screen shows from here on (one entry per change).
    venue.evaluate(BANNER_LOG)
    broadcast.stop()
    expect(venue.locator("#banner")).to_have_attribute("data-banner", "paused")
    expect(venue.locator("#banner")).to_contain_text("Broadcast paused")
    broadcast.start()
    expect(venue.locator("#banner")).to_be_hidden(timeout=30_000)
    info = playing(venue, within=30)
    assert info["width"] == 640
    # Resumed in the same document: no reload.
    assert venue.evaluate("window.bannerLog !== undefined")
    shown = [b for b in venue.evaluate("window.bannerLog") if b != "connecting"]
    assert shown == ["paused", ""], shown


def test_a_bad_link_says_so_in_both_languages(
    server: DemoServer, links: dict[str, Any], pages: Pages, shots: None
) -> None:
    member = member_url(links, 2)
    forged = member[:-4] + ("AAAA" if not member.endswith("AAAA") else "BBBB")
    page = pages.open("forged-member", forged, locale="zh-CN")
    expect(page.locator("#fatal")).to_be_visible()
    expect(page.locator("#fatal-title")).to_have_text("您的链接已过期或无效")
    page.locator("[data-lang='en']").click()
    expect(page.locator("#fatal-title")).to_have_text("Your link has expired or is not valid")
    page.locator("[data-lang='zh-CN']").click()
    expect(page.locator("#fatal-title")).to_have_text("您的链接已过期或无效")

    venue = venue_url(links)
    screen = pages.open("forged-venue", venue[:-4] + "AAAA", locale="en-US")
    expect(screen.locator("#fatal")).to_have_attribute("data-fatal", "link")
    expect(screen.locator("#fatal-title")).to_have_text(
        "This venue link has expired or is not valid"
    )
    screen.locator("[data-lang='zh-CN']").click()
    expect(screen.locator("#fatal-title")).to_have_text("会场链接已过期或无效")

    # A working member page switches language too.
    alice = pages.pages["alice"]
    alice.locator("[data-lang='zh-CN']").click()
    expect(alice.locator("#mode-remote")).to_have_text("远程收看")
    expect(alice.locator("#session-state")).to_have_text("直播中")
    alice.locator("[data-lang='en']").click()
    expect(alice.locator("#mode-remote")).to_have_text("Remotely")


BANNER_LOG = """() => {
  const banner = document.getElementById('banner');
  window.bannerLog = [];
  const note = () => {
    const now = banner.hidden ? '' : banner.dataset.banner;
    if (window.bannerLog.at(-1) !== now) window.bannerLog.push(now);
  };
  new MutationObserver(note).observe(banner, {attributes: true});
}"""


def _me(page: Any) -> dict[str, Any]:
    return dict(
        page.evaluate(
            """async () => {
              const {sessionId, token} = window.studycastMember.session;
              const r = await fetch(`/api/sessions/${sessionId}/me`,
                                    {headers: {Authorization: 'Bearer ' + token}});
              return r.json();
            }"""
        )
    )


def _player_says(page: Any, state: str) -> Callable[[], bool]:
    return lambda: bool(page.evaluate("window.studycastPlayer.state") == state)


def _six_digits() -> Any:
    return re.compile(r"^[0-9]{6}$")
