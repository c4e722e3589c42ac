"""The auditor views in a real Chromium against ``studycast serve --demo`` over a store holding
the scripted session of ``audit_web_support`` (its figures are worked out there)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from audit_web_support import TITLE, AuditWorld, prepare, serve_demo
from browser import chromium
from playwright.sync_api import expect, sync_playwright

WAIT_MS = 10_000
EXPECTED = ["D0001", "D0002", "D0003", "D0006", "D0007", "D0008"]
EXPECTED += ["D0011", "D0012", "D0013", "D0016", "D0017", "D0018"]
PRESENT = ["D0001", "D0002", "D0003", "D0004"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, AuditWorld]]:
    data_dir = tmp_path_factory.mktemp("audit-web")
    scripted = prepare(data_dir)
    with serve_demo(data_dir) as url:
        yield url, scripted


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as p:
        b = chromium(p)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def problems() -> list[str]:
    return []


@pytest.fixture
def context(browser: Any, problems: list[str]) -> Iterator[Any]:
    """A fresh English-speaking browser context in UTC (times on the page are local)."""
    ctx = browser.new_context(locale="en-GB", timezone_id="UTC", accept_downloads=True)
    ctx.set_default_timeout(WAIT_MS)
    yield ctx
    ctx.close()
    # Console errors fail the test (CSP violations, missing assets, exceptions in modules);
    # the 401 before logging in, an expected 404 and a deliberately cut connection show there
    # as failed resources.
    expected = ("status of 401", "status of 404", "net::ERR_FAILED")
    unexpected = [p for p in problems if not any(e in p for e in expected)]
    assert unexpected == []


def new_page(context: Any, problems: list[str]) -> Any:
    page = context.new_page()
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return page


def log_in(page: Any, url: str, scripted: AuditWorld) -> None:
    """Open the audit page: not logged in, it sends us to the login page first."""
    page.goto(f"{url}/audit.html")
    expect(page).to_have_url(f"{url}/login.html?next=audit.html")
    page.get_by_role("button", name="English").click()
    username, password = scripted.auditor
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    # The login page follows ?next= back here.
    expect(page).to_have_url(f"{url}/audit.html")
    expect(page.locator("#audit-heading")).to_have_text("Audit")


def member_numbers(page: Any) -> list[str]:
    return list(
        page.locator("#report-table tbody tr").evaluate_all("rs => rs.map(r => r.dataset.member)")
    )


def test_auditor_reviews_a_session(
    world: tuple[str, AuditWorld], context: Any, problems: list[str], tmp_path: Path
) -> None:
    url, scripted = world
    page = new_page(context, problems)
    log_in(page, url, scripted)

    # The chain is verified on arrival.
    chain = page.locator("#chain-status")
    expect(chain).to_have_attribute("data-state", "ok")
    expect(chain).to_have_text("Verified: the attendance and admin chains are intact.")
    expect(page.locator("#chain-detail")).to_contain_text("admin log:")
    expect(page.locator("#public-key")).to_have_attribute("href", "/api/audit/public-key")

    # Sessions: the scripted one (ended) and the demo's (scheduled).
    sessions = page.locator("#sessions-table tbody tr")
    expect(sessions).to_have_count(2)
    expect(page.locator("#sessions-table")).to_contain_text("ended")
    expect(page.locator("#sessions-table")).to_contain_text("scheduled")
    expect(page.locator("#sessions-table")).to_contain_text("Nov 24, 2026, 8:00 AM")
    page.screenshot(path=str(tmp_path / "sessions.png"), full_page=True)

    page.get_by_role("link", name=TITLE).click()
    expect(page).to_have_url(f"{url}/audit.html#session={scripted.session_id}")
    expect(page.locator("#session-heading")).to_have_text(TITLE)
    expect(page.locator("#session-meta")).to_contain_text("final figures")
    rows = page.locator("#report-table tbody tr")
    expect(rows).to_have_count(13)
    assert member_numbers(page) == sorted([*EXPECTED, "D0004"])
    first = page.locator("#report-table tbody tr[data-member=D0001] td")
    texts = first.all_inner_texts()
    assert texts[:9] == [
        "D0001",
        "王伟",
        "北京/朝阳办公区",
        "remote",
        "—",
        "Nov 24, 2026, 8:00 AM",
        "55",
        "100%",
        "1/1",
    ]
    assert texts[11] == "yes"
    d3 = page.locator("#report-table tbody tr[data-member=D0003] td")
    assert d3.all_inner_texts()[3:9] == [
        "on site",
        "bj-chaoyang-1",
        "Nov 24, 2026, 8:02 AM",
        "53",
        "96.4%",
        "1/1",
    ]
    expect(page.locator("#report-summary")).to_have_text(
        "13 members shown; 2 qualified. Live time 55 min."
    )
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

    # Sorting: by watched minutes, then the other way round.
    watched = page.locator("#report-table th[data-key=watched_min]")
    watched.get_by_role("button").click()
    expect(watched).to_have_attribute("aria-sort", "ascending")
    assert member_numbers(page)[-3:] == ["D0004", "D0003", "D0001"]
    watched.get_by_role("button").click()
    expect(watched).to_have_attribute("aria-sort", "descending")
    assert member_numbers(page)[:4] == ["D0001", "D0003", "D0004", "D0002"]

    # Filter by mode: the table and the export links follow.
    page.locator("#filter-mode").select_option("remote")
    expect(rows).to_have_count(2)
    assert member_numbers(page) == ["D0001", "D0002"]
    expect(page.locator("#export-csv")).to_have_attribute(
        "href", f"/api/sessions/{scripted.session_id}/report?mode=remote&format=csv"
    )
    with page.expect_download(timeout=WAIT_MS) as download_info:
        page.locator("#export-csv").click()
    download = download_info.value
    name = download.suggested_filename
    assert name.startswith("十一月学习会 _ November study-members-") and name.endswith("Z.csv")
    raw = Path(download.path()).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert b"\r\n" in raw
    lines = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert lines[1] == ["筛选 / Filter", f"session={scripted.session_id}; mode=remote"]
    header = lines.index([]) + 1
    listed = [line[0] for line in lines[header + 1 :]]
    assert listed == ["D0001", "D0002"]
    assert lines[header + 1][1] == "王伟"

    with page.expect_download(timeout=WAIT_MS) as download_info:
        page.locator("#export-xlsx").click()
    assert download_info.value.suggested_filename.endswith(".xlsx")
    book = openpyxl.load_workbook(io.BytesIO(Path(download_info.value.path()).read_bytes()))
    cells = [str(v) for row in book.active.iter_rows(values_only=True) for v in row if v]
    assert "D0001" in cells and "D0002" in cells and "D0003" not in cells
    book.close()

    page.locator("#filter-mode").select_option("")
    expect(rows).to_have_count(13)
    page.locator("#filter-qualified").select_option("yes")
    expect(rows).to_have_count(2)
    assert sorted(member_numbers(page)) == ["D0001", "D0003"]
    page.locator("#filter-qualified").select_option("")
    expect(rows).to_have_count(13)

    # Roll-ups: the unit tree, indented, and the venues.
    units = page.locator("#units-table tbody tr")
    assert units.evaluate_all("rs => rs.map(r => r.dataset.unit)") == [
        "上海",
        "上海/浦东办公区",
        "北京",
        "北京/朝阳办公区",
        "北京/海淀办公区",
        "北京/西城办公区",
    ]
    beijing = page.locator('#units-table tr[data-unit="北京"] td')
    assert beijing.all_inner_texts() == ["北京", "12", "3", "0", "2", "16.7%"]
    expect(page.locator('#units-table tr[data-unit="北京/朝阳办公区"] td').first).to_have_class(
        "unit depth-2"
    )
    venue = page.locator("#venues-table tr[data-venue=bj-chaoyang-1] td")
    assert venue.all_inner_texts() == ["朝阳第1会议室 (bj-chaoyang-1)", "55", "100%", "1", "1"]
    page.locator("#units-table").screenshot(path=str(tmp_path / "units.png"))

    # The timeline: three series, every marker with its tooltip.
    chart = page.locator("#timeline svg[role=img]")
    expect(chart).to_have_attribute(
        "aria-label",
        "Members watching, venue screens connected and check-ins over time for " + TITLE,
    )
    for key in ("viewers", "screens", "checkins"):
        expect(chart.locator(f"path.series-{key}")).to_have_count(1)
    markers = chart.locator("g.marker")
    assert markers.evaluate_all("ms => ms.map(m => m.dataset.kind)") == [
        "live",
        "presence_opened",
        "presence_closed",
        "paused",
        "live",
        "quiz_opened",
        "quiz_closed",
        "ended",
    ]
    assert markers.nth(5).locator("title").text_content() == (
        "08:40 Question 1 opened: 学习的目的是什么？"
    )
    ticks = chart.locator(".chart-axis-x text").all_text_contents()
    assert ticks[0] == "08:00" and "09:00" in ticks
    expect(page.locator(".chart-legend")).to_contain_text("Members watching")
    page.locator("#timeline").screenshot(path=str(tmp_path / "timeline.png"))

    # A member's history.
    page.locator("#report-table tr[data-member=D0001] button.member-link").click()
    history = page.locator("#history-card")
    expect(history).to_be_visible()
    expect(page.locator("#history-heading")).to_have_text("History of D0001 王伟")
    expect(page.locator("#history-meta")).to_have_text("北京/朝阳办公区 · 10 points in all")
    history_rows = page.locator("#history-table tbody tr")
    expect(history_rows).to_have_count(1)
    assert history_rows.first.locator("td").all_inner_texts() == [
        TITLE,
        "Nov 24, 2026, 8:00 AM",
        "remote",
        "55",
        "100%",
        "yes",
        "10",
    ]
    history.screenshot(path=str(tmp_path / "history.png"))

    # Verify again on demand; then the language switch renders everything in Chinese.
    page.get_by_role("button", name="Verify now").click()
    expect(chain).to_have_attribute("data-state", "ok")
    page.get_by_role("button", name="中文").click()
    expect(page.locator("#audit-heading")).to_have_text("审计")
    expect(chain).to_have_text("已校验：考勤链与管理链完整无误。")
    expect(page.locator("#report-table th[data-key=watched_min]")).to_have_text("观看（分钟）")
    expect(page.locator("#report-table tr[data-member=D0003] td[data-col=mode]")).to_have_text(
        "现场"
    )
    expect(page.locator("#history-heading")).to_have_text("D0001 王伟 的记录")
    expect(page.locator(".chart-legend")).to_contain_text("观看人数")
    expect(page.locator("#sessions-table")).to_contain_text("已结束")
    page.screenshot(path=str(tmp_path / "zh-CN.png"), full_page=True)
    page.get_by_role("button", name="English").click()
    expect(page.locator("#audit-heading")).to_have_text("Audit")


def test_missing_session_and_unreachable_server(
    world: tuple[str, AuditWorld], context: Any, problems: list[str], tmp_path: Path
) -> None:
    url, scripted = world
    page = new_page(context, problems)
    log_in(page, url, scripted)

    page.goto(f"{url}/audit.html#session=999")
    page.reload()
    expect(page.locator("#session-missing")).to_have_text("Session 999 was not found.")
    expect(page.locator("#session-body")).to_be_hidden()
    page.screenshot(path=str(tmp_path / "missing.png"), full_page=True)

    # The server "goes away": the page says so and offers a retry, which then works.
    page.route("**/api/sessions", lambda route: route.abort())
    page.goto(f"{url}/audit.html")
    error = page.locator("#load-error")
    expect(error).to_be_visible()
    expect(error).to_have_attribute("data-code", "network")
    expect(page.locator("#load-error-text")).to_have_text(
        "The server cannot be reached. Check the connection and try again."
    )
    page.screenshot(path=str(tmp_path / "unreachable.png"), full_page=True)
    page.unroute("**/api/sessions")
    page.get_by_role("button", name="Try again").click()
    expect(error).to_be_hidden()
    expect(page.locator("#sessions-table tbody tr")).to_have_count(2)
    expect(page.locator("#chain-status")).to_have_attribute("data-state", "ok")


def test_fits_a_phone(world: tuple[str, AuditWorld], context: Any, problems: list[str]) -> None:
    url, scripted = world
    page = new_page(context, problems)
    page.set_viewport_size({"width": 360, "height": 740})
    log_in(page, url, scripted)
    page.goto(f"{url}/audit.html#session={scripted.session_id}")
    page.reload()
    expect(page.locator("#timeline svg")).to_be_visible()
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the audit page scrolls sideways on a phone by {overflow}px"
