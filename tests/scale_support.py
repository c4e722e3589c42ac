"""Support for the scale tests: real ``studycast serve`` processes on loopback (an origin, its
edges, a node of several workers), each deployment on a fresh PostgreSQL database; the
organiser's JSON API over aiohttp; and ``ReconnectingViewer``, a WHEP viewer that notices a dead
node and moves on by itself, as players do.

Every process is started with the same secret key and database, so tokens signed by one node are
accepted by every other, and is stopped (or killed) when its context ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg  # type: ignore[import-untyped]
from relay_support import Watcher
from sqlalchemy.engine import make_url

from client.publisher import SignallingError, delete_resource
from server.auth import COOKIE, CSRF_HEADER

REPO = Path(__file__).resolve().parents[1]
STUDYCAST = REPO / ".venv" / "bin" / "studycast"
SECRET_KEY = "scale-tests-secret-key-0123456789abcdefghijkl"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
CLI_TIMEOUT_S = 30.0
RUNNING = re.compile(r"studycast is running at (http://[^\s/]+)")
DEMO_SESSION = re.compile(r"demo session id:\s+(\d+)")


# --- PostgreSQL ---------------------------------------------------------------------------------


async def _pg_admin(base_url: str, sql: str) -> None:
    url = make_url(base_url)
    conn = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database or "postgres",
        timeout=10,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close(timeout=5)


@contextlib.asynccontextmanager
async def fresh_database(base_url: str) -> AsyncIterator[str]:
    """A new, empty database on the server of ``base_url`` (its URL), dropped afterwards."""
    name = f"studycast_scale_{secrets.token_hex(6)}"
    await _pg_admin(base_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await _pg_admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- server processes ---------------------------------------------------------------------------


def node_env(database_url: str, data_dir: Path) -> dict[str, str]:
    """What every node of a test deployment runs with: one database, one secret, fast timers."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("STUDYCAST_")},
        "PYTHONUNBUFFERED": "1",
        "STUDYCAST_DATABASE_URL": database_url,
        "STUDYCAST_SECRET_KEY": SECRET_KEY,
        "STUDYCAST_DATA_DIR": str(data_dir),
        "STUDYCAST_TICK_INTERVAL_S": "0.2",
        "STUDYCAST_EVIDENCE_INTERVAL_S": "1",
    }


@dataclass
class ServeProcess:
    """One ``studycast serve`` (a node, or the supervisor of its workers)."""

    name: str
    proc: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    base: str = ""
    session_id: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    async def wait_announced(self, *, demo: bool) -> None:
        """Until the banner names the URL (and, with ``demo``, the demo session)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.out_path.read_text(errors="replace")
            base, session = RUNNING.search(text), DEMO_SESSION.search(text)
            if base and (session or not demo):
                self.base = base.group(1)
                self.session_id = int(session.group(1)) if session else None
                return
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"{self.name} did not start (exit code {self.proc.poll()}):\n" + self.output()[-4000:]
        )

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self, within: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait; SIGKILL after ``within`` seconds. The exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            if not await wait_exit(self.proc, within):
                self.kill()
                await wait_exit(self.proc, within)
        return int(self.proc.returncode if self.proc.returncode is not None else -1)


async def wait_exit(proc: subprocess.Popen[bytes], within: float) -> bool:
    """Whether ``proc`` exited (and was reaped) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while proc.poll() is None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def start_serve(name: str, args: Sequence[str], env: dict[str, str], logs: Path) -> ServeProcess:
    """``studycast serve ARGS`` on 127.0.0.1 (free port, loopback ICE); output to ``logs``."""
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    command = [
        str(STUDYCAST),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--ice-address",
        "127.0.0.1",
        *args,
    ]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err)
    return ServeProcess(name, proc, out_path, err_path)


