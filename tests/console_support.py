"""Parts of the organiser console browser tests: ``studycast serve --demo`` in a subprocess, a
Chromium with a fake camera, and the API calls a member or venue would make."""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from browser import CHROMIUM, REPO
from conftest import missing_service

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
STUDYCAST = REPO / ".venv" / "bin" / "studycast"
WEBRTC_ARGS = [
    "--allow-loopback-in-peer-connection",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--no-sandbox",
    "--disable-background-networking",
]
_URL = re.compile(r"http://127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class DemoServer:
    base: str
    data_dir: Path
    passwords: dict[str, str]  # username → password (demo-logins.json)

    def log(self) -> str:
        return (self.data_dir / "server.log").read_text(errors="replace")[-4000:]


@contextmanager
def demo_server(data_dir: Path) -> Iterator[DemoServer]:
    """``studycast serve --demo`` on a free port over a fresh SQLite store, stopped afterwards."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    env = {
        **os.environ,
        "STUDYCAST_TICK_INTERVAL_S": "0.2",
        "STUDYCAST_EVIDENCE_INTERVAL_S": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("STUDYCAST_DATABASE_URL", None)
    command = [str(STUDYCAST), "serve", "--demo", "--host", "127.0.0.1", "--port", "0"]
    command += ["--ice-address", "127.0.0.1", "--data-dir", str(data_dir)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=log, env=env, stdin=subprocess.DEVNULL
        )
        try:
            port = _wait_for_port(proc, log_path)
            logins = json.loads((data_dir / "demo-logins.json").read_text(encoding="utf-8"))
            yield DemoServer(
                f"http://127.0.0.1:{port}",
                data_dir,
                {x["username"]: x["password"] for x in logins},
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


def _wait_for_port(proc: subprocess.Popen[bytes], log_path: Path) -> int:
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + START_TIMEOUT_S
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if sel.select(timeout=left):
                line = proc.stdout.readline().decode()
                if not line:
                    break
                seen.append(line)
                if match := _URL.search(line):
                    return int(match.group(1))
    raise AssertionError(
        f"studycast serve --demo did not start (exit code {proc.poll()}):\n"
        + "".join(seen)
        + log_path.read_text(errors="replace")[-4000:]
    )


async def launch_chromium(playwright: Any, *, fake_ui: bool = True) -> Any:
    """The system Chromium, headless, with a fake camera; without ``fake_ui`` permission
    prompts are left unanswered (denied)."""
    if not CHROMIUM.exists():
        missing_service(f"browser tests need Chromium at {CHROMIUM}")
    args = [a for a in WEBRTC_ARGS if fake_ui or a != "--use-fake-ui-for-media-stream"]
    return await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)


async def api_login(http: aiohttp.ClientSession, base: str, username: str, password: str) -> str:
    """Log the aiohttp session in (cookie); returns the CSRF token."""
    async with http.post(
        f"{base}/api/login", json={"username": username, "password": password}
    ) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["csrf_token"])


def token_of(url: str) -> str:
    """The token of a personal or venue link (``...#s=ID&t=TOKEN``)."""
    match = re.search(r"[#&]t=([^&]+)", url)
    assert match, url
    return match.group(1)


async def send_event(
    http: aiohttp.ClientSession, base: str, session_id: int, token: str, kind: str, **fields: Any
) -> dict[str, Any]:
    """POST one attendance event with a member token; returns its result."""
    event = {"id": str(uuid.uuid4()), "type": kind, "at": datetime.now(UTC).isoformat(), **fields}
    async with http.post(
        f"{base}/api/sessions/{session_id}/events",
        json={"events": [event]},
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
    result: dict[str, Any] = body["results"][0]
    return result
