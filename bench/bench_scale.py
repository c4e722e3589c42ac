"""Scale benchmark (issue 9): viewers served by ``serve --workers 2`` against ``--workers 1``, and
what an edge costs its origin against what a viewer costs it.

1. **Capacity.** For W in (1, 2), in the same run: a fresh PostgreSQL database, ``studycast
   serve --workers W --demo`` on a free 127.0.0.1 port, the demo session switched to VP8, a paced
   pre-encoded 640x480 30 fps VP8 + Opus clip published over WHIP (``bench_relay``'s publisher
   process), then load viewers added in steps (``--start``, then ``--step`` more every
   ``--interval`` seconds). In each step the new viewers join over the first seconds, and every
   viewer's video frames are counted over a window at the end of the step. A step is served when
   at least ``--served-share`` of its viewers got >= 95 % of the 30 fps; capacity(W) is the
   largest served step before the first one that is not. Every load viewer POSTs over its own
   TCP connection, so ``SO_REUSEPORT`` spreads them over the workers; the spread is read from
   ``GET /api/nodes`` (the demo organiser's login) and printed.
2. **Origin CPU per edge against per viewer.** An origin (``--workers 1``) with the broadcaster
   only (a), with K ``CountingViewer``s (b: aiortc's receiver reports, like a browser), and with
   K edges (``serve --origin URL --node-token T --workers 1``, one ``CountingViewer`` each, so
   each edge pulls the session) instead of the viewers (c); the origin's CPU is read over two
   windows of each. Per viewer = (b - a) / K, per edge = (c - a) / K.

The capacity steps' viewers are ``client.header_viewer.HeaderCountingViewer``s, because the
load generator shares the two cores with the relay and every core-second it takes is one the
relay under test cannot have. After the DTLS handshake a sweep visits them every 100 ms and
sends each one's receiver report (about one per second). Their video frames are counted, by
``--count``: ``kernel`` (the default where it can: root and Debian's nftables) has a
``client.netfilter_tally.NetfilterTally`` count per viewer port the RTP packets that end a video
frame and drop all RTP at the input hook, before the sockets (STUN, DTLS and RTCP still reach
them), so the load costs ~0.1 ms per viewer-second; ``sweep`` reads the sockets with one
``recvmmsg`` each and counts the clear RTP headers (~0.25 ms). In ``kernel`` mode the packet
loss columns only cover the packets before each viewer's take-over. They run in ``--procs``
processes at ``--load-nice`` (also their scheduler autogroup). Their CPU per viewer is printed
beside the relay's, with the capacity per relay core (viewers per core the relay processes
actually used), which is what the machine allows once the load tool is elsewhere.

Before each measurement the script waits (at most ``--quiet-wait`` seconds) for the 1-minute
load average to fall below ``--quiet-load`` and prints it. Every child process is stopped at the
end (Ctrl-C and SIGTERM too, and by the kernel if the script dies); every wait has a limit.

    .venv/bin/python bench/bench_scale.py --postgres postgresql://127.0.0.1:5432/test
        [--start 150] [--step 30] [--interval 8] [--max-viewers 1500] [--edges 3] [--window 20]
        [--procs 1] [--load-nice 10] [--count auto|kernel|sweep] [--quiet-load 0.7]
        [--quiet-wait 600] [--json FILE]
        [--keep-logs DIR] [--workers 1,2] [--skip-capacity] [--skip-edges]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import secrets
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _path in (str(REPO), str(BENCH)):  # run as a script from anywhere
    if _path not in sys.path:
        sys.path.insert(0, _path)

from bench_relay import (  # noqa: E402 (after the path set-up)
    CHILDREN,
    FPS,
    ICE_ADDRESS,
    STUDYCAST,
    TOKEN_ENV,
    BenchError,
    Children,
    Publisher,
    child_env,
    cpu_seconds,
    loadavg,
    machine_ticks,
    tail,
    udp_drops,
    wait_until,
)
from core_scaling import core_scaling, describe  # noqa: E402 (after the path set-up)

from client import netfilter_tally  # noqa: E402 (after the path set-up)

SECRET = "bench-scale-fixed-secret-key-0123456789abcdef"  # shared by origin, workers and edges
GOOD_FPS_SHARE = 0.95  # a viewer is served at >= 95 % of the published frame rate
REQUEST_TIMEOUT = 10.0
STARTUP_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 20.0
SETTLE_S = 1.5  # after a step's joins, before its window opens
EDGE_SETTLE_S = 6.0  # an edge connects upstream on its first viewer
MAX_JOIN_RATE = 15.0  # viewers per second per step, over all load processes
MIN_WINDOW_S = 4.0  # the shortest counting window of a step
LOAD_START_S = 12.0  # a load process imports aiortc and av before its first viewer
MAX_VIEWERS_PER_WORKER = 2000  # above any capacity here: the relay's own cap must not decide
CLIP_SIZE = (640, 480)
GOP_S = 2.0
TARGET_RATIO = 1.7
TICK = os.sysconf("SC_CLK_TCK")


# --- processes and /proc ----------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (``/proc/PID/task/TID/children``)."""
    found, i = [pid], 0
    while i < len(found):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for task in os.listdir(f"/proc/{found[i]}/task"):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    text = Path(f"/proc/{found[i]}/task/{task}/children").read_text()
                    found.extend(int(x) for x in text.split())
        i += 1
    return found


