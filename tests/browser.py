"""Shared parts of the browser tests: a real server in a subprocess, and the system Chromium.

``serve(data_dir, users)`` starts the app on a free port (the server picks it and prints it, so
there is no race for the port) over a fresh SQLite store with the given logins, and stops it
afterwards. ``chromium(playwright)`` launches /usr/bin/chromium headless, or skips (fails in CI)
when it is missing.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import missing_service

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("STUDYCAST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

# Run with sys.executable: Settings + Store + migrations + logins + create_app, on 127.0.0.1:0.
_SERVER = r"""
import asyncio, json, signal, sys
from pathlib import Path

from aiohttp import web

from attendance.clock import utcnow
from attendance.migrate import upgrade
from attendance.models import Role
from attendance.store import Store
from attendance.users import add_user
from server.app import create_app
from server.settings import Settings


async def main(data_dir: str, users: list[list[str]]) -> None:
    settings = Settings(_env_file=None, data_dir=Path(data_dir), host="127.0.0.1", port=0)
    settings.ensure_data_dir()
    store = Store(settings.resolved_database_url())
    await upgrade(store)
    async with store.write() as db:
        for username, role, password in users:
            await add_user(db, username=username, role=Role(role), password=password,
                           now=utcnow(), actor="test")
    runner = web.AppRunner(create_app(settings, store))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print("listening", runner.addresses[0][1], flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
"""


@contextmanager
def serve(data_dir: Path, users: list[tuple[str, str, str]]) -> Iterator[str]:
    """Run the app in a subprocess; yields its base URL (http://127.0.0.1:PORT)."""
    log_path = data_dir / "server.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(data_dir), json.dumps(users)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert proc.stdout is not None
            port = _wait_for_port(proc, log_path)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
            proc.stdout.close()  # type: ignore[union-attr]


def _wait_for_port(proc: subprocess.Popen[bytes], log_path: Path) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if sel.select(timeout=left):
                line = proc.stdout.readline().decode()
                if line.startswith("listening "):
                    return int(line.split()[1])
                if not line:  # the server exited
                    break
    raise AssertionError(
        f"the test server did not start (exit code {proc.poll()}):\n"
        + log_path.read_text(errors="replace")[-4000:]
    )


def chromium(playwright: Any) -> Any:
    """The system Chromium, headless; skip (or fail in CI) if it is not installed."""
    if not CHROMIUM.exists():
        missing_service(f"browser tests need Chromium at {CHROMIUM}")
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
