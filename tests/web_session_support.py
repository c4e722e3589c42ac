"""Shared parts of the venue-screen and member-page browser tests.

``demo_server(data_dir)`` runs ``studycast serve --demo`` as a subprocess on a free port (the
server prints the port) and yields the base URL, the demo session id and the demo logins.
``Organiser`` drives the JSON API with the demo organiser's login (cookie + CSRF token), the way
the console does. ``Broadcast`` publishes an encoded clip over WHIP from a thread of its own, so
the synchronous Playwright tests can start and stop the broadcaster.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

from browser import CHROMIUM, REPO
from conftest import missing_service

from client.clip import EncodedClip, make_clip
from client.publisher import Publication, publish

STUDYCAST = REPO / ".venv" / "bin" / "studycast"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
WEBRTC_ARGS = [
    "--allow-loopback-in-peer-connection",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--no-sandbox",
    "--disable-background-networking",
    "--autoplay-policy=no-user-gesture-required",
]


@dataclass(frozen=True)
class DemoServer:
    base: str
    session_id: int
    logins: dict[str, str]  # username -> password
    data_dir: Path


@contextmanager
def demo_server(data_dir: Path) -> Iterator[DemoServer]:
    """``studycast serve --demo`` on 127.0.0.1 with fast ticks; stopped afterwards."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "STUDYCAST_TICK_INTERVAL_S": "0.2",
        "STUDYCAST_EVIDENCE_INTERVAL_S": "1",
    }
    command = [
        str(STUDYCAST),
        "serve",
        "--demo",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--ice-address",
        "127.0.0.1",
        "--data-dir",
        str(data_dir),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log, env=env)
        try:
            base, session_id = _wait_for_announcement(proc, log_path)
            logins = json.loads((data_dir / "demo-logins.json").read_text(encoding="utf-8"))
            yield DemoServer(
                base, session_id, {x["username"]: x["password"] for x in logins}, data_dir
            )
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
            assert proc.stdout is not None
            proc.stdout.close()


def _wait_for_announcement(proc: subprocess.Popen[bytes], log_path: Path) -> tuple[str, int]:
    """The base URL and demo session id from the banner ``serve`` prints (read raw: the banner
    arrives as one write, and a buffered readline would hide its later lines from select)."""
    assert proc.stdout is not None
    text = ""
    deadline = time.monotonic() + START_TIMEOUT_S
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(timeout=left):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            text += chunk.decode(errors="replace")
            base = re.search(r"studycast is running at (http://[^\s/]+)", text)
            session = re.search(r"demo session id:\s+(\d+)", text)
            if base and session:
                return base.group(1), int(session.group(1))
    raise AssertionError(
        f"studycast serve --demo did not start (exit code {proc.poll()}):\n{text}\n"
        + log_path.read_text(errors="replace")[-4000:]
    )


class Organiser:
    """The demo organiser over the JSON API (cookie login, CSRF header on writes)."""

    def __init__(self, base: str, username: str, password: str) -> None:
        self.base = base
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        self.csrf = ""
        me = self.request("POST", "/api/login", {"username": username, "password": password})
        self.csrf = me["csrf_token"]

    def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.csrf:
            headers["X-CSRF-Token"] = self.csrf
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers=headers
        )
        try:
            with self._opener.open(request, timeout=15) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from exc

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, {} if body is None else body)


class Broadcast:
    """A WHIP publication of a looping clip, run on an event loop in a thread of its own."""

    def __init__(self, whip_url: str, token: str, clip: EncodedClip) -> None:
        self.whip_url = whip_url
        self.token = token
        self.clip = clip
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._publication: Publication | None = None

    def _run(self, coro: Any, timeout: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        async def go() -> Publication:
            publication = await publish(self.whip_url, self.token, self.clip)
            await publication.wait_connected(10.0)
            return publication

        self._publication = self._run(go())

    def stop(self) -> None:
        if self._publication is not None:
            self._run(self._publication.close())
            self._publication = None

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()


def clip_for(codec: str) -> EncodedClip:
    return make_clip(codec, 4)  # type: ignore[arg-type]


def launch_chromium(playwright: Any) -> Any:
    """The system Chromium with loopback WebRTC and autoplay; skip (or fail in CI) if missing."""
    if not CHROMIUM.exists():
        missing_service(f"browser tests need Chromium at {CHROMIUM}")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=WEBRTC_ARGS)


def wait_until(check: Callable[[], Any], within: float, what: str, every: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``within``."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {within} s waiting for {what} (last: {last!r})")


PLAYBACK_JS = """() => {
  const v = document.querySelector('video');
  const s = v && v.srcObject;
  return {
    time: v ? v.currentTime : 0,
    width: v ? v.videoWidth : 0,
    audio: s ? s.getAudioTracks().length : 0,
    video: s ? s.getVideoTracks().length : 0,
    player: window.studycastPlayer ? window.studycastPlayer.state : null,
  };
}"""


def playing(page: Any, within: float = 20.0) -> dict[str, Any]:
    """Wait until the page's video advances with a picture; returns its figures."""
    first = wait_until(
        lambda: (info := page.evaluate(PLAYBACK_JS))["width"] > 0 and info, within, "a picture"
    )

    def advanced() -> Any:
        info = page.evaluate(PLAYBACK_JS)
        return info if info["time"] > first["time"] + 0.5 else None

    return dict(wait_until(advanced, within, "the video to advance"))
