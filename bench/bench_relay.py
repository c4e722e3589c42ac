"""Relay benchmark: CPU, memory and delivery of the studycast relay and of aiortc's MediaRelay.

For each viewer count N it starts a fresh relay as a real server process on a free 127.0.0.1
port, publishes a pre-encoded 640x480 30 fps ~1 Mbit/s VP8 + Opus clip that honours keyframe
requests (``client.publisher``, in its own process), measures the relay with the broadcaster
only, then connects N frame-counting WHEP viewers (``client.loadtest.watch`` and ``summarise``,
spread over ``--procs`` processes) and, once all have joined, reads the relay process's CPU time
(utime + stime, /proc/PID/stat) and RSS (/proc/PID/status) over a steady ``--seconds`` window.

Relays:

- ``studycast``: ``studycast serve --ice-address 127.0.0.1`` with a temporary data dir and a VP8
  session made by ``studycast session create ... --video-codec vp8 --json``; it forwards the
  broadcaster's encoded RTP (no decode, no encode per viewer).
- ``stock``: ``bench/stock_relay.py``, aiortc's ``MediaRelay`` (decode once, encode per viewer),
  at ``--stock-viewers`` (default 10).

Per relay and N it prints: relay CPU ms per viewer-second (CPU seconds in the window / (viewers
x window) x 1000), relay CPU % of one core, RSS and RSS growth per viewer over the broadcaster-
only RSS, viewers joined and errors, video frames per second per viewer (median, min) as a share
of the published 30 fps and how many viewers reach 95 % of it, first keyframe at a new viewer
(p50, p95 ms from the WHEP POST), RTP loss, and the CPU of the load generator, the publisher and
everything else on the machine in the same window (they share the cores with the relay). Then
the stock/studycast ratio of CPU per viewer-second where both ran, and the targets.

After the window, ``PROBES`` more viewers join one per second: the first keyframe of a newcomer
to a running session (the ramp's figure includes the coalescing of many simultaneous joins).

The viewer processes run at ``--load-nice`` 10 (also their scheduler autogroup, since each child
leads its own session): on two cores they need about as much CPU as the relay, and at equal
priority the scheduler's time-sharing, not the relay, decides the result (``--load-nice 0``
shows that case). Every child process is killed when the script ends (also on Ctrl-C, and by
the kernel if the script itself dies); every wait has a time limit; ``--budget`` bounds the
whole run. The clip's real bitrate is printed: the picture ``client.clip`` draws is simple, and
at 640x480 the encoder makes about 0.63 Mbit/s whatever bitrate it is given (``--size 960x720``
gives about 1.0 Mbit/s).

    .venv/bin/python bench/bench_relay.py [--viewers 10,50,100,200] [--stock-viewers 10]
        [--seconds 20] [--procs 3] [--load-nice 10] [--size 640x480] [--gop 2]
        [--json out.json] [--keep-logs DIR] [--profile-dir DIR] [--budget 900]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: the repository's packages
    sys.path.insert(0, str(REPO))

ICE_ADDRESS = "127.0.0.1"
CODEC: Final = "vp8"
FPS = 30
WIDTH, HEIGHT = 640, 480
BITRATE = 1_000_000
CLIP_SECONDS = 20.0
GOOD_SHARE = 0.95  # a viewer "keeps up" at >= 95 % of the published frame rate
RAMP_PER_SECOND = 20.0  # viewers joining per second, over all load processes
REQUEST_TIMEOUT = 10.0
SETTLE_S = 2.0  # after the last viewer joined, before the window opens
BASELINE_S = 5.0  # broadcaster only
TAIL_MARGIN_S = 15.0  # viewers keep watching this long after the window should have closed
PROBES = 5  # viewers joining one by one after the window: first keyframe in a running session
PROBE_RAMP = 1.0  # per second: further apart than the relay's keyframe-request coalescing
SPAWN_ALLOWANCE_S = 30.0
CLOSE_ALLOWANCE_S = 30.0
STARTUP_TIMEOUT_S = 60.0
MAX_RELAY_RSS = 4 << 30  # a relay past this is stopped (the stock relay queues frames unbounded)
TOKEN_ENV = "STUDYCAST_BENCH_TOKEN"
STUDYCAST = str(REPO / ".venv" / "bin" / "studycast")
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_N = 100
TARGETS = {
    "cpu_ms_per_viewer_s": 5.0,
    "keyframe_p50_ms": 300.0,
    "rss_per_viewer_mb": 1.0,
}


# --- /proc ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def kernel_seconds(pid: int) -> float | None:
    """stime alone (system calls: for the relay mostly sendto), in seconds."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(raw.rsplit(")", 1)[1].split()[12]) / CLK_TCK


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return total - idle, total


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
    return inodes


def udp_rows(pids: list[int]) -> list[list[str]]:
    """The ``/proc/net/udp`` (and udp6) rows of the UDP sockets of ``pids``, split in fields."""
    owned: set[int] = set()
    for pid in pids:
        owned |= _socket_inodes(pid)
    rows = []
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) >= 13 and int(parts[9]) in owned:
                    rows.append(parts)
    return rows


def udp_drops(pids: list[int]) -> int:
    """Datagrams the kernel dropped (full receive buffer) on the UDP sockets of ``pids``."""
    return sum(int(parts[12]) for parts in udp_rows(pids))


