"""Every core of a machine: ``studycast serve --workers N`` runs N server processes.

One Python process relays on one core. The supervisor (the ``serve`` process) starts N workers
that all listen on the public port (``SO_REUSEPORT``: the kernel spreads connections over them),
each also on a private port of its own on 127.0.0.1:

- worker 0 is the node itself (the origin, or an edge): it migrates the store, holds the
  broadcasters, runs the timers and records;
- every other worker is an edge of worker 0 on the same machine: a viewer's WHEP POST is served
  by whichever worker receives it, which pulls the session from worker 0's private port once
  (``server.relay.upstream``); a broadcaster's WHIP request that lands on it is passed on to
  worker 0. (Workers of an edge pull from the origin themselves.) A WHEP resource's id names its
  worker (``w2-...``), so a DELETE that lands on another worker is passed on to it.

Live events reach every worker's streams through the PostgreSQL bus (``server.live_bus``), so
more than one worker needs PostgreSQL. A worker that dies is started again; its viewers'
players reconnect by themselves (WHEP pages and ``studycast watch`` do), landing on any worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from server.settings import Settings

log = logging.getLogger(__name__)

PLAN_ENV = "STUDYCAST_WORKER_PLAN"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
# A worker dying more often than this is not restarted again: something is wrong for good.
MAX_RESTARTS = 10
RESTART_WINDOW_S = 60.0
POLL_S = 0.2


@dataclass(frozen=True)
class WorkerPlan:
    """Where every worker of one ``serve --workers N`` listens, and which one this is."""

    index: int
    public_port: int
    private_ports: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.private_ports)

    @property
    def prefix(self) -> str:
        """What this worker's WHEP resource ids start with."""
        return f"w{self.index}-"

    def private_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.private_ports[index]}"

    def owner_of(self, resource: str) -> int | None:
        """The worker whose WHEP resource this is (None: not a worker's id)."""
        head, sep, _ = resource.partition("-")
        if not sep or not head.startswith("w") or not head[1:].isdigit():
            return None
        index = int(head[1:])
        return index if index < self.count else None

    def to_env(self) -> str:
        return json.dumps(
            {"index": self.index, "public": self.public_port, "private": self.private_ports}
        )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> WorkerPlan | None:
        raw = (environ if environ is not None else os.environ).get(PLAN_ENV)
        if not raw:
            return None
        data = json.loads(raw)
        return cls(int(data["index"]), int(data["public"]), tuple(int(p) for p in data["private"]))


# The plan of the worker an app runs in (absent: a server without workers).
WORKER = web.AppKey("studycast.worker", WorkerPlan)
# One HTTP client per app for what it passes on to other workers or to the origin (a request
# that reached the wrong worker, a scrape of the siblings' metrics): connections are reused.
PEER_HTTP = web.AppKey("studycast.peer_http", aiohttp.ClientSession)


async def peer_http_lifetime(app: web.Application) -> AsyncIterator[None]:
    """``app[PEER_HTTP]`` from start-up to clean-up."""
    app[PEER_HTTP] = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    yield
    await app[PEER_HTTP].close()


def default_workers(settings: Settings) -> int:
    """Every core with PostgreSQL; one process on the embedded SQLite store."""
    from attendance.store import is_sqlite, normalise_url

    if is_sqlite(normalise_url(settings.resolved_database_url())):
        return 1
    return os.cpu_count() or 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ``STUDYCAST_*`` variables, for a worker to read back as they are."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        env[f"STUDYCAST_{name.upper()}"] = str(value)
    return env


def _stop_with_parent() -> None:
    """In a new worker, before it runs: SIGTERM it when the supervisor dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class Supervisor:
    """Starts the workers, restarts one that dies, stops them all on SIGINT/SIGTERM."""

    def __init__(self, settings: Settings, count: int, *, demo: bool) -> None:
        self.settings = settings
        self.demo = demo
        # Port 0 asks for a free port: one is chosen here, so that every worker shares it.
        public = settings.port or free_port(settings.host)
        ports = tuple(free_port() for _ in range(count))
        self.plans = [WorkerPlan(i, public, ports) for i in range(count)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.restarts: list[float] = []
        self.stopping = False

    def _spawn(self, index: int, *, first: bool) -> subprocess.Popen[bytes]:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("STUDYCAST_")},
            **settings_env(self.settings),
            PLAN_ENV: self.plans[index].to_env(),
            "PYTHONUNBUFFERED": "1",
        }
        argv = [sys.executable, "-c", "from server.cli import main; main()", "serve"]
        if self.demo and index == 0 and first:
            argv.append("--demo")
        # Its own process group: a Ctrl-C in the terminal reaches the supervisor only, which
        # then stops the workers in order (and does not mistake them for crashed ones). A
        # supervisor killed outright takes its workers with it (Linux: parent-death signal).
        return subprocess.Popen(  # noqa: S603 (our own interpreter and command)
            argv,
            env=env,
            start_new_session=True,
            preexec_fn=_stop_with_parent if sys.platform == "linux" else None,
        )

    def _wait_listening(self, index: int, proc: subprocess.Popen[bytes]) -> bool:
        """Until worker ``index`` accepts connections on its private port (False: it died, the
        supervisor is stopping, or it took too long)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        port = self.plans[index].private_ports[index]
        while time.monotonic() < deadline and not self.stopping:
            if proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return True
            time.sleep(POLL_S)
        return False

    def run(self) -> int:
        """Until stopped; the exit status for the ``serve`` command."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._stop)
        try:
            # Worker 0 first: it migrates the store (and seeds the demo) before the others start.
            first = self.procs[0] = self._spawn(0, first=True)
            if not self._wait_listening(0, first):
                if self.stopping:
                    return 0
                log.error("worker 0 did not start")
                return 1
            for index in range(1, len(self.plans)):
                self.procs[index] = self._spawn(index, first=True)
            for index in range(1, len(self.plans)):
                proc = self.procs[index]
                if proc is not None and not self._wait_listening(index, proc):
                    log.warning("worker %d is not listening yet", index)
            log.info("%d workers serving on port %d", len(self.plans), self.plans[0].public_port)
            while not self.stopping:
                time.sleep(POLL_S)
                for index, proc in enumerate(self.procs):
                    if proc is None or proc.poll() is None or self.stopping:
                        continue
                    if not self._may_restart():
                        log.error("workers keep dying; stopping")
                        return 1
                    log.warning(
                        "worker %d (pid %d) exited with %s; starting it again",
                        index,
                        proc.pid,
                        proc.returncode,
                    )
                    self.procs[index] = self._spawn(index, first=False)
            return 0
        finally:
            self._stop_all()

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S] + [now]
        return len(self.restarts) <= MAX_RESTARTS

    def _stop(self, _signum: int, _frame: Any) -> None:
        self.stopping = True

    def _stop_all(self) -> None:
        running = [p for p in self.procs if p is not None and p.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
