"""Scale benchmark (issue 9): viewers served by ``serve --workers 2`` against ``--workers 1``, and
what an edge costs its origin against what a viewer costs it.

1. **Capacity.** For W in (1, 2), in the same run: a fresh PostgreSQL database, ``studycast
   serve --workers W --demo`` on a free 127.0.0.1 port, the demo session switched to VP8, a paced
   pre-encoded 640x480 30 fps VP8 + Opus clip published over WHIP (``clip_publisher``'s publisher
   process), then load viewers added in steps (``--start``, then ``--step`` more every
   ``--interval`` seconds). In each step the new viewers join over the first seconds, and every
   viewer's video frames are counted over a window at the end of the step. A step is served when
   at least ``--served-share`` of its viewers got >= 95 % of the 30 fps; the run ends at
   ``--misses`` (1) + 1 failed steps in a row (a step failing alone is measured again by the
   next, larger one, unless that one's viewers got over 105 % of the frame rate: a saturated
   relay draining its backlog; the host's speed moves within seconds here), and capacity(W) is
   the largest served step before that. A second capacity, *keeping up*, also fails a step
   that ends with the relay over a second behind live on a socket (``scale_rules``: its deepest
   UDP receive queue, printed per step as the relay backlog). A viewer's frame rate is its
   frames over the time between the two readings of its count, each timed at the middle of the
   read (``scale_load.py``). Beside each step: the publisher's own frame rate in the window and
   each relay process's event-loop stalls (its ``/metrics``), so a failed step says whether the
   source, a stalled relay process or a relay out of CPU failed it. Every load viewer POSTs over
   its own TCP connection, so ``SO_REUSEPORT`` spreads them over the workers; the spread is read
   from ``GET /api/nodes`` (the demo organiser's login) and printed.
2. **Origin CPU per edge against per viewer.** An origin (``--workers 1``) with the broadcaster
   only (a), with K ``CountingViewer``s in one load process (b: aiortc's receiver reports, like
   a browser), with K ``CountingViewer``s in K load processes, one each (v), and with K edges
   (``serve --origin URL --node-token T --workers 1``, one ``CountingViewer`` each, so each edge
   pulls the session) instead of the viewers (c); the origin's CPU is read over two windows of
   each. Per viewer = (b - a) / K or (v - a) / K, per edge = (c - a) / K. On loopback the sender
   pays for waking the receiving process inside ``sendto``; an edge is a process of its own, so
   (v), a process per viewer, is the like-for-like comparison and (b) shows what that costs.

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

The parts: ``scale_server.py`` (the database, the server, the organiser's login),
``scale_load.py`` (the load processes), ``scale_sample.py`` (CPU, drops and loop lag read off
the machine), ``scale_report.py`` (the tables).

Before each measurement the script waits (at most ``--quiet-wait`` seconds) for the 1-minute
load average to fall below ``--quiet-load`` and prints it. Every child process is stopped at the
end (Ctrl-C and SIGTERM too, and by the kernel if the script dies); every wait has a limit.

    .venv/bin/python bench/bench_scale.py --postgres postgresql://127.0.0.1:5432/test
        [--start 150] [--step 30] [--interval 8] [--max-viewers 1500] [--edges 3] [--window 20]
        [--misses 1] [--procs 1] [--load-nice 10] [--count auto|kernel|sweep]
        [--quiet-load 0.7] [--quiet-wait 600] [--json FILE]
        [--keep-logs DIR] [--workers 1,2] [--skip-capacity] [--skip-edges] [--behind-kb N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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

from children import CHILDREN, STUDYCAST, BenchError, wait_until  # noqa: E402
from clip_publisher import FPS, Publisher  # noqa: E402
from core_scaling import core_scaling, describe  # noqa: E402
from procfs import loadavg  # noqa: E402
from scale_load import LoadPlan, LoadProcesses  # noqa: E402
from scale_report import (  # noqa: E402
    capacity_summary,
    capacity_table,
    edge_summary,
    fmt,
    lag_text,
)
from scale_rules import GOOD_FPS_SHARE, capacity, failing, one_miss  # noqa: E402
from scale_sample import (  # noqa: E402
    lag_window,
    metrics_urls,
    read_lags,
    take_sample,
    wait_quiet,
    window,
)
from scale_server import STARTUP_TIMEOUT_S, Organiser, Server, fresh_database, spread  # noqa: E402

from client import netfilter_tally  # noqa: E402 (after the path set-up)

SETTLE_S = 1.5  # after a step's joins, before its window opens
EDGE_SETTLE_S = 6.0  # an edge connects upstream on its first viewer
MAX_JOIN_RATE = 15.0  # viewers per second per step, over all load processes
LOAD_START_S = 12.0  # a load process imports aiortc and av before its first viewer
CLIP_SIZE = (640, 480)
GOP_S = 2.0


# --- 1. capacity -----------------------------------------------------------------------------


async def start_origin(
    workdir: Path,
    name: str,
    db_url: str,
    workers: int,
    http: aiohttp.ClientSession,
    settings: dict[str, str] | None = None,
) -> tuple[Server, Organiser, dict[str, Any], Publisher]:
    """An origin with the demo, logged in, its session on VP8, the publisher started (call
    ``publisher.connected()`` before measuring)."""
    server = Server(workdir, name, db_url, workers, demo=True, settings=settings)
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
        settings = {} if args.behind_kb is None else {"STUDYCAST_BEHIND_KB": str(args.behind_kb)}
        server, organiser, links, publisher = await start_origin(
            rundir, f"origin-{tag}", db_url, workers, http, settings
        )
        try:
            start = start_for(args, workers)
            steps = max(1, 1 + (args.max_viewers - start) // args.step)
            plan = LoadPlan(
                t0=time.monotonic() + LOAD_START_S,  # the load processes import aiortc first
                counts=[start] + [args.step] * (steps - 1),
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
                urls = metrics_urls(relay_pids, server.base_url)
                s0 = take_sample(relay_pids, load.pids, publisher.pid)
                lags0, p0 = await asyncio.gather(read_lags(http, urls), publisher.mark())
                await asyncio.sleep(max(0.0, closes - time.monotonic()))
                s1 = take_sample(relay_pids, load.pids, publisher.pid)
                lags1, p1 = await asyncio.gather(read_lags(http, urls), publisher.mark())
                merged = await load.wait_step(step, 15.0)
                row = step_row(total, merged, window(s0, s1), args)
                row["loop_lag"] = lag_window(lags0, lags1)
                row["published_fps"] = published_fps(p0, p1)
                row["read_s"] = merged["read_s"]
                if step % 3 == 0 or not row["served"]:
                    row["nodes"] = spread(await organiser.nodes())
                result["steps"].append(row)
                log(
                    f"  W={workers} {total} viewers: {row['served_viewers']}/{total} served "
                    f"({row['served_share_pct']} %), fps median {row['fps_median']}, relay "
                    f"{row['relay_cpu_pct']} % ({row['relay_ms_per_viewer_s']} ms/viewer-s), "
                    f"load {row['load_cpu_pct']} % ({row['load_ms_per_viewer_s']} ms/viewer-s), "
                    f"machine {row['machine_busy_pct']} %, drops relay/load "
                    f"{row['udp_drops_relay']}/{row['udp_drops_load']}, relay backlog "
                    f"{row['relay_backlog_kb'][-1]} KB"
                    + f", published {fmt(row['published_fps'])} fps, loop lag "
                    + lag_text(row["loop_lag"])
                    + f", counts read in {row['read_s']} s"
                    + (f", errors {row['errors']}" if row["errors"] else "")
                    + (f"; others: {', '.join(row['others_top'])}" if row["others_top"] else "")
                )
                if failing(result["steps"])[-1] and not one_miss(result["steps"], args.misses):
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
    by_rate = capacity(result["steps"], args.misses, keeping_up=False)
    result["capacity"] = by_rate["viewers"]
    result["capacity_is_lower_bound"] = by_rate["is_lower_bound"]
    result["missed_alone"] = by_rate["missed_alone"]
    result["at_capacity"] = by_rate["at"]
    result["keeping_up"] = capacity(result["steps"], args.misses, keeping_up=True)
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def published_fps(p0: dict[str, Any] | None, p1: dict[str, Any] | None) -> float | None:
    """The publisher's video frame rate between two marks (None if it did not answer)."""
    if not p0 or not p1 or p1["t"] <= p0["t"]:
        return None
    return round((p1["video_frames"] - p0["video_frames"]) / (p1["t"] - p0["t"]), 2)


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
            plan_v = plan(plan_b.end() + 3.0, 3.0)
            plan_v.interval = plan_v.join_s(0) + plan_v.settle + 2 * w + 0.75
            plan_c = plan(plan_v.end() + 3.0, EDGE_SETTLE_S)
            plan_c.interval = plan_c.join_s(0) + plan_c.settle + 2 * w + 0.75
            sid = links["id"]
            for tag, urls, p, procs in (
                ("viewers", [links["whep_url"]], plan_b, 1),
                ("viewers-apart", [links["whep_url"]], plan_v, k),
                ("edge-viewers", [f"{edge.base_url}/whep/{sid}" for edge in edges], plan_c, 1),
            ):
                loads.append(
                    LoadProcesses.start(
                        rundir, tag, urls, links["whep_token"], p, procs=procs, nice=args.load_nice
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
            await measure("v", plan_v.window(0)[0])
            result["fps"]["v"] = (await loads[1].wait_step(0, 15.0))["fps"]
            await measure("c", plan_c.window(0)[0])
            result["fps"]["c"] = (await loads[2].wait_step(0, 15.0))["fps"]
            log(f"  fps of the viewers: {json.dumps(result['fps'])}")
        finally:
            for load in loads:
                await load.stop()
            for edge in edges:
                edge.stop()
            publisher.stop()
            origin.stop()
            await organiser.close()
    got = result["windows"]
    per_viewer, per_viewer_apart, per_edge = [], [], []
    for run in (1, 2):
        if all(f"{x}{run}" in got for x in "abvc"):
            a = got[f"a{run}"]["relay_cpu_pct"]
            per_viewer.append(round((got[f"b{run}"]["relay_cpu_pct"] - a) / k, 2))
            per_viewer_apart.append(round((got[f"v{run}"]["relay_cpu_pct"] - a) / k, 2))
            per_edge.append(round((got[f"c{run}"]["relay_cpu_pct"] - a) / k, 2))
    result["per_viewer_pct"] = per_viewer
    result["per_viewer_apart_pct"] = per_viewer_apart
    result["per_edge_pct"] = per_edge
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


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


def parse_start(text: str) -> dict[int, int]:
    """``--start``: "150" (every W; key 0) or "1=360,2=660" (per W)."""
    try:
        if "=" not in text:
            return {0: int(text)}
        pairs = (item.split("=", 1) for item in text.split(","))
        return {int(w): int(n) for w, n in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"not N or W=N[,W=N]: {text!r}") from None


def start_for(args: argparse.Namespace, workers: int) -> int:
    starts: dict[int, int] = args.start
    if workers in starts:
        return starts[workers]
    if 0 in starts:
        return starts[0]
    raise BenchError(f"--start names no first step for --workers {workers}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", help="server URL; a fresh database is made per run")
    parser.add_argument(
        "--workers",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[1, 2],
        help="worker counts to measure, in order (1,2)",
    )
    parser.add_argument(
        "--start",
        type=parse_start,
        default={0: 150},
        help="viewers in the first step: N for every W, or per W as 1=360,2=660 (150); a start "
        "near each capacity makes the halves short, so the host's speed drifts less within one",
    )
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
        "--misses",
        type=int,
        default=1,
        help="failed steps in a row that a run goes on after, to see whether the next step is "
        "served (a transient; not if its viewers got > 105 %% of the frame rate: a drained "
        "backlog); capacity is the largest served step before more (1)",
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
    parser.add_argument(
        "--behind-kb",
        type=int,
        help="STUDYCAST_BEHIND_KB of the capacity runs' server (unset: its default; 0: off)",
    )
    parser.add_argument("--json", help="also write every raw figure to this file")
    parser.add_argument("--keep-logs", help="directory for the child processes' logs")
    args = parser.parse_args()

    if not args.postgres:
        parser.error("--postgres is needed: more than one worker shares PostgreSQL")
    try:
        starts = [start_for(args, w) for w in args.workers]
    except BenchError as exc:
        parser.error(str(exc))
    if not (all(1 <= n <= args.max_viewers for n in starts) and 1 <= args.step <= 500):
        parser.error("--start 1..--max-viewers for every W measured, --step 1..500")
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
    if not 0 <= args.misses <= 3:
        parser.error("--misses 0..3")
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
        "capacity": [(r["workers"], r.get("capacity")) for r in out["capacity"]],
        "capacity_keeping_up": [
            (r["workers"], (r.get("keeping_up") or {}).get("viewers")) for r in out["capacity"]
        ],
        "edges": None
        if not edges or edges.get("failed")
        else {
            key: edges[key] for key in ("per_viewer_pct", "per_viewer_apart_pct", "per_edge_pct")
        },
        "wall_s": out["wall_s"],
    }
    print("\nJSON " + json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"raw figures: {args.json}")
    print(f"load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