def udp_errors() -> dict[str, int]:
    """Machine-wide UDP error counters (/proc/net/snmp): other work on the machine counts too."""
    lines = [
        x.split() for x in Path("/proc/net/snmp").read_text().splitlines() if x.startswith("Udp:")
    ]
    if len(lines) < 2:
        return {}
    table = dict(zip(lines[0][1:], (int(v) for v in lines[1][1:]), strict=False))
    return {k: table.get(k, 0) for k in ("InErrors", "RcvbufErrors", "SndbufErrors")}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- child processes --------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the benchmark dies, however it dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Children:
    """Every process the benchmark starts, so that all of them are stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], *, env: dict[str, str], cwd: Path, log: Path, nice: int = 0
    ) -> subprocess.Popen[bytes]:
        if nice:
            argv = ["nice", "-n", str(nice), *argv]  # exec'd: the pid stays the process's
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the benchmark, which stops them
                preexec_fn=_die_with_parent,  # one libc call, no Python state
            )
        self.procs.append(proc)
        if nice:
            # Each child leads its own session, so with autogroup scheduling (the default on
            # desktop-config kernels) its nice value counts only inside its own group; the
            # group's nice is what ranks it against the relay.
            with contextlib.suppress(OSError):
                Path(f"/proc/{proc.pid}/autogroup").write_text(str(nice))
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        self.procs = [p for p in self.procs if p.poll() is None]


CHILDREN = Children()


def child_env(**extra: str) -> dict[str, str]:
    """The environment without any STUDYCAST_* setting of the caller, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYCAST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


async def wait_until(
    predicate: Callable[[], Any], within: float, what: str, interval: float = 0.1
) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(interval)


class BenchError(RuntimeError):
    pass


# --- the relays under test --------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format → {"name{labels}": value} (comments skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


class Relay:
    """A relay server process under test."""

    kind = ""
    proc: subprocess.Popen[bytes]
    base_url: str
    whip_url: str
    whep_url: str
    whip_token = "none"
    whep_token = "none"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log = workdir / f"{self.kind}-relay.log"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def _wait_announced(self, pattern: str) -> str:
        def announced() -> str | None:
            if not self.alive():
                raise BenchError(f"{self.kind} relay exited:\n{tail(self.log)}")
            match = re.search(pattern, self.log.read_text(errors="replace"))
            return match.group(1) if match else None

        return str(await wait_until(announced, STARTUP_TIMEOUT_S, f"the {self.kind} relay"))

    async def start(self, http: aiohttp.ClientSession) -> None:
        raise NotImplementedError

    async def viewers(self, http: aiohttp.ClientSession) -> int:
        raise NotImplementedError

    async def broadcasting(self, http: aiohttp.ClientSession) -> bool:
        raise NotImplementedError

    async def counters(self, http: aiohttp.ClientSession) -> dict[str, float]:
        return {}

    def stop(self) -> None:
        Children.stop(self.proc)


class StudycastRelay(Relay):
    kind = "studycast"
    # Extra options of ``studycast session create`` (the recording switch).
    session_options: tuple[str, ...] = ()

    async def start(self, http: aiohttp.ClientSession) -> None:
        data_dir = self.workdir / "data"
        studycast = STUDYCAST
        argv = [studycast, "serve", "--host", "127.0.0.1", "--port", "0"]
        argv += ["--data-dir", str(data_dir), "--ice-address", ICE_ADDRESS]
        self.proc = CHILDREN.start(argv, env=child_env(), cwd=self.workdir, log=self.log)
        self.base_url = await self._wait_announced(r"studycast is running at (http://\S+?)/?\n")
        port = self.base_url.rsplit(":", 1)[1]
        env = child_env(
            STUDYCAST_DATA_DIR=str(data_dir), STUDYCAST_HOST="127.0.0.1", STUDYCAST_PORT=port
        )
        start = datetime.now(UTC).replace(microsecond=0).isoformat()
        made = await asyncio.to_thread(
            subprocess.run,
            [
                studycast,
                "session",
                "create",
                "relay bench",
                "--start",
                start,
                "--json",
                "--video-codec",
                CODEC,
                *self.session_options,
            ],
            env=env,
            cwd=self.workdir,
            capture_output=True,
            timeout=STARTUP_TIMEOUT_S,
            check=False,
        )
        if made.returncode != 0:
            raise BenchError(f"session create failed: {made.stderr.decode(errors='replace')}")
        info = json.loads(made.stdout)
        self.whip_url, self.whip_token = info["whip_url"], info["whip_token"]
        self.whep_url, self.whep_token = info["whep_url"], info["whep_token"]

    async def _metrics(self, http: aiohttp.ClientSession) -> dict[str, float]:
        async with http.get(self.base_url + "/metrics", timeout=aiohttp.ClientTimeout(10)) as r:
            return parse_metrics(await r.text())

    async def viewers(self, http: aiohttp.ClientSession) -> int:
        m = await self._metrics(http)
        return int(sum(v for k, v in m.items() if k.startswith("studycast_relay_viewers{")))

    async def broadcasting(self, http: aiohttp.ClientSession) -> bool:
        m = await self._metrics(http)
        return m.get("studycast_relay_broadcasters", 0) >= 1

    async def counters(self, http: aiohttp.ClientSession) -> dict[str, float]:
        m = await self._metrics(http)
        names = {
            "packets_out_video": 'studycast_relay_packets_out_total{media="video"}',
            "packets_out_audio": 'studycast_relay_packets_out_total{media="audio"}',
            "bytes_out_video": 'studycast_relay_bytes_out_total{media="video"}',
            "nacks": "studycast_relay_nacks_total",
            "retransmissions": "studycast_relay_retransmissions_total",
            "plis_upstream": "studycast_relay_plis_upstream_total",
        }
        return {k: m.get(v, 0.0) for k, v in names.items()}


class UnrecordedRelay(StudycastRelay):
    """The studycast relay with the session's recording switched off (to price the recorder)."""

    kind = "studycast-norec"
    session_options = ("--no-recording",)