async def studycast_cli(args: Sequence[str], env: dict[str, str]) -> str:
    """Run ``studycast ARGS`` to its end; its standard output (fails on a non-zero exit)."""
    proc = await asyncio.create_subprocess_exec(
        str(STUDYCAST),
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(CLI_TIMEOUT_S):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"studycast {' '.join(args)}: {err.decode(errors='replace')}"
    return out.decode()


def process_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs (a zombie counts as gone: it runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def kill_pids(pids: Sequence[int]) -> None:
    """SIGKILL each of these processes (ours, started by a test) that still runs."""
    for pid in pids:
        if not process_gone(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- the organiser's API --------------------------------------------------------------------------


class Api:
    """A login over the JSON API (cookie and CSRF header on every request), on one node."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.headers: dict[str, str] = {}

    async def log_in(self, username: str, password: str) -> None:
        async with self.http.post(
            self.base + "/api/login", json={"username": username, "password": password}
        ) as r:
            assert r.status == 200, await r.text()
            csrf = (await r.json())["csrf_token"]
            self.headers = {"Cookie": f"{COOKIE}={r.cookies[COOKIE].value}", CSRF_HEADER: csrf}

    def on(self, base: str) -> Api:
        """The same login, on another node (logins live in the shared store)."""
        api = Api(self.http, base)
        api.headers = self.headers
        return api

    async def call(self, method: str, path: str, body: Any = None, *, status: int = 200) -> Any:
        async with self.http.request(
            method,
            self.base + path,
            json=body,
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=15),
        ) as r:
            assert r.status == status, f"{method} {path}: {r.status} {await r.text()}"
            return await r.json()

    async def get(self, path: str) -> Any:
        return await self.call("GET", path)

    async def post(self, path: str, body: Any = None, *, status: int = 200) -> Any:
        return await self.call("POST", path, {} if body is None else body, status=status)

    async def patch(self, path: str, body: Any) -> Any:
        return await self.call("PATCH", path, body)

    async def member_tokens(self, session_id: int) -> dict[str, str]:
        """Member number -> the token of their personal link, for the session's members."""
        links = await self.get(f"/api/sessions/{session_id}/member-links")
        tokens = {}
        for member in links["members"]:
            fragment = parse_qs(urlsplit(member["url"]).fragment)
            tokens[member["member_no"]] = fragment["t"][0]
        return tokens

    async def nodes(self) -> dict[str, dict[str, Any]]:
        """``GET /api/nodes`` by node name."""
        return {n["name"]: n for n in (await self.get("/api/nodes"))["nodes"]}


async def heartbeat(
    http: aiohttp.ClientSession, base: str, session_id: int, token: str, *, visible: bool = True
) -> None:
    """A member page's heartbeat, sent to the node the member watches on."""
    beat = {
        "id": str(uuid.uuid4()),
        "type": "heartbeat",
        "at": datetime.now(UTC).isoformat(),
        "visible": visible,
    }
    async with http.post(
        f"{base}/api/sessions/{session_id}/events",
        json={"events": [beat]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=aiohttp.ClientTimeout(total=10),
    ) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["results"][0]["status"] == "accepted"


# --- a viewer that fails over ---------------------------------------------------------------------


@dataclass
class Attempt:
    """One WHEP connection of a ``ReconnectingViewer``."""

    url: str
    started_at: float
    watcher: Watcher | None = None
    error: str | None = None

    @property
    def resource(self) -> str:
        """The WHEP resource id the node answered with ('' before an answer)."""
        if self.watcher is None or self.watcher.resource_url is None:
            return ""
        return self.watcher.resource_url.rstrip("/").rpartition("/")[2]

    def frame_times(self) -> list[float]:
        """When each video frame arrived: decoded frames, or (not decoding) the RTP packets
        that end a frame."""
        if self.watcher is None:
            return []
        if self.watcher.decode:
            return [f.at for f in self.watcher.frames]
        return [p.at for p in self.watcher.of("video") if p.marker]


@dataclass
class ReconnectingViewer:
    """A WHEP viewer over a list of nodes (first choice first), reconnecting by itself.

    When its peer connection fails or no RTP has arrived for ``STALL_S``, it asks the current
    node's ``/healthz`` (``PROBE_TIMEOUT_S``): a node that answers is connected to again, one that
    does not is left for the next URL of the list. ``history`` is what it went through:
    ``(monotonic time, what, url)`` with ``what`` one of connected/stalled/unhealthy/refused.
    """

    urls: Sequence[str]
    token: str
    http: aiohttp.ClientSession
    decode: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    history: list[tuple[float, str, str]] = field(default_factory=list)
    index: int = 0
    _task: asyncio.Task[None] | None = None

    STALL_S = 1.5
    PROBE_TIMEOUT_S = 1.0
    RETRY_S = 0.5
    CHECK_S = 0.05

    @property
    def current(self) -> Attempt:
        return self.attempts[-1]

    @property
    def reconnects(self) -> int:
        return len(self.attempts) - 1

    async def start(self) -> None:
        """Connect to the first URL (it must answer) and keep watching in the background."""
        await self._connect()
        if self.current.watcher is None:
            raise AssertionError(f"{self.urls[self.index]} refused: {self.current.error}")
        self._task = asyncio.create_task(self._watch())

    async def _connect(self) -> None:
        url = self.urls[self.index]
        attempt = Attempt(url, time.monotonic())
        self.attempts.append(attempt)
        watcher = Watcher(decode=self.decode)
        try:
            async with asyncio.timeout(10):
                await watcher.start(self.http, url, self.token)
        except (SignallingError, TimeoutError, OSError, aiohttp.ClientError) as exc:
            attempt.error = str(exc) or type(exc).__name__
            self.history.append((time.monotonic(), "refused", url))
            await watcher.close()
            return
        attempt.watcher = watcher
        self.history.append((time.monotonic(), "connected", url))

    def _stalled(self, now: float) -> bool:
        attempt = self.current
        if attempt.watcher is None:
            return now - attempt.started_at > self.RETRY_S
        if attempt.watcher.pc.connectionState in ("failed", "closed"):
            return True
        packets = attempt.watcher.packets
        last = packets[-1].at if packets else attempt.started_at
        return now - last > self.STALL_S

    async def _healthy(self, url: str) -> bool:
        parts = urlsplit(url)
        try:
            async with self.http.get(
                f"{parts.scheme}://{parts.netloc}/healthz",
                timeout=aiohttp.ClientTimeout(total=self.PROBE_TIMEOUT_S),
            ) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.CHECK_S)
            if not self._stalled(time.monotonic()):
                continue
            old = self.current
            if old.watcher is not None:
                self.history.append((time.monotonic(), "stalled", old.url))
            healthy = await self._healthy(old.url)
            if not healthy:
                self.history.append((time.monotonic(), "unhealthy", old.url))
                self.index = (self.index + 1) % len(self.urls)
            if old.watcher is not None:
                await self._hang_up(old.watcher, tell_node=healthy)
            await self._connect()

    async def _hang_up(self, watcher: Watcher, *, tell_node: bool) -> None:
        if tell_node and watcher.resource_url is not None:
            with contextlib.suppress(SignallingError):
                await delete_resource(
                    self.http, watcher.resource_url, self.token, request_timeout=2.0
                )
        await watcher.close()

    def frame_times(self) -> list[float]:
        return [t for a in self.attempts for t in a.frame_times()]

    def frames_after(self, at: float) -> list[float]:
        return [t for t in self.frame_times() if t > at]

    async def close(self) -> None:
        """Stop reconnecting and hang up (best effort DELETE); idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for attempt in self.attempts:
            if attempt.watcher is not None and attempt.watcher.pc.connectionState != "closed":
                await self._hang_up(attempt.watcher, tell_node=attempt is self.current)