def tree_cpu(pids: list[int]) -> dict[int, float]:
    """utime + stime in seconds of each pid still running."""
    out = {}
    for pid in pids:
        value = cpu_seconds(pid)
        if value is not None:
            out[pid] = value
    return out


def all_cpu() -> dict[int, tuple[str, float]]:
    """Every process on the machine: pid → (name, utime + stime in seconds)."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                raw = Path(f"/proc/{name}/stat").read_text()
                head, _, rest = raw.rpartition(")")
                fields = rest.split()
                out[int(name)] = (
                    head.partition("(")[2],
                    (int(fields[11]) + int(fields[12])) / TICK,
                )
    return out


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


async def wait_quiet(threshold: float, limit: float, log: Callable[[str], None]) -> dict[str, Any]:
    """Wait (at most ``limit`` s) for the 1-minute load average to fall below ``threshold``."""
    started = time.monotonic()
    first = loadavg()
    while load1() >= threshold and time.monotonic() - started < limit:  # noqa: ASYNC110
        await asyncio.sleep(5)
    waited = round(time.monotonic() - started, 1)
    quiet = load1() < threshold
    log(
        f"load average {loadavg()} at the start (was {first}, waited {waited:g} s"
        + ("" if quiet else f"; still >= {threshold:g}, measuring anyway")
        + ")"
    )
    return {"loadavg": loadavg(), "waited_s": waited, "quiet": quiet}


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
    ) -> None:
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


# --- load processes (this script with --role load) -------------------------------------------


@dataclass
class LoadPlan:
    """When viewers join and when they are counted, on the machine-wide monotonic clock (every
    load process and the benchmark read the same ``CLOCK_MONOTONIC``)."""

    t0: float
    counts: list[int]  # viewers joining at the start of each step, over all load processes
    interval: float  # a step's length, at least
    rate: float  # joins per second, over all load processes
    settle: float  # after a step's joins, before its counting window opens
    hold: float  # after the last step, keep watching this long (or until SIGTERM)
    share: list[int] | None = None  # this process's part of ``counts`` (None: all of it)
    viewer: str = "header"  # HeaderCountingViewer; "counting": CountingViewer (aiortc's RTCP)
    count: str = "sweep"  # header viewers' frames: "sweep" (recvmmsg) or "kernel" (nftables)

    def join_s(self, step: int) -> float:
        return self.counts[step] / self.rate

    def length(self, step: int) -> float:
        return max(self.interval, self.join_s(step) + self.settle + MIN_WINDOW_S + 0.25)

    def begin(self, step: int) -> float:
        return self.t0 + sum(self.length(j) for j in range(step))

    def window(self, step: int) -> tuple[float, float]:
        begin = self.begin(step)
        return begin + self.join_s(step) + self.settle, begin + self.length(step) - 0.25

    def end(self) -> float:
        return self.begin(len(self.counts))

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


async def _sleep_until(when: float, stop: asyncio.Event) -> bool:
    """Sleep until the monotonic time ``when``; True if told to stop first."""
    delay = when - time.monotonic()
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    return stop.is_set()


async def load_role(urls: list[str], plan: LoadPlan) -> None:
    """Add header-counting viewers step by step; print one ``STEP`` line per counting window."""
    from client.header_viewer import HeaderCountingViewer, Sweep
    from client.loadtest import CountingViewer
    from client.netfilter_tally import NetfilterTally
    from server.relay.ice import advertise_addresses

    advertise_addresses([ICE_ADDRESS])
    token = os.environ.get(TOKEN_ENV, "none")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    crowd: list[HeaderCountingViewer | CountingViewer] = []
    joins: list[asyncio.Task[None]] = []
    share = plan.share if plan.share is not None else plan.counts
    kind = HeaderCountingViewer if plan.viewer == "header" else CountingViewer

    async def join(viewer: HeaderCountingViewer | CountingViewer) -> None:
        try:
            await viewer.start()
        except Exception as exc:  # one broken viewer must not end the run
            viewer.error = f"{type(exc).__name__}: {exc}"[:200]

    def video(viewer: HeaderCountingViewer | CountingViewer) -> tuple[int, int, int]:
        """Frames, lost and expected packets of the viewer's video so far."""
        if isinstance(viewer, HeaderCountingViewer):
            c = viewer.counter  # (in the kernel's count, lost and expected stop at take-over)
            return (
                viewer.frames("video"),
                c.total("video", "lost"),
                c.total("video", "expected"),
            )
        return viewer.video.frames, viewer.video.lost, viewer.video.expected

    tally = NetfilterTally() if plan.count == "kernel" and plan.viewer == "header" else None
    if tally is not None:
        tally.open()
        Sweep.shared().count_in_kernel(tally)

    def snapshot() -> tuple[float, list[int], int, int]:
        Sweep.shared().sweep(limit=None)  # header viewers: counts up to now, not the last sweep
        if tally is not None:
            tally.refresh()
        counts = [video(v) for v in crowd]
        lost = sum(c[1] for c in counts)
        expected = sum(c[2] for c in counts)
        return time.monotonic(), [c[0] for c in counts], lost, expected

    # A connection per request: SO_REUSEPORT hands each new connection to one of the workers.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            for step, count in enumerate(share):
                begin, (opens, closes) = plan.begin(step), plan.window(step)
                for i in range(count):
                    if await _sleep_until(begin + i * plan.join_s(step) / count, stop):
                        break
                    url = urls[len(crowd) % len(urls)]
                    viewer = kind(url, token, http=http, request_timeout=REQUEST_TIMEOUT)
                    crowd.append(viewer)
                    joins.append(asyncio.create_task(join(viewer)))
                if await _sleep_until(opens, stop):
                    break
                t_a, frames_a, lost_a, expected_a = snapshot()
                if await _sleep_until(closes, stop):
                    break
                t_b, frames_b, lost_b, expected_b = snapshot()
                seconds = t_b - t_a
                fps = [
                    round((b - a) / seconds, 2) if crowd[i].answered_at is not None else 0.0
                    for i, (a, b) in enumerate(zip(frames_a, frames_b, strict=False))
                ]
                errors = collections.Counter(v.error for v in crowd if v.error)
                record = {
                    "step": step,
                    "window": [round(t_a, 3), round(t_b, 3)],
                    "viewers": len(crowd),
                    "joined": sum(1 for v in crowd if v.answered_at is not None),
                    "errors": dict(errors.most_common(5)),
                    "fps": fps,
                    "video_lost": lost_b - lost_a,
                    "video_expected": expected_b - expected_a,
                }
                print("STEP " + json.dumps(record), flush=True)
            await _sleep_until(plan.end() + plan.hold, stop)
        finally:
            for task in joins:
                task.cancel()
            await asyncio.gather(*joins, return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await asyncio.gather(*(v.close() for v in crowd), return_exceptions=True)
            if tally is not None:
                tally.close()
            print("CLOSED " + json.dumps({"viewers": len(crowd)}), flush=True)


@dataclass
class LoadProcesses:
    """``procs`` load processes, each step's viewers spread evenly over them."""

    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

    @classmethod
    def start(
        cls,
        workdir: Path,
        tag: str,
        urls: list[str],
        token: str,
        plan: LoadPlan,
        *,
        procs: int,
        nice: int,
    ) -> LoadProcesses:
        procs = max(1, procs)
        popens, logs = [], []
        for i in range(procs):
            share = [n // procs + (1 if i < n % procs else 0) for n in plan.counts]
            mine = LoadPlan(**{**plan.__dict__, "share": share})
            log = workdir / f"{tag}-load-{i}.log"
            argv = [sys.executable, str(Path(__file__).resolve()), "--role", "load"]
            argv += ["--urls", ",".join(urls), "--plan", mine.to_json()]
            env = child_env(**{TOKEN_ENV: token})
            popens.append(CHILDREN.start(argv, env=env, cwd=workdir, log=log, nice=nice))
            logs.append(log)
        return cls(popens, logs)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def steps(self, step: int) -> list[dict[str, Any]] | None:
        """Every process's record of ``step``, once all have printed it."""
        found = []
        for proc, log in zip(self.procs, self.logs, strict=True):
            record = None
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("STEP "):
                    data = json.loads(line[5:])
                    if data["step"] == step:
                        record = data
            if record is None:
                if proc.poll() is not None:
                    raise BenchError(f"a load process exited:\n{tail(log)}")
                return None
            found.append(record)
        return found

    async def wait_step(self, step: int, within: float) -> dict[str, Any]:
        """The merged record of ``step`` from every process."""
        records = await wait_until(lambda: self.steps(step), within, f"step {step}", 0.2)
        fps = [f for r in records for f in r["fps"]]
        errors: collections.Counter[str] = collections.Counter()
        for r in records:
            errors.update(r["errors"])
        return {
            "viewers": sum(r["viewers"] for r in records),
            "joined": sum(r["joined"] for r in records),
            "fps": fps,
            "errors": dict(errors),
            "video_lost": sum(r["video_lost"] for r in records),
            "video_expected": sum(r["video_expected"] for r in records),
        }

    async def stop(self) -> None:
        """SIGTERM: the viewers hang up (WHEP DELETE) before the processes exit."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + CLOSE_TIMEOUT_S + 5
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        for proc in self.procs:
            Children.stop(proc, grace=2.0)


# --- sampling --------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    relay: dict[int, float]
    load: float
    publisher: float
    machine: tuple[int, int]
    relay_drops: int = 0
    load_drops: int = 0
    extra: dict[int, float] = field(default_factory=dict)
    everyone: dict[int, tuple[str, float]] = field(default_factory=dict)
    known: set[int] = field(default_factory=set)


def take_sample(
    relay_pids: list[int],
    load_pids: list[int],
    publisher_pid: int | None,
    extra_pids: Sequence[int] = (),
    *,
    drops: bool = True,
) -> Sample:
    t = time.monotonic()
    return Sample(
        t=t,
        relay=tree_cpu(relay_pids),
        load=sum(tree_cpu(load_pids).values()),
        publisher=(cpu_seconds(publisher_pid) or 0.0) if publisher_pid else 0.0,
        machine=machine_ticks(),
        relay_drops=udp_drops(relay_pids) if drops else 0,
        load_drops=udp_drops(load_pids) if drops else 0,
        extra=tree_cpu(list(extra_pids)),
        everyone=all_cpu(),
        known={*relay_pids, *load_pids, *extra_pids, os.getpid()}
        | ({publisher_pid} if publisher_pid else set()),
    )


def window(s0: Sample, s1: Sample) -> dict[str, Any]:
    """CPU shares (% of one core) between two samples."""
    seconds = s1.t - s0.t
    busy = s1.machine[0] - s0.machine[0]
    total = s1.machine[1] - s0.machine[1]
    per_pid = {
        pid: 100 * (s1.relay[pid] - s0.relay[pid]) / seconds for pid in s1.relay if pid in s0.relay
    }
    extra = sum(s1.extra[p] - s0.extra[p] for p in s1.extra if p in s0.extra)
    return {
        "seconds": round(seconds, 2),
        "relay_cpu_pct": round(sum(per_pid.values()), 1),
        "relay_cpu_pct_by_pid": {str(k): round(v, 1) for k, v in per_pid.items()},
        "load_cpu_pct": round(100 * (s1.load - s0.load) / seconds, 1),
        "publisher_cpu_pct": round(100 * (s1.publisher - s0.publisher) / seconds, 1),
        "extra_cpu_pct": round(100 * extra / seconds, 1),
        "machine_busy_pct": round(100 * (os.cpu_count() or 1) * busy / total, 1) if total else None,
        "udp_drops_relay": s1.relay_drops - s0.relay_drops,
        "udp_drops_load": s1.load_drops - s0.load_drops,
        "others_top": others_top(s0, s1, seconds),
    }


def others_top(s0: Sample, s1: Sample, seconds: float, n: int = 3) -> list[str]:
    """The busiest processes that are not ours in the window (other work on the machine)."""
    busy = []
    for pid, (name, cpu) in s1.everyone.items():
        if pid not in s1.known and pid in s0.everyone:
            share = 100 * (cpu - s0.everyone[pid][1]) / seconds
            if share >= 1.0:
                busy.append((share, f"{name} {share:.0f} %"))
    return [text for _, text in sorted(busy, reverse=True)[:n]]


# --- 1. capacity -----------------------------------------------------------------------------


async def start_origin(
    workdir: Path, name: str, db_url: str, workers: int, http: aiohttp.ClientSession
) -> tuple[Server, Organiser, dict[str, Any], Publisher]:
    """An origin with the demo, logged in, its session on VP8, the publisher started (call
    ``publisher.connected()`` before measuring)."""
    server = Server(workdir, name, db_url, workers, demo=True)
    await server.wait_healthy(http)
    organiser = Organiser(server)
    await wait_until(
        lambda: (server.data_dir / "demo-logins.json").exists(), STARTUP_TIMEOUT_S, "demo logins"
    )
    await organiser.login()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while len(spread(await organiser.nodes())) < workers:
        if time.monotonic() > deadline:
            raise BenchError(f"not all {workers} workers reported in /api/nodes")
        await asyncio.sleep(0.5)
    links = await organiser.demo_session()
    relay = SimpleNamespace(kind=name, whip_url=links["whip_url"], whip_token=links["whip_token"])
    publisher = Publisher(workdir, relay, 1800, GOP_S, CLIP_SIZE)  # type: ignore[arg-type]
    return server, organiser, links, publisher


async def capacity_run(
    workers: int, args: argparse.Namespace, workdir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Add viewers in steps until fewer than ``--served-share`` of them are served."""
    tag = f"w{workers}"
    rundir = workdir / tag
    for again in range(2, 100):  # --workers 1,2,1,2: each run its own directory
        if not rundir.exists():
            break
        tag = f"w{workers}-{again}"
        rundir = workdir / tag
    rundir.mkdir()
    result: dict[str, Any] = {"workers": workers, "steps": []}
    result["machine"] = await wait_quiet(args.quiet_load, args.quiet_wait, log)
    started = time.monotonic()
    load: LoadProcesses | None = None
    async with fresh_database(args.postgres) as db_url, aiohttp.ClientSession() as http:
        server, organiser, links, publisher = await start_origin(
            rundir, f"origin-{tag}", db_url, workers, http
        )
        try:
            steps = max(1, 1 + (args.max_viewers - args.start) // args.step)
            plan = LoadPlan(
                t0=time.monotonic() + LOAD_START_S,  # the load processes import aiortc first
                counts=[args.start] + [args.step] * (steps - 1),
                interval=args.interval,
                rate=MAX_JOIN_RATE,
                settle=SETTLE_S,
                hold=10.0,
                count=args.count,
            )
            load = LoadProcesses.start(
                rundir,
                tag,
                [links["whep_url"]],
                links["whep_token"],
                plan,
                procs=args.procs,
                nice=args.load_nice,
            )
            await publisher.connected()
            total = 0
            for step, count in enumerate(plan.counts):
                total += count
                opens, closes = plan.window(step)
                await asyncio.sleep(max(0.0, opens - time.monotonic()))
                relay_pids = server.pids
                s0 = take_sample(relay_pids, load.pids, publisher.pid)
                await asyncio.sleep(max(0.0, closes - time.monotonic()))
                s1 = take_sample(relay_pids, load.pids, publisher.pid)
                merged = await load.wait_step(step, 15.0)
                row = step_row(total, merged, window(s0, s1), args)
                if step % 3 == 0 or not row["served"]:
                    row["nodes"] = spread(await organiser.nodes())
                result["steps"].append(row)
                log(
                    f"  W={workers} {total} viewers: {row['served_viewers']}/{total} served "
                    f"({row['served_share_pct']} %), fps median {row['fps_median']}, relay "
                    f"{row['relay_cpu_pct']} % ({row['relay_ms_per_viewer_s']} ms/viewer-s), "
                    f"load {row['load_cpu_pct']} % ({row['load_ms_per_viewer_s']} ms/viewer-s), "
                    f"machine {row['machine_busy_pct']} %, drops relay/load "
                    f"{row['udp_drops_relay']}/{row['udp_drops_load']}"
                    + (f", errors {row['errors']}" if row["errors"] else "")
                    + (f"; others: {', '.join(row['others_top'])}" if row["others_top"] else "")
                )
                if not row["served"]:
                    break
                if time.monotonic() - started > args.capacity_seconds:
                    result["cut_short"] = f"--capacity-seconds {args.capacity_seconds:g} reached"
                    break
            result["nodes_at_end"] = spread(await organiser.nodes())
        finally:
            if load is not None:
                await load.stop()
            publisher.stop()
            server.stop()
            await organiser.close()
    first_fail = next((i for i, r in enumerate(result["steps"]) if not r["served"]), None)
    passing = result["steps"] if first_fail is None else result["steps"][:first_fail]
    best = passing[-1] if passing else None
    result["capacity"] = best["viewers"] if best else 0
    result["capacity_is_lower_bound"] = first_fail is None
    result["at_capacity"] = best
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def step_row(
    viewers: int, merged: dict[str, Any], w: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    fps = merged["fps"] + [0.0] * max(0, viewers - len(merged["fps"]))  # never started
    good = sum(1 for f in fps if f >= GOOD_FPS_SHARE * FPS)
    share = good / viewers if viewers else 0.0
    seconds = w["seconds"]
    relay_ms = 10 * w["relay_cpu_pct"] / viewers if viewers else None
    load_ms = 10 * w["load_cpu_pct"] / viewers if viewers else None
    return {
        "viewers": viewers,
        "joined": merged["joined"],
        "served_viewers": good,
        "served_share_pct": round(100 * share, 1),
        "served": share >= args.served_share,
        "fps_median": round(statistics.median(fps), 2) if fps else None,
        "fps_min": min(fps) if fps else None,
        "video_loss_pct": round(100 * merged["video_lost"] / merged["video_expected"], 2)
        if merged["video_expected"]
        else None,
        "errors": merged["errors"],
        "window_s": seconds,
        **{k: v for k, v in w.items() if k != "seconds"},
        "relay_ms_per_viewer_s": round(relay_ms, 2) if relay_ms is not None else None,
        "load_ms_per_viewer_s": round(load_ms, 2) if load_ms is not None else None,
        "viewers_per_relay_core": round(100 * viewers / w["relay_cpu_pct"])
        if w["relay_cpu_pct"]
        else None,
    }


# --- 2. origin CPU per edge against per viewer -----------------------------------------------


async def edge_run(
    args: argparse.Namespace, workdir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Origin CPU with the broadcaster only (a), + K viewers (b), + K edges instead (c).

    The edges and both load processes start first and wait idle, so that every window has the
    same processes alive and none of them is importing or starting."""
    rundir = workdir / "edges"
    rundir.mkdir()
    k, w = args.edges, args.window
    result: dict[str, Any] = {"k": k, "window_s": w, "windows": {}, "fps": {}}
    result["machine"] = await wait_quiet(args.quiet_load, args.quiet_wait, log)
    started = time.monotonic()
    edges: list[Server] = []
    loads: list[LoadProcesses] = []
    async with fresh_database(args.postgres) as db_url, aiohttp.ClientSession() as http:
        origin, organiser, links, publisher = await start_origin(rundir, "origin", db_url, 1, http)
        try:
            for i in range(1, k + 1):
                made = await asyncio.to_thread(
                    subprocess.run,
                    [STUDYCAST, "node", "token", f"edge-{i}"],
                    env=origin.env,
                    cwd=rundir,
                    capture_output=True,
                    timeout=STARTUP_TIMEOUT_S,
                    check=False,
                )
                if made.returncode != 0:
                    raise BenchError(f"node token: {made.stderr.decode(errors='replace')}")
                token = made.stdout.decode().strip().splitlines()[-1]
                edges.append(
                    Server(rundir, f"edge-{i}", db_url, 1, origin=origin.base_url, node_token=token)
                )
            for edge in edges:
                await edge.wait_healthy(http)
            edge_pids = [pid for edge in edges for pid in edge.pids]
            await publisher.connected()
            a_opens = time.monotonic() + LOAD_START_S

            def plan(t0: float, settle: float) -> LoadPlan:
                return LoadPlan(
                    t0=t0, counts=[k], interval=0, rate=k, settle=settle, hold=0.0,
                    viewer="counting",
                )  # fmt: skip

            # Both windows of a step are inside its counting window, which is 2w + 0.5 s long.
            plan_b = plan(a_opens + 2 * w + 0.5, 3.0)
            plan_b.interval = plan_b.join_s(0) + plan_b.settle + 2 * w + 0.75
            plan_c = plan(plan_b.end() + 3.0, EDGE_SETTLE_S)
            plan_c.interval = plan_c.join_s(0) + plan_c.settle + 2 * w + 0.75
            sid = links["id"]
            for tag, urls, p in (
                ("viewers", [links["whep_url"]], plan_b),
                ("edge-viewers", [f"{edge.base_url}/whep/{sid}" for edge in edges], plan_c),
            ):
                loads.append(
                    LoadProcesses.start(
                        rundir, tag, urls, links["whep_token"], p, procs=1, nice=args.load_nice
                    )
                )

            async def measure(name: str, opens: float) -> None:
                pids = origin.pids
                for run in (1, 2):
                    await asyncio.sleep(max(0.0, opens + (run - 1) * w - time.monotonic()))
                    load_pids = [p for load in loads for p in load.pids]
                    s0 = take_sample(pids, load_pids, publisher.pid, edge_pids)
                    await asyncio.sleep(max(0.0, opens + run * w - time.monotonic()))
                    s1 = take_sample(pids, load_pids, publisher.pid, edge_pids)
                    got = window(s0, s1)
                    got["nodes"] = spread(await organiser.nodes())
                    result["windows"][f"{name}{run}"] = got
                    log(
                        f"  ({name}) run {run}: origin {got['relay_cpu_pct']} % of a core; "
                        f"load {got['load_cpu_pct']} %, edges {got['extra_cpu_pct']} %, machine "
                        f"{got['machine_busy_pct']} %; nodes {json.dumps(got['nodes'])}"
                        + (f"; others: {', '.join(got['others_top'])}" if got["others_top"] else "")
                    )

            await measure("a", a_opens)
            await measure("b", plan_b.window(0)[0])
            result["fps"]["b"] = (await loads[0].wait_step(0, 15.0))["fps"]
            await measure("c", plan_c.window(0)[0])
            result["fps"]["c"] = (await loads[1].wait_step(0, 15.0))["fps"]
            log(f"  fps of the viewers: (b) {result['fps']['b']}, (c) {result['fps']['c']}")
        finally:
            for load in loads:
                await load.stop()
            for edge in edges:
                edge.stop()
            publisher.stop()
            origin.stop()
            await organiser.close()
    got = result["windows"]
    per_viewer, per_edge = [], []
    for run in (1, 2):
        if all(f"{x}{run}" in got for x in "abc"):
            a = got[f"a{run}"]["relay_cpu_pct"]
            per_viewer.append(round((got[f"b{run}"]["relay_cpu_pct"] - a) / k, 2))
            per_edge.append(round((got[f"c{run}"]["relay_cpu_pct"] - a) / k, 2))
    result["per_viewer_pct"] = per_viewer
    result["per_edge_pct"] = per_edge
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


# --- report ----------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return str(value)


def capacity_table(runs: list[dict[str, Any]]) -> Iterator[str]:
    head = [
        "workers",
        "viewers",
        "served (>= 95 % of 30 fps)",
        "fps median / min",
        "relay CPU % (per process)",
        "relay ms / viewer-s",
        "load CPU %",
        "load ms / viewer-s",
        "publisher %",
        "machine % of 200",
        "UDP drops relay / load",
    ]
    yield "| " + " | ".join(head) + " |"
    yield "|" + "---|" * len(head)
    for run in runs:
        for r in run["steps"]:
            mark = "" if r["served"] else " ✗"
            by_pid = ", ".join(map(str, r["relay_cpu_pct_by_pid"].values()))
            yield (
                f"| {run['workers']} | {r['viewers']} | {r['served_viewers']} "
                f"({r['served_share_pct']} %){mark} | {fmt(r['fps_median'])} / {fmt(r['fps_min'])}"
                f" | {r['relay_cpu_pct']} ({by_pid})"
                f" | {fmt(r['relay_ms_per_viewer_s'])} | {r['load_cpu_pct']} | "
                f"{fmt(r['load_ms_per_viewer_s'])} | {r['publisher_cpu_pct']} | "
                f"{r['machine_busy_pct']} | {r['udp_drops_relay']} / {r['udp_drops_load']} |"
            )


def capacity_summary(runs: list[dict[str, Any]]) -> Iterator[str]:
    by_w = {r["workers"]: r for r in runs}
    for w, run in sorted(by_w.items()):
        best = run.get("at_capacity") or {}
        bound = " (no step failed: a lower bound)" if run.get("capacity_is_lower_bound") else ""
        yield (
            f"capacity(workers {w}) = {run['capacity']} viewers{bound}; at it: relay "
            f"{fmt(best.get('relay_cpu_pct'))} % of a core = "
            f"{fmt(best.get('viewers_per_relay_core'))} viewers per relay core, "
            f"{fmt(best.get('relay_ms_per_viewer_s'))} ms relay and "
            f"{fmt(best.get('load_ms_per_viewer_s'))} ms load CPU per viewer-second; "
            + (
                f"spread {json.dumps(best['nodes'])}"
                if best.get("nodes")
                else f"spread after the last step {json.dumps(run.get('nodes_at_end'))}"
            )
        )
    if 1 in by_w and 2 in by_w and by_w[1]["capacity"]:
        c1, c2 = by_w[1]["capacity"], by_w[2]["capacity"]
        ratio = c2 / c1
        yield (
            f"capacity(2) / capacity(1) = {c2}/{c1} = {ratio:.2f}x (target >= {TARGET_RATIO}x: "
            f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})"
        )
        b1, b2 = by_w[1].get("at_capacity") or {}, by_w[2].get("at_capacity") or {}
        v1, v2 = b1.get("viewers_per_relay_core"), b2.get("viewers_per_relay_core")
        if v1 and v2:
            yield (
                f"per relay core: {v1} viewers (workers 1) and {v2} (workers 2); with both cores "
                f"for the relay (load tool elsewhere) that is {v1} vs {2 * v2} viewers = "
                f"{2 * v2 / v1:.2f}x"
            )
    for w, run in sorted(by_w.items()):
        best = run.get("at_capacity") or {}
        load, relay = best.get("load_ms_per_viewer_s"), best.get("relay_ms_per_viewer_s")
        if load and relay:
            yield f"load / relay CPU per viewer at capacity(workers {w}): {load / relay:.2f}"


def edge_summary(run: dict[str, Any]) -> Iterator[str]:
    w = run["windows"]
    yield "| window | run 1: origin CPU % | run 2: origin CPU % |"
    yield "|---|---:|---:|"
    names = {
        "a": "(a) broadcaster only",
        "b": f"(b) + {run['k']} viewers",
        "c": f"(c) + {run['k']} edges (1 viewer each)",
    }
    for key, name in names.items():
        cells = [fmt((w.get(f"{key}{i}") or {}).get("relay_cpu_pct")) for i in (1, 2)]
        yield f"| {name} | {cells[0]} | {cells[1]} |"
    for i, (v, e) in enumerate(zip(run["per_viewer_pct"], run["per_edge_pct"], strict=True), 1):
        ratio = f"{e / v:.2f}" if v > 0 else "-"
        yield (
            f"run {i}: origin CPU per viewer {v} %, per edge {e} % of a core (edge/viewer {ratio})"
        )


# --- main ------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {text}", flush=True)

    out: dict[str, Any] = {"capacity": [], "edges": None}
    with tempfile.TemporaryDirectory(prefix="studycast-bench-scale-") as tmp:
        workdir = Path(args.keep_logs) if args.keep_logs else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if not args.skip_capacity:
            scaling = out["core_scaling"] = []
            if args.probe_seconds:
                log("the machine's own scaling for relay-like work (core_scaling.py)")
                scaling.append(await asyncio.to_thread(core_scaling, args.probe_seconds))
                log("  " + describe(scaling[-1]).replace("\n", "\n  "))
            for workers in args.workers:
                log(f"capacity with --workers {workers}")
                try:
                    out["capacity"].append(await capacity_run(workers, args, workdir, log))
                except BenchError as exc:
                    log(f"  failed: {exc}")
                    out["capacity"].append({"workers": workers, "failed": str(exc), "steps": []})
                CHILDREN.stop_all()
            if args.probe_seconds:
                log("the machine's own scaling again, after the capacity runs")
                scaling.append(await asyncio.to_thread(core_scaling, args.probe_seconds))
                log("  " + describe(scaling[-1]).replace("\n", "\n  "))
        if not args.skip_edges:
            log(f"origin CPU: broadcaster only, + {args.edges} viewers, + {args.edges} edges")
            try:
                out["edges"] = await edge_run(args, workdir, log)
            except BenchError as exc:
                log(f"  failed: {exc}")
                out["edges"] = {"failed": str(exc)}
            CHILDREN.stop_all()
    out["wall_s"] = round(time.monotonic() - started, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", help="server URL; a fresh database is made per run")
    parser.add_argument(
        "--workers",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[1, 2],
        help="worker counts to measure, in order (1,2)",
    )
    parser.add_argument("--start", type=int, default=150, help="viewers in the first step (150)")
    parser.add_argument("--step", type=int, default=30, help="viewers added per step (30)")
    parser.add_argument("--interval", type=float, default=8.0, help="seconds per step (8)")
    parser.add_argument("--max-viewers", type=int, default=1500, help="last step at most (1500)")
    parser.add_argument(
        "--served-share",
        type=float,
        default=0.95,
        help="share of viewers at >= 95 %% of the frame rate for a step to count (0.95)",
    )
    parser.add_argument(
        "--capacity-seconds", type=float, default=480.0, help="steps per W stop after (480)"
    )
    parser.add_argument("--edges", type=int, default=3, help="K viewers and K edges (3)")
    parser.add_argument("--window", type=float, default=20.0, help="origin CPU window, s (20)")
    parser.add_argument("--procs", type=int, default=1, help="load processes (1)")
    parser.add_argument("--load-nice", type=int, default=10, help="nice of the load (10)")
    parser.add_argument(
        "--count",
        choices=("auto", "kernel", "sweep"),
        default="auto",
        help="how header viewers count frames: in the kernel (nftables, root) or by reading "
        "their sockets; auto: the kernel where it can (auto)",
    )
    parser.add_argument("--quiet-load", type=float, default=0.7, help="wait for loadavg below")
    parser.add_argument("--quiet-wait", type=float, default=600.0, help="at most this long (600)")
    parser.add_argument("--skip-capacity", action="store_true", help="only the edge cost")
    parser.add_argument(
        "--probe-seconds",
        type=float,
        default=5.0,
        help="core_scaling.py's run length before and after the capacity runs; 0: skip (5)",
    )
    parser.add_argument("--skip-edges", action="store_true", help="only the capacity")
    parser.add_argument("--json", help="also write every raw figure to this file")
    parser.add_argument("--keep-logs", help="directory for the child processes' logs")
    # Internal: the load processes are this script too.
    parser.add_argument(
        "--role", default="bench", choices=["bench", "load"], help=argparse.SUPPRESS
    )
    parser.add_argument("--urls", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role == "load":
        asyncio.run(load_role(args.urls.split(","), LoadPlan(**json.loads(args.plan))))
        return

    if not args.postgres:
        parser.error("--postgres is needed: more than one worker shares PostgreSQL")
    if not (1 <= args.start <= 2000 and 1 <= args.step <= 500 and args.start <= args.max_viewers):
        parser.error("--start 1..2000, --step 1..500, --start <= --max-viewers")
    if not (args.max_viewers <= 2000 and 4 <= args.interval <= 60):
        parser.error("--max-viewers <= 2000, --interval 4..60")
    if not (0 < args.served_share <= 1 and 10 <= args.capacity_seconds <= 1200):
        parser.error("--served-share 0..1, --capacity-seconds 10..1200")
    if not (1 <= args.edges <= 8 and 5 <= args.window <= 120):
        parser.error("--edges 1..8, --window 5..120")
    if not args.workers or any(not 1 <= n <= 8 for n in args.workers):
        parser.error("--workers: counts 1..8, comma-separated")
    if not (1 <= args.procs <= 4 and 0 <= args.load_nice <= 19):
        parser.error("--procs 1..4, --load-nice 0..19")
    if not (0 <= args.quiet_wait <= 600):
        parser.error("--quiet-wait 0..600")
    if args.probe_seconds and not 1 <= args.probe_seconds <= 60:
        parser.error("--probe-seconds 0 or 1..60")
    why_not = netfilter_tally.unavailable()
    if args.count == "kernel" and why_not:
        parser.error(f"--count kernel: {why_not}")
    if args.count == "auto":
        args.count = "sweep" if why_not else "kernel"
    if args.count == "kernel":
        netfilter_tally.remove_stale()

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    print(
        f"scale benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: nproc {os.cpu_count()}, "
        f"Python {platform.python_version()}, load average {loadavg()}",
        flush=True,
    )
    print("command: " + shlex.join([".venv/bin/python", "bench/bench_scale.py", *sys.argv[1:]]))
    print(
        "load viewers count frames "
        + (
            "in the kernel (nftables), before their sockets"
            if args.count == "kernel"
            else f"by reading their sockets (the kernel cannot: {why_not})"
            if why_not
            else "by reading their sockets (--count sweep)"
        )
    )
    try:
        out = asyncio.run(bench(args))
    except KeyboardInterrupt:
        print("interrupted: stopping every child process", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        CHILDREN.stop_all()
    print()
    runs = [r for r in out["capacity"] if r.get("steps")]
    if runs:
        print("\n".join(capacity_table(runs)))
        print()
        print("\n".join(capacity_summary(runs)))
    for r in out["capacity"]:
        if r.get("failed"):
            print(f"workers {r['workers']}: FAILED: {r['failed']}")
    edges = out.get("edges")
    if edges and not edges.get("failed"):
        print()
        print("\n".join(edge_summary(edges)))
    elif edges:
        print(f"edges: FAILED: {edges['failed']}")
    summary = {
        "capacity": {str(r["workers"]): r.get("capacity") for r in out["capacity"]},
        "edges": None
        if not edges or edges.get("failed")
        else {"per_viewer_pct": edges["per_viewer_pct"], "per_edge_pct": edges["per_edge_pct"]},
        "wall_s": out["wall_s"],
    }
    print("\nJSON " + json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"raw figures: {args.json}")
    print(f"load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
