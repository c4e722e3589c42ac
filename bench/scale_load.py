"""The load of ``bench_scale.py``: processes of header-counting viewers that join a relay in
steps on a shared plan and print, per step, every viewer's frame rate over the step's counting
window (one ``STEP`` JSON line each). ``LoadProcesses`` starts and reads them; each one is this
script, run as ``python bench/scale_load.py --urls URL[,URL] --plan JSON``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _path in (str(REPO), str(BENCH)):  # run as a script from anywhere
    if _path not in sys.path:
        sys.path.insert(0, _path)

from children import (  # noqa: E402 (after the path set-up)
    CHILDREN,
    ICE_ADDRESS,
    TOKEN_ENV,
    BenchError,
    Children,
    child_env,
    tail,
    wait_until,
)

REQUEST_TIMEOUT = 10.0
CLOSE_TIMEOUT_S = 20.0
MIN_WINDOW_S = 4.0  # the shortest counting window of a step
KERNEL_SWEEP_S = 0.5  # between sweeps when the kernel counts the frames


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
        # Only RTCP and STUN reach the sockets now (a few datagrams per second per viewer):
        # visiting each one 10 times a second cost the load most of its CPU.
        Sweep.shared().interval = KERNEL_SWEEP_S

    def snapshot() -> tuple[float, float, list[int], int, int]:
        """(when the counts are of, how long reading them took, frames per viewer, lost and
        expected video packets). The counts are as of some moment while they were read, so the
        midpoint is their time; a load process starved of CPU reads slowly, and timing the
        counts after the read (as this did before 2026-12-07) made windows look longer than the
        frames in them: 125 frames in 4.25 s counted over 4.43 s is 28.2 fps, not 30."""
        before = time.monotonic()
        Sweep.shared().sweep(limit=None)  # header viewers: counts up to now, not the last sweep
        after = time.monotonic()
        if tally is not None:
            tally.refresh()
            assert tally.read_between is not None
            before, after = tally.read_between  # the kernel's counts: listed in between
        counts = [video(v) for v in crowd]
        lost = sum(c[1] for c in counts)
        expected = sum(c[2] for c in counts)
        return (before + after) / 2, after - before, [c[0] for c in counts], lost, expected

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
                t_a, read_a, frames_a, lost_a, expected_a = snapshot()
                if await _sleep_until(closes, stop):
                    break
                t_b, read_b, frames_b, lost_b, expected_b = snapshot()
                seconds = t_b - t_a
                fps = [
                    round((b - a) / seconds, 2) if crowd[i].answered_at is not None else 0.0
                    for i, (a, b) in enumerate(zip(frames_a, frames_b, strict=False))
                ]
                errors = collections.Counter(v.error for v in crowd if v.error)
                record = {
                    "step": step,
                    "window": [round(t_a, 3), round(t_b, 3)],
                    "read_s": [round(read_a, 3), round(read_b, 3)],
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
            argv = [sys.executable, str(Path(__file__).resolve())]
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
            # The longest any process took to read its counts (the window's uncertainty x 2).
            "read_s": max((max(r.get("read_s") or [0.0]) for r in records), default=0.0),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--urls", required=True, help="WHEP URLs, comma-separated")
    parser.add_argument("--plan", required=True, help="a LoadPlan as JSON")
    args = parser.parse_args()
    asyncio.run(load_role(args.urls.split(","), LoadPlan(**json.loads(args.plan))))


if __name__ == "__main__":
    main()