class StockRelay(Relay):
    kind = "stock"

    def __init__(self, workdir: Path, lifetime: float) -> None:
        super().__init__(workdir)
        self.lifetime = lifetime

    async def start(self, http: aiohttp.ClientSession) -> None:
        argv = [sys.executable, str(REPO / "bench" / "stock_relay.py"), "--port", "0"]
        argv += ["--ice-address", ICE_ADDRESS, "--lifetime", str(round(self.lifetime))]
        self.proc = CHILDREN.start(argv, env=child_env(), cwd=self.workdir, log=self.log)
        self.base_url = await self._wait_announced(r"stock relay is running at (http://\S+?)/?\n")
        self.whip_url = self.base_url + "/whip/1"
        self.whep_url = self.base_url + "/whep/1"

    async def _stats(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(self.base_url + "/stats", timeout=aiohttp.ClientTimeout(10)) as r:
            return dict(await r.json())

    async def viewers(self, http: aiohttp.ClientSession) -> int:
        return int((await self._stats(http))["viewers"])

    async def broadcasting(self, http: aiohttp.ClientSession) -> bool:
        return bool((await self._stats(http))["broadcaster"])


# --- the publisher process --------------------------------------------------------------------


class Publisher:
    """The publisher subprocess; ``mark()`` asks it (SIGUSR1) for its counters."""

    def __init__(
        self, workdir: Path, relay: Relay, lifetime: float, gop: float, size: tuple[int, int]
    ) -> None:
        self.log = workdir / f"{relay.kind}-publisher.log"
        argv = [sys.executable, str(Path(__file__).resolve()), "--role", "publisher"]
        argv += ["--url", relay.whip_url, "--lifetime", str(round(lifetime)), "--gop", str(gop)]
        argv += ["--size", f"{size[0]}x{size[1]}"]
        env = child_env(**{TOKEN_ENV: relay.whip_token})
        self.proc = CHILDREN.start(argv, env=env, cwd=workdir, log=self.log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    async def connected(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise BenchError(f"the publisher exited:\n{tail(self.log)}")
            return any(e.get("event") == "connected" for e in self.events())

        await wait_until(ready, STARTUP_TIMEOUT_S, "the publisher to connect")

    async def mark(self) -> dict[str, Any] | None:
        before = len(self.events())
        if self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGUSR1)
        with contextlib.suppress(BenchError):
            await wait_until(lambda: len(self.events()) > before, 3.0, "publisher counters", 0.02)
            return self.events()[-1]
        return None

    def stop(self) -> None:
        Children.stop(self.proc)


async def publisher_role(url: str, lifetime: float, gop: float, size: tuple[int, int]) -> None:
    from client.clip import make_clip
    from client.publisher import publish
    from server.relay.ice import advertise_addresses

    advertise_addresses([ICE_ADDRESS])
    clip = make_clip(CODEC, CLIP_SECONDS, FPS, size[0], size[1], BITRATE, gop)
    publication = await publish(url, os.environ.get(TOKEN_ENV, "none"), clip, seconds=lifetime)

    def emit(event: str) -> None:
        video = publication.video
        record = {
            "event": event,
            "t": time.monotonic(),
            "video_frames": video.packets_sent,
            "audio_packets": publication.audio.packets_sent,
            "keyframe_requests": video.keyframe_requests,
            "keyframe_jumps": video.jumps,
            "loops": video.loops,
        }
        print(json.dumps(record), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, emit, "mark")
    try:
        await publication.wait_connected(20)
        emit("connected")
        closed = asyncio.ensure_future(publication.wait_closed())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (closed, stopped):
            task.cancel()
        emit("done")
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await publication.close()


# --- the viewer processes ---------------------------------------------------------------------


def viewers_role(url: str, viewers: int, seconds: float, ramp: float) -> None:
    from client.loadtest import watch
    from server.relay.ice import advertise_addresses

    advertise_addresses([ICE_ADDRESS])
    token = os.environ.get(TOKEN_ENV, "none")
    try:
        results = asyncio.run(
            watch(
                url,
                token,
                viewers,
                seconds,
                ramp_per_second=ramp,
                request_timeout=REQUEST_TIMEOUT,
            )
        )
        report: dict[str, Any] = {"viewers": results}
    except BaseException as exc:  # reported like run_loadtest reports a failed worker
        report = {"error": f"load process failed: {type(exc).__name__}: {exc}"}
        report["viewers_lost"] = viewers
    print("RESULT " + json.dumps(report), flush=True)


@dataclass
class LoadProcesses:
    """``procs`` viewer processes, each running ``client.loadtest.watch`` for its share."""

    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]
    shares: list[int]
    budget: float
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(
        cls,
        workdir: Path,
        relay: Relay,
        viewers: int,
        procs: int,
        seconds: float,
        tag: str,
        *,
        nice: int = 0,
        ramp_total: float = RAMP_PER_SECOND,
    ) -> LoadProcesses:
        procs = max(1, min(procs, viewers))
        shares = [viewers // procs + (1 if i < viewers % procs else 0) for i in range(procs)]
        ramp = ramp_total / procs
        popens, logs = [], []
        for i, share in enumerate(shares):
            log = workdir / f"{tag}-viewers-{i}.log"
            argv = [sys.executable, str(Path(__file__).resolve()), "--role", "viewers"]
            argv += ["--url", relay.whep_url, "--count", str(share), "--watch", str(seconds)]
            argv += ["--ramp", str(ramp)]
            env = child_env(**{TOKEN_ENV: relay.whep_token})
            popens.append(CHILDREN.start(argv, env=env, cwd=workdir, log=log, nice=nice))
            logs.append(log)
        budget = (
            SPAWN_ALLOWANCE_S
            + max(shares) / ramp
            + seconds
            + 2 * REQUEST_TIMEOUT
            + CLOSE_ALLOWANCE_S
        )
        return cls(popens, logs, shares, budget)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    async def reports(self) -> list[dict[str, Any]]:
        """Wait (within the budget) for every process; one report per process."""
        deadline = self.started + self.budget
        while self.running() and time.monotonic() < deadline:  # noqa: ASYNC110 (processes)
            await asyncio.sleep(0.25)
        out = []
        for i, (proc, log, share) in enumerate(
            zip(self.procs, self.logs, self.shares, strict=True)
        ):
            if proc.poll() is None:
                Children.stop(proc)
                out.append({"worker": i, "error": "load process timed out", "viewers_lost": share})
                continue
            text = log.read_text(errors="replace")
            line = next((x for x in reversed(text.splitlines()) if x.startswith("RESULT ")), None)
            if line is None:
                why = f"load process crashed (exit code {proc.returncode}): {tail(log, 3)}"
                out.append({"worker": i, "error": why, "viewers_lost": share})
            else:
                out.append({"worker": i, **json.loads(line[len("RESULT ") :])})
        return out

    def stop(self) -> None:
        for proc in self.procs:
            Children.stop(proc, grace=5.0)


# --- one measurement --------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    relay_cpu: float | None
    relay_rss: int | None
    publisher_cpu: float | None
    load_cpu: float
    self_cpu: float
    machine: tuple[int, int]
    counters: dict[str, float]
    relay_drops: int = 0
    relay_kernel: float | None = None
    load_drops: int = 0
    udp: dict[str, int] = field(default_factory=dict)


async def sample(
    http: aiohttp.ClientSession, relay: Relay, publisher: Publisher, load: list[int]
) -> Sample:
    counters = await relay.counters(http)  # first: the scrape's own CPU falls outside
    t = time.monotonic()
    times = os.times()
    return Sample(
        t=t,
        relay_cpu=cpu_seconds(relay.pid),
        relay_rss=rss_bytes(relay.pid),
        publisher_cpu=cpu_seconds(publisher.pid),
        load_cpu=sum(c for c in (cpu_seconds(p) for p in load) if c is not None),
        self_cpu=times.user + times.system,
        machine=machine_ticks(),
        counters=counters,
        relay_drops=udp_drops([relay.pid]),
        relay_kernel=kernel_seconds(relay.pid),
        load_drops=udp_drops(load),
        udp=udp_errors(),
    )


def pct(cpu0: float | None, cpu1: float | None, seconds: float) -> float | None:
    if cpu0 is None or cpu1 is None or seconds <= 0:
        return None
    return 100 * (cpu1 - cpu0) / seconds


def run_window(s0: Sample, s1: Sample) -> dict[str, Any]:
    """CPU shares (% of one core) of everything in the machine between two samples."""
    seconds = s1.t - s0.t
    busy = s1.machine[0] - s0.machine[0]
    total = s1.machine[1] - s0.machine[1]
    cores = os.cpu_count() or 1
    machine = 100 * cores * busy / total if total else None
    relay = pct(s0.relay_cpu, s1.relay_cpu, seconds)
    publisher = pct(s0.publisher_cpu, s1.publisher_cpu, seconds)
    load = pct(s0.load_cpu, s1.load_cpu, seconds)
    bench = pct(s0.self_cpu, s1.self_cpu, seconds)
    others = None
    if None not in (machine, relay, publisher, load, bench):
        others = machine - relay - publisher - load - bench  # type: ignore[operator]
    return {
        "seconds": round(seconds, 2),
        "relay_cpu_s": None
        if s0.relay_cpu is None or s1.relay_cpu is None
        else round(s1.relay_cpu - s0.relay_cpu, 3),
        "relay_cpu_pct": _r(relay),
        "relay_kernel_pct": _r(pct(s0.relay_kernel, s1.relay_kernel, seconds)),
        "publisher_cpu_pct": _r(publisher),
        "load_cpu_pct": _r(load),
        "bench_cpu_pct": _r(bench),
        "machine_busy_pct": _r(machine),
        "others_cpu_pct": _r(others),
        "machine_capacity_pct": 100 * cores,
        "udp_drops_relay": s1.relay_drops - s0.relay_drops,
        "udp_drops_viewers": s1.load_drops - s0.load_drops,
        "udp_errors_machine": {k: s1.udp[k] - s0.udp.get(k, 0) for k in s1.udp},
    }


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


async def measure(
    kind: str, viewers: int, args: argparse.Namespace, workdir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """One fresh relay, one publisher, baseline, ``viewers`` viewers, one window."""
    from client.loadtest import summarise

    tag = f"{kind}-{viewers}"
    rundir = workdir / tag
    rundir.mkdir()
    lifetime = 240 + viewers / RAMP_PER_SECOND + args.seconds
    relay: Relay
    if kind == "studycast":
        relay = StudycastRelay(rundir)
    elif kind == "studycast-norec":
        relay = UnrecordedRelay(rundir)
    else:
        relay = StockRelay(rundir, lifetime)
    result: dict[str, Any] = {"relay": kind, "viewers": viewers, "window_s": args.seconds}
    publisher: Publisher | None = None
    load: LoadProcesses | None = None
    profiler: subprocess.Popen[bytes] | None = None
    probe: LoadProcesses | None = None
    async with aiohttp.ClientSession() as http:
        try:
            await relay.start(http)
            publisher = Publisher(rundir, relay, lifetime, args.gop, args.size)
            await publisher.connected()

            async def is_broadcasting() -> None:
                deadline = time.monotonic() + 20
                while not await relay.broadcasting(http):
                    if time.monotonic() > deadline:
                        raise BenchError("the relay never saw the broadcaster")
                    await asyncio.sleep(0.2)

            await is_broadcasting()
            await asyncio.sleep(3.0)  # the broadcaster's first seconds: DTLS, first keyframe
            b0 = await sample(http, relay, publisher, [])
            await asyncio.sleep(BASELINE_S)
            b1 = await sample(http, relay, publisher, [])
            result["baseline"] = {**run_window(b0, b1), "relay_rss_mb": _mb(b1.relay_rss)}
            log(
                f"  {tag}: broadcaster only: relay {result['baseline']['relay_cpu_pct']} % CPU, "
                f"{result['baseline']['relay_rss_mb']} MB"
            )

            watch_s = SETTLE_S + args.seconds + TAIL_MARGIN_S
            before_join = await publisher.mark()
            load = LoadProcesses.start(
                rundir, relay, viewers, args.procs, watch_s, tag, nice=args.load_nice
            )
            t0 = time.monotonic()
            join_deadline = t0 + SPAWN_ALLOWANCE_S + viewers / RAMP_PER_SECOND + 5
            present = 0
            while time.monotonic() < join_deadline and load.running():
                present = await relay.viewers(http)
                if present >= viewers:
                    break
                await asyncio.sleep(0.25)
            result["join_s"] = round(time.monotonic() - t0, 1)
            await asyncio.sleep(SETTLE_S)
            if args.profile_dir and kind == "studycast":
                profiler = start_profiler(args.profile_dir, tag, relay.pid, args.seconds)
            mark0 = await publisher.mark()
            s0 = await sample(http, relay, publisher, load.pids)
            present_start = await relay.viewers(http)
            rss_max = s0.relay_rss or 0
            window_end = s0.t + args.seconds
            aborted = None
            while time.monotonic() < window_end:
                await asyncio.sleep(min(1.0, max(0.0, window_end - time.monotonic())))
                rss = rss_bytes(relay.pid)
                if rss is None:
                    aborted = "the relay process died"
                    break
                rss_max = max(rss_max, rss)
                if rss > MAX_RELAY_RSS:
                    aborted = f"relay RSS passed {MAX_RELAY_RSS >> 20} MB"
                    break
            s1 = await sample(http, relay, publisher, load.pids)
            mark1 = await publisher.mark()
            present_end = await relay.viewers(http) if relay.alive() else 0
            # Newcomers to the running session, one at a time (no coalesced keyframe request).
            probe = LoadProcesses.start(
                rundir,
                relay,
                PROBES,
                1,
                3.0,
                tag + "-probe",
                nice=args.load_nice,
                ramp_total=PROBE_RAMP,
            )
            window = run_window(s0, s1)
            result["window"] = window
            result["aborted"] = aborted
            result["viewers_at_relay"] = {"start": present_start, "end": present_end}
            result["relay_rss_mb"] = _mb(s1.relay_rss)
            result["relay_rss_max_mb"] = _mb(rss_max)
            if before_join and mark0:
                result["keyframe_requests_while_joining"] = (
                    mark0["keyframe_requests"] - before_join["keyframe_requests"]
                )
            if mark0 and mark1 and mark1["t"] > mark0["t"]:
                dt = mark1["t"] - mark0["t"]
                result["published"] = {
                    "fps": round((mark1["video_frames"] - mark0["video_frames"]) / dt, 2),
                    "keyframe_requests": mark1["keyframe_requests"] - mark0["keyframe_requests"],
                    "keyframe_jumps": mark1["keyframe_jumps"] - mark0["keyframe_jumps"],
                }
            if s0.counters and s1.counters:
                dt = s1.t - s0.t
                result["relay_counters"] = {
                    k: round((s1.counters[k] - s0.counters[k]) / dt, 1) for k in s0.counters
                }
            log(
                f"  {tag}: window {window['seconds']} s, {present_start}->{present_end} viewers, "
                f"relay {window['relay_cpu_pct']} % CPU, load {window['load_cpu_pct']} %, "
                f"machine {window['machine_busy_pct']} % of {window['machine_capacity_pct']} %"
            )
            if profiler is not None:
                result["profile"] = finish_profiler(profiler, args.profile_dir, tag)
                profiler = None
            reports = await load.reports()
            summary = summarise(
                reports,
                whep_url=relay.whep_url,
                requested=viewers,
                seconds=watch_s,
                procs=len(load.procs),
                wall_seconds=time.monotonic() - load.started,
            )
            per_viewer = [float(r["fps"]) for rep in reports for r in rep.get("viewers", [])]
            summary["fps_all"] = per_viewer
            result["loadtest"] = summary
            probe_reports = await probe.reports()
            probed = summarise(
                probe_reports,
                whep_url=relay.whep_url,
                requested=PROBES,
                seconds=3.0,
                procs=1,
                wall_seconds=time.monotonic() - probe.started,
            )
            result["probe"] = {
                "joined": probed["viewers_joined"],
                "errors": probed["errors"],
                "first_keyframe_ms": probed["first_keyframe_ms"],
                "all": [
                    r["first_keyframe_ms"] for rep in probe_reports for r in rep.get("viewers", [])
                ],
            }
            await asyncio.sleep(3.0)
            result["relay_rss_after_mb"] = _mb(rss_bytes(relay.pid))
            result["viewers_after"] = await relay.viewers(http) if relay.alive() else None
        except BenchError as exc:
            result["failed"] = str(exc)
            log(f"  {tag}: FAILED: {exc}")
        finally:
            if profiler is not None:
                Children.stop(profiler)
            for crowd in (load, probe):
                if crowd is not None:
                    crowd.stop()
            if publisher is not None:
                done = await publisher.mark()
                result["publisher_total"] = done
                publisher.stop()
            if getattr(relay, "proc", None) is not None:
                relay.stop()
    result["logs"] = str(rundir)
    return derive(result)


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / (1 << 20), 1)


def derive(r: dict[str, Any]) -> dict[str, Any]:
    """The figures the table prints, from one measurement's raw numbers."""
    window = r.get("window") or {}
    counted = (r.get("viewers_at_relay") or {}).get("start") or 0
    cpu_s = window.get("relay_cpu_s")
    seconds = window.get("seconds") or 0
    d: dict[str, Any] = {}
    if cpu_s is not None and counted and seconds:
        d["cpu_ms_per_viewer_s"] = round(1000 * cpu_s / (counted * seconds), 2)
        base = (r.get("baseline") or {}).get("relay_cpu_pct")
        if base is not None:
            extra = cpu_s - base / 100 * seconds
            d["cpu_ms_per_viewer_s_over_baseline"] = round(1000 * extra / (counted * seconds), 2)
    base_rss = (r.get("baseline") or {}).get("relay_rss_mb")
    if base_rss is not None and r.get("relay_rss_mb") is not None and counted:
        d["rss_per_viewer_mb"] = round((r["relay_rss_mb"] - base_rss) / counted, 3)
    lt = r.get("loadtest")
    if lt:
        fps = lt["fps_all"]
        good = sum(1 for f in fps if f >= GOOD_SHARE * FPS)
        d["viewers_keeping_up"] = good
        d["fps_median_share"] = _share(lt["fps_per_viewer"]["median"])
        d["fps_min_share"] = _share(lt["fps_per_viewer"]["min"])
        d["errors"] = sum(lt["errors"].values())
    r["derived"] = d
    return r


def _share(fps: float | None) -> float | None:
    return None if fps is None else round(100 * fps / FPS, 1)


# --- profiling (optional) ---------------------------------------------------------------------


def start_profiler(directory: str, tag: str, pid: int, seconds: float) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy", path=str(REPO / ".venv" / "bin")) or shutil.which("py-spy")
    if spy is None:
        raise BenchError("--profile-dir needs py-spy (.venv/bin/pip install py-spy)")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    argv = [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    argv += ["--rate", "100", "--nonblocking", "--format", "raw", "-o", str(out / f"{tag}.txt")]
    return CHILDREN.start(argv, env=child_env(), cwd=out, log=out / f"{tag}.py-spy.log")


def finish_profiler(proc: subprocess.Popen[bytes], directory: str, tag: str) -> dict[str, Any]:
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        Children.stop(proc)
    path = Path(directory) / f"{tag}.txt"
    if not path.exists():
        return {"error": tail(Path(directory) / f"{tag}.py-spy.log", 5)}
    return summarise_stacks(path.read_text(errors="replace"))


_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    where = match["file"]
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{match['fn']} ({where})"


def summarise_stacks(text: str, top: int = 25) -> dict[str, Any]:
    """Collapsed stacks (py-spy --format raw) → self and inclusive shares per function."""
    self_count: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))] or frames
        total += n
        self_count[frames[-1]] += n
        for name in set(frames):
            incl[name] += n
    return {
        "samples": total,
        "self": [(n, round(100 * c / total, 1)) for n, c in self_count.most_common(top)]
        if total
        else [],
        "inclusive": [(n, round(100 * c / total, 1)) for n, c in incl.most_common(top * 2)]
        if total
        else [],
    }


