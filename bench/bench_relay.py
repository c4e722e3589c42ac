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
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from children import (
    CHILDREN,
    ICE_ADDRESS,
    REPO,
    TOKEN_ENV,
    BenchError,
    Children,
    child_env,
    tail,
)
from clip_publisher import (
    BITRATE,
    CLIP_SECONDS,
    FPS,
    HEIGHT,
    WIDTH,
    Publisher,
    publisher_role,
)
from procfs import (
    cpu_seconds,
    kernel_seconds,
    loadavg,
    machine_ticks,
    rss_bytes,
    udp_drops,
    udp_errors,
)
from profiling import finish_profiler, start_profiler
from relay_report import notes, table, verdict
from relays import CODEC, Relay, StockRelay, StudycastRelay, UnrecordedRelay

if str(REPO) not in sys.path:  # run as a script from anywhere: the repository's packages
    sys.path.insert(0, str(REPO))

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
MAX_RELAY_RSS = 4 << 30  # a relay past this is stopped (the stock relay queues frames unbounded)


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
