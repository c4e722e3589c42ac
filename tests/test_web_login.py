"""The sign-in page in a real Chromium against a real server subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, serve
from playwright.sync_api import expect, sync_playwright

PASSWORD = "correct horse battery staple"
SCREENSHOT = Path("/tmp/login.png")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("web"), [("olga", "organiser", PASSWORD)]) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as p:
        b = chromium(p)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """Opens pages in a fresh context for a browser language; fails the test on any console
    error (a CSP violation, a 404 for an asset, an exception in a module)."""
    contexts: list[Any] = []
    problems: list[str] = []

    def open_in(locale: str, url: str, **context_args: Any) -> Any:
        context = browser.new_context(locale=locale, **context_args)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(url)
        return page

    yield open_in
    for context in contexts:
        context.close()
    # A refused login shows as a failed request in the console: expected, not a problem.
    unexpected = [p for p in problems if "status of 401" not in p]
    assert unexpected == []


def test_language_follows_the_browser_and_the_switch(base_url: str, open_page: Any) -> None:
    page = open_page("zh-CN", f"{base_url}/login.html")
    heading = page.locator("#login-heading")
    expect(heading).to_have_text("登录")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.get_by_role("button", name="中文")).to_have_attribute("aria-pressed", "true")

    page.get_by_role("button", name="English").click()
    expect(heading).to_have_text("Sign in")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("label[for=password]")).to_have_text("Password")
    expect(page).to_have_title("Sign in · studycast")

    page.reload()  # the choice is remembered
    expect(heading).to_have_text("Sign in")
    page.get_by_role("button", name="中文").click()
    expect(heading).to_have_text("登录")
    expect(page.locator("label[for=password]")).to_have_text("密码")
    expect(page).to_have_title("登录 · studycast")

    english = open_page("en-GB", f"{base_url}/login.html")
    expect(english.locator("#login-heading")).to_have_text("Sign in")
    other = open_page("fr-FR", f"{base_url}/login.html")
    expect(other.locator("#login-heading")).to_have_text("Sign in")


def test_landing_page_leads_to_the_login(base_url: str, open_page: Any) -> None:
    page = open_page("en-US", f"{base_url}/")
    expect(page.locator("h1")).to_have_text("studycast")
    page.get_by_role("button", name="中文").click()
    expect(page.locator("#organiser-login")).to_have_text("组织者登录")
    page.locator("#organiser-login").click()
    expect(page).to_have_url(f"{base_url}/login.html")
    expect(page.locator("#login-heading")).to_have_text("登录")


def test_sign_in_and_out(base_url: str, open_page: Any) -> None:
    page = open_page("en-US", f"{base_url}/login.html")
    error = page.locator("#login-error")
    expect(error).to_be_hidden()

    page.get_by_role("button", name="Sign in").click()
    expect(error).to_have_text("Enter your username and password.")

    page.get_by_label("Username").fill("olga")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(error).to_have_text("Wrong username or password.")
    expect(error).to_have_attribute("data-code", "bad_credentials")
    page.get_by_role("button", name="中文").click()
    expect(error).to_have_text("用户名或密码错误。")
    page.get_by_role("button", name="English").click()

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    status = page.locator("#logged-in-as")
    expect(status).to_have_text("Logged in as olga (organiser)")
    expect(page.locator("#login-card")).to_be_hidden()
    expect(page.locator("#continue")).to_have_text("Open the organiser console")
    expect(page.locator("#continue")).to_have_attribute("href", "console.html")
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    page.get_by_role("button", name="中文").click()
    expect(status).to_have_text("已登录：olga（组织者）")

    page.reload()  # the login is a cookie: it survives a reload
    expect(status).to_have_text("已登录：olga（组织者）")
    page.get_by_role("button", name="退出登录").click()
    expect(page.locator("#login-card")).to_be_visible()
    expect(page.locator("#notice")).to_have_text("您已退出登录。")
    assert page.evaluate("fetch('/api/me').then(r => r.status)") == 401


def test_fits_a_phone(base_url: str, open_page: Any) -> None:
    for path in ("/", "/login.html"):
        page = open_page("zh-CN", f"{base_url}{path}", viewport={"width": 360, "height": 740})
        expect(page.locator("h1").first).to_be_visible()
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} scrolls sideways on a phone by {overflow}px"


def test_next_page_after_sign_in(base_url: str, open_page: Any) -> None:
    """A page that needs a login sends people to login.html?next=PAGE and gets them back;
    a next that is not a page of this site is ignored."""
    page = open_page("en-US", f"{base_url}/login.html?next=index.html")
    page.get_by_label("Username").fill("olga")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base_url}/index.html")
    # Already logged in: straight on.
    page.goto(f"{base_url}/login.html?next=index.html")
    page.wait_for_url(f"{base_url}/index.html")
    # A page with a simple query comes back whole (the recording player's session).
    page.goto(f"{base_url}/login.html?next=index.html%3Fsession%3D3")
    page.wait_for_url(f"{base_url}/index.html?session=3")
    page.goto(f"{base_url}/login.html?next=https://example.com/x.html")
    expect(page.locator("#logged-in-as")).to_have_text("Logged in as olga (organiser)")
    assert page.url == f"{base_url}/login.html?next=https://example.com/x.html"