# --- report -----------------------------------------------------------------------------------


def fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}{suffix}"
    return f"{value}{suffix}"


def table(results: list[dict[str, Any]]) -> list[str]:
    head = [
        "relay",
        "N",
        "joined/err",
        "CPU ms/viewer-s",
        "relay CPU % core (bcast only)",
        "RSS MB (bcast only)",
        "RSS MB/viewer",
        "fps/viewer median/min (% of 30)",
        ">=95 %",
        "1st keyframe p50/p95 ms (ramp)",
        "1st keyframe p50/max ms (5 late joiners)",
        "loss video/audio %",
        "load gen CPU %",
        "publisher CPU %",
        "machine busy % of 200 (others)",
    ]
    rows = [head, ["---"] * len(head)]
    for r in results:
        d = r.get("derived", {})
        w = r.get("window") or {}
        b = r.get("baseline") or {}
        lt = r.get("loadtest") or {}
        if "failed" in r and not lt:
            rows.append([r["relay"], str(r["viewers"]), "FAILED: " + r["failed"][:80]] + [""] * 12)
            continue
        fps = lt.get("fps_per_viewer") or {}
        key = lt.get("first_keyframe_ms") or {}
        loss = lt.get("packet_loss_percent") or {}
        probe = (r.get("probe") or {}).get("first_keyframe_ms") or {}
        rows.append(
            [
                r["relay"],
                str(r["viewers"]),
                f"{lt.get('viewers_joined', '-')}/{d.get('errors', '-')}",
                f"**{fmt(d.get('cpu_ms_per_viewer_s'))}**"
                f" ({fmt(d.get('cpu_ms_per_viewer_s_over_baseline'))} over bcast)",
                f"{fmt(w.get('relay_cpu_pct'))} ({fmt(b.get('relay_cpu_pct'))})",
                f"{fmt(r.get('relay_rss_mb'))} ({fmt(b.get('relay_rss_mb'))})",
                fmt(d.get("rss_per_viewer_mb")),
                f"{fmt(fps.get('median'))}/{fmt(fps.get('min'))} "
                f"({fmt(d.get('fps_median_share'))}/{fmt(d.get('fps_min_share'))} %)",
                f"{fmt(d.get('viewers_keeping_up'))}/{r['viewers']}",
                f"{fmt(key.get('p50'))}/{fmt(key.get('p95'))}",
                f"{fmt(probe.get('p50'))}/{fmt(probe.get('max'))}",
                f"{fmt(loss.get('video'))}/{fmt(loss.get('audio'))}",
                fmt(w.get("load_cpu_pct")),
                fmt(w.get("publisher_cpu_pct")),
                f"{fmt(w.get('machine_busy_pct'))} ({fmt(w.get('others_cpu_pct'))})",
            ]
        )
    return ["| " + " | ".join(row) + " |" for row in rows]


