"""The server under test in ``bench_scale.py``: a fresh PostgreSQL database per run,
``studycast serve`` (an origin with its workers, or an edge) as a child process, and the demo
organiser's login on it (session set-up, ``GET /api/nodes``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from children import CHILDREN, ICE_ADDRESS, STUDYCAST, BenchError, Children, child_env, tail
from scale_sample import process_tree

SECRET = "bench-scale-fixed-secret-key-0123456789abcdef"  # shared by origin, workers and edges
STARTUP_TIMEOUT_S = 60.0
MAX_VIEWERS_PER_WORKER = 2000  # above any capacity here: the relay's own cap must not decide


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- PostgreSQL ------------------------------------------------------------------------------


async def _pg_admin(base_url: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]
    from sqlalchemy.engine import make_url

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
        await conn.close()


@asynccontextmanager
async def fresh_database(pg_url: str) -> AsyncIterator[str]:
    """A new empty PostgreSQL database on ``pg_url``'s server, dropped afterwards."""
    from sqlalchemy.engine import make_url

    name = f"studycast_bench_{secrets.token_hex(6)}"
    await _pg_admin(pg_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with contextlib.suppress(Exception):
            await _pg_admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the server under test -------------------------------------------------------------------


class Server:
    """One ``studycast serve`` (origin, or edge with ``origin``) as a child process."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        db_url: str,
        workers: int,
        *,
        demo: bool = False,
        origin: str | None = None,
        node_token: str | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        """``settings``: more ``STUDYCAST_*`` variables for the server."""
        self.workdir = workdir
        self.name = name
        self.data_dir = workdir / f"{name}-data"
        self.log = workdir / f"{name}.log"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = child_env(
            STUDYCAST_DATABASE_URL=db_url,
            STUDYCAST_SECRET_KEY=SECRET,
            STUDYCAST_DATA_DIR=str(self.data_dir),
            STUDYCAST_MAX_VIEWERS=str(MAX_VIEWERS_PER_WORKER),
            **(settings or {}),
        )
        argv = [STUDYCAST, "serve", "--workers", str(workers), "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--ice-address", ICE_ADDRESS]
        if demo:
            argv.append("--demo")
        if origin is not None:
            argv += ["--origin", origin, "--node-token", node_token or "", "--node-name", name]
        self.proc = CHILDREN.start(argv, env=self.env, cwd=workdir, log=self.log)

    @property
    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    async def wait_healthy(self, http: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited:\n{tail(self.log)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(self.base_url + "/healthz", timeout=_timeout(2)) as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} did not answer /healthz:\n{tail(self.log)}")
            await asyncio.sleep(0.3)

    def stop(self) -> None:
        Children.stop(self.proc, grace=20.0)


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


class Organiser:
    """The demo organiser's login on a server: session set-up and ``/api/nodes``."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def login(self) -> None:
        logins = json.loads((self.server.data_dir / "demo-logins.json").read_text())
        organiser = next(x for x in logins if x["role"] == "organiser")
        body = {"username": organiser["username"], "password": organiser["password"]}
        async with self.http.post(
            self.server.base_url + "/api/login", json=body, timeout=_timeout(10)
        ) as r:
            if r.status != 200:
                raise BenchError(f"login failed: {r.status} {await r.text()}")
            self.csrf = (await r.json())["csrf_token"]

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"X-CSRF-Token": self.csrf}
        async with self.http.request(
            method, self.server.base_url + path, json=body, headers=headers, timeout=_timeout(10)
        ) as r:
            if r.status >= 400:
                raise BenchError(f"{method} {path}: {r.status} {await r.text()}")
            return await r.json()

    async def demo_session(self) -> dict[str, Any]:
        """The demo session, switched to VP8; its WHIP/WHEP links and tokens."""
        sessions = (await self.call("GET", "/api/sessions"))["sessions"]
        if not sessions:
            raise BenchError("the demo session is missing")
        sid = sessions[0]["id"]
        await self.call("PATCH", f"/api/sessions/{sid}", {"video_codec": "vp8"})
        return dict(await self.call("GET", f"/api/sessions/{sid}/links"))

    async def nodes(self) -> list[dict[str, Any]]:
        return list((await self.call("GET", "/api/nodes"))["nodes"])

    async def close(self) -> None:
        await self.http.close()


def spread(nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Online nodes → their viewers by kind (the edge feeds counted apart)."""
    out = {}
    for node in nodes:
        if node.get("online"):
            kinds: collections.Counter[str] = collections.Counter()
            for served in node.get("sessions", {}).values():
                kinds.update(served.get("by_kind", {}))
            out[node["name"]] = {"pid": node.get("pid"), "by_kind": dict(kinds)}
    return out