def notes(results: list[dict[str, Any]]) -> Iterator[str]:
    for r in results:
        tag = f"{r['relay']} N={r['viewers']}"
        if r.get("failed"):
            yield f"{tag}: failed: {r['failed']}"
        if r.get("aborted"):
            yield f"{tag}: window cut short: {r['aborted']}"
        at = r.get("viewers_at_relay") or {}
        if at and (at.get("start") != r["viewers"] or at.get("end") != at.get("start")):
            yield (
                f"{tag}: viewers at the relay: {at.get('start')} at window start, "
                f"{at.get('end')} at its end"
            )
        lt = r.get("loadtest") or {}
        if lt.get("errors"):
            yield f"{tag}: errors: {json.dumps(lt['errors'])}"
        pub = r.get("published")
        extra = []
        if pub:
            extra.append(
                f"published {pub['fps']} fps in the window; keyframe requests at the publisher: "
                f"{r.get('keyframe_requests_while_joining')} while the viewers joined, "
                f"{pub['keyframe_requests']} in the window"
            )
        rc = r.get("relay_counters")
        if rc:
            extra.append(
                f"relay sent {rc['packets_out_video']:g} video + {rc['packets_out_audio']:g} audio "
                f"pkt/s, {rc['nacks']:g} NACK/s, {rc['retransmissions']:g} retransmissions/s"
            )
            w = r.get("window") or {}
            pkts = rc["packets_out_video"] + rc["packets_out_audio"]
            if w.get("relay_kernel_pct") is not None:
                extra.append(
                    f"relay CPU in the kernel (stime): {w['relay_kernel_pct']} % of a core"
                )
            if pkts and w.get("relay_cpu_pct") is not None:
                extra.append(
                    f"{10_000 * w['relay_cpu_pct'] / pkts:.1f} µs relay CPU per packet out"
                )
        if lt:
            extra.append(
                f"first frame a keyframe: {lt['first_frame_keyframe']['yes']} yes / "
                f"{lt['first_frame_keyframe']['no']} no; answer p50/p95 "
                f"{fmt(lt['answer_ms']['p50'])}/{fmt(lt['answer_ms']['p95'])} ms; "
                f"join took {r.get('join_s')} s"
            )
        w = r.get("window") or {}
        if "udp_drops_relay" in w:
            extra.append(
                f"UDP datagrams dropped by the kernel in the window: {w['udp_drops_relay']} at "
                f"the relay's sockets, {w['udp_drops_viewers']} at the viewers' (machine-wide "
                f"{json.dumps(w['udp_errors_machine'])})"
            )
        probe = r.get("probe")
        if probe and probe.get("errors"):
            extra.append(f"late joiners' errors: {json.dumps(probe['errors'])}")
        if r.get("relay_rss_after_mb") is not None:
            extra.append(
                f"RSS max {r.get('relay_rss_max_mb')} MB, {r['relay_rss_after_mb']} MB 3 s after "
                f"the viewers left ({r.get('viewers_after')} viewers still listed)"
            )
        if extra:
            yield f"{tag}: " + "; ".join(extra)


def verdict(results: list[dict[str, Any]]) -> Iterator[str]:
    ours = {r["viewers"]: r for r in results if r["relay"] == "studycast" and "derived" in r}
    stock = {r["viewers"]: r for r in results if r["relay"] == "stock" and "derived" in r}
    for n in sorted(set(ours) & set(stock)):
        a = ours[n]["derived"].get("cpu_ms_per_viewer_s")
        b = stock[n]["derived"].get("cpu_ms_per_viewer_s")
        if a and b:
            yield f"N={n}: stock/studycast CPU per viewer-second = {b:g}/{a:g} = {b / a:.1f}x"
    norec = {r["viewers"]: r for r in results if r["relay"] == "studycast-norec" and "derived" in r}
    for n in sorted(set(ours) & set(norec)):
        on = ours[n]["derived"].get("cpu_ms_per_viewer_s")
        off = norec[n]["derived"].get("cpu_ms_per_viewer_s")
        if on and off:
            yield (
                f"N={n}: relay CPU per viewer-second with recording {on:g} ms, without {off:g} "
                f"ms: recording adds {(on / off - 1) * 100:+.1f}% (target <= +10%)"
            )
    r = ours.get(TARGET_N)
    if r is None:
        yield f"targets: no studycast run at N={TARGET_N}"
        return
    d = r["derived"]
    lt = r.get("loadtest") or {}
    checks: list[tuple[str, Any, Callable[[Any], bool]]] = [
        (
            f"CPU per viewer-second <= {TARGETS['cpu_ms_per_viewer_s']:g} ms",
            d.get("cpu_ms_per_viewer_s"),
            lambda v: v <= TARGETS["cpu_ms_per_viewer_s"],
        ),
        (
            f"all {TARGET_N} viewers at >= 95 % of {FPS} fps",
            d.get("viewers_keeping_up"),
            lambda v: v >= TARGET_N,
        ),
        (
            f"first keyframe p50 <= {TARGETS['keyframe_p50_ms']:g} ms",
            (lt.get("first_keyframe_ms") or {}).get("p50"),
            lambda v: v <= TARGETS["keyframe_p50_ms"],
        ),
        (
            f"RSS per viewer <= {TARGETS['rss_per_viewer_mb']:g} MB",
            d.get("rss_per_viewer_mb"),
            lambda v: v <= TARGETS["rss_per_viewer_mb"],
        ),
    ]
    for what, value, ok in checks:
        state = "no figure" if value is None else ("met" if ok(value) else "MISSED")
        yield f"target at N={TARGET_N}: {what}: {fmt(value)} -> {state}"


# --- main -------------------------------------------------------------------------------------


def counts(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()] if text.strip() else []
    if any(not 1 <= v <= 1000 for v in values):
        raise argparse.ArgumentTypeError("viewer counts must be 1..1000")
    return values


def size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("size is WIDTHxHEIGHT, e.g. 640x480") from None
    if not (64 <= w <= 1920 and 64 <= h <= 1080 and w % 2 == 0 and h % 2 == 0):
        raise argparse.ArgumentTypeError("size must be even, 64x64..1920x1080")
    return w, h


def estimate(viewers: int, seconds: float) -> float:
    """A generous guess of one measurement's wall time (for the budget)."""
    startup = 25 + BASELINE_S + 10
    return startup + viewers / RAMP_PER_SECOND + SETTLE_S + seconds + TAIL_MARGIN_S + 20


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    from client.clip import make_clip

    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {text}", flush=True)

    width, height = args.size
    log(f"clip: {CODEC} {width}x{height} {FPS} fps {BITRATE // 1000} kbit/s, GOP {args.gop} s")
    clip = await asyncio.to_thread(
        make_clip, CODEC, CLIP_SECONDS, FPS, width, height, BITRATE, args.gop
    )
    kbps = sum(len(p.data) for p in clip.video) * 8 / clip.seconds / 1000
    audio_kbps = sum(len(p.data) for p in clip.audio) * 8 / clip.seconds / 1000
    key_bytes = [len(p.data) for p in clip.video if p.keyframe]
    log(
        f"clip ready: {len(clip.video)} frames, {kbps:.0f} kbit/s video + {audio_kbps:.0f} kbit/s "
        f"Opus; keyframes {min(key_bytes)}-{max(key_bytes)} bytes"
    )
    plan = [("studycast", n) for n in args.viewers] + [("stock", n) for n in args.stock_viewers]
    plan += [("studycast-norec", n) for n in args.norec_viewers]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="studycast-bench-relay-") as tmp:
        workdir = Path(args.keep_logs) if args.keep_logs else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for kind, n in plan:
            left = args.budget - (time.monotonic() - started)
            if estimate(n, args.seconds) > left:
                log(f"{kind} N={n}: skipped, {left:.0f} s of the budget left")
                results.append({"relay": kind, "viewers": n, "failed": "skipped (budget)"})
                continue
            log(f"{kind} N={n}: starting (load average {loadavg()})")
            results.append(await measure(kind, n, args, workdir, log))
            CHILDREN.stop_all()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--viewers",
        type=counts,
        default=counts("10,50,100,200"),
        help="viewer counts for the studycast relay, comma-separated ('' for none)",
    )
    parser.add_argument(
        "--stock-viewers",
        type=counts,
        default=counts("10"),
        help="viewer counts for aiortc's MediaRelay (10; '' for none)",
    )
    parser.add_argument(
        "--norec-viewers",
        type=counts,
        default=counts(""),
        help="viewer counts for the studycast relay with recording off ('' for none; e.g. 50 "
        "beside --viewers 50 prices the recorder)",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window (20)")
    parser.add_argument("--procs", type=int, default=3, help="viewer processes (3)")
    parser.add_argument("--gop", type=float, default=2.0, help="keyframe interval of the clip (2)")
    parser.add_argument(
        "--size", type=size, default=(WIDTH, HEIGHT), help="clip picture size (640x480)"
    )
    parser.add_argument(
        "--load-nice",
        type=int,
        default=10,
        help="nice value of the viewer processes, 0..19 (10: the relay under test comes first)",
    )
    parser.add_argument("--budget", type=float, default=900.0, help="whole run, seconds (900)")
    parser.add_argument("--json", help="also write every raw figure to this file")
    parser.add_argument("--keep-logs", help="directory for the child processes' logs")
    parser.add_argument("--profile-dir", help="py-spy the studycast relay in each window")
    # Internal: the publisher and viewer processes are this script too.
    parser.add_argument(
        "--role", default="bench", choices=["bench", "publisher", "viewers"], help=argparse.SUPPRESS
    )
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--lifetime", type=float, default=600.0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--watch", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--ramp", type=float, default=RAMP_PER_SECOND, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role == "publisher":
        asyncio.run(publisher_role(args.url, args.lifetime, args.gop, args.size))
        return
    if args.role == "viewers":
        viewers_role(args.url, args.count, args.watch, args.ramp)
        return

    if not 5 <= args.seconds <= 300:
        parser.error("--seconds must be 5..300")
    if not 1 <= args.procs <= 16:
        parser.error("--procs must be 1..16")
    if not 0.5 <= args.gop <= 20:
        parser.error("--gop must be 0.5..20 seconds")
    if not 0 <= args.load_nice <= 19:
        parser.error("--load-nice must be 0..19")
    if not 60 <= args.budget <= 7200:
        parser.error("--budget must be 60..7200 seconds")
    from server.relay.ice import advertise_addresses

    advertise_addresses([ICE_ADDRESS])

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    print(
        f"relay benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: nproc {os.cpu_count()}, "
        f"Python {platform.python_version()}, load average {loadavg()}",
        flush=True,
    )
    print("command: " + shlex.join([".venv/bin/python", "bench/bench_relay.py", *sys.argv[1:]]))
    try:
        results = asyncio.run(bench(args))
    except KeyboardInterrupt:
        print("interrupted: stopping every child process", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        CHILDREN.stop_all()
    print()
    print("\n".join(table(results)))
    print()
    for line in notes(results):
        print("- " + line)
    print()
    for line in verdict(results):
        print(line)
    for r in results:
        profile = r.get("profile")
        if profile and profile.get("samples"):
            print(f"\npy-spy, {r['relay']} N={r['viewers']}: {profile['samples']} samples")
            print("  self:")
            for name, share in profile["self"]:
                print(f"    {share:5.1f} %  {name}")
            print("  inclusive:")
            for name, share in profile["inclusive"]:
                print(f"    {share:5.1f} %  {name}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        print(f"\nraw figures: {args.json}")
    print(f"load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
