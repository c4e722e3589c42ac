"""What ``bench_scale.py`` reads off the machine while it measures: CPU of process trees and of
the whole machine (``/proc``), socket drops, the load average, and each relay worker's event-loop
lag (its ``/metrics``, on the worker's own port).

A window is two samples: CPU shares are the difference over the seconds between them, as are
the loop-lag counts (how often a worker's event loop woke 0.1 s or more late, and the largest
histogram bucket any lag fell into).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from procfs import cpu_seconds, loadavg, machine_ticks, udp_drops, udp_rows
from prometheus_client.parser import text_string_to_metric_families

from server.workers import PLAN_ENV, WorkerPlan

TICK = os.sysconf("SC_CLK_TCK")
LAG = "studycast_event_loop_lag_seconds"
STALLS = "studycast_event_loop_stalls"
REFUSED = "studycast_relay_viewers_refused_behind"
SHED = "studycast_relay_viewers_shed"


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


@dataclass
class Sample:
    t: float
    relay: dict[int, float]
    load: float
    publisher: float
    machine: tuple[int, int]
    relay_drops: int = 0
    load_drops: int = 0
    relay_backlog: int = 0
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
    relay_rows = udp_rows(relay_pids) if drops else []
    return Sample(
        t=t,
        relay=tree_cpu(relay_pids),
        load=sum(tree_cpu(load_pids).values()),
        publisher=(cpu_seconds(publisher_pid) or 0.0) if publisher_pid else 0.0,
        machine=machine_ticks(),
        relay_drops=sum(int(parts[12]) for parts in relay_rows),
        relay_backlog=deepest_queue(relay_rows),
        load_drops=udp_drops(load_pids) if drops else 0,
        extra=tree_cpu(list(extra_pids)),
        everyone=all_cpu(),
        known={*relay_pids, *load_pids, *extra_pids, os.getpid()}
        | ({publisher_pid} if publisher_pid else set()),
    )


def udp_backlog(pids: list[int]) -> int:
    """The deepest receive queue, in bytes of kernel memory, of the UDP sockets of ``pids``
    (``/proc/net/udp`` rx_queue): a relay that keeps up reads its broadcaster's (or its
    upstream's) socket as packets come; one that falls behind leaves them queued there."""
    return deepest_queue(udp_rows(pids))


def deepest_queue(rows: list[list[str]]) -> int:
    """The largest rx_queue (bytes) among ``/proc/net/udp`` rows."""
    return max((int(parts[4].split(":")[1], 16) for parts in rows), default=0)


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
        "relay_backlog_kb": [round(s0.relay_backlog / 1024), round(s1.relay_backlog / 1024)],
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


# --- event-loop lag of each relay process -----------------------------------------------------


def metrics_urls(pids: list[int], public_url: str) -> dict[int, str]:
    """pid → the ``/metrics`` URL of that relay process alone: each worker's private port (from
    its plan in its environment), or the public URL of a server without workers."""
    urls = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, KeyError):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            for item in environ:
                name, _, value = item.partition(b"=")
                if name.decode(errors="replace") == PLAN_ENV:
                    plan = WorkerPlan.from_env({PLAN_ENV: value.decode()})
                    if plan is not None:
                        # That worker alone (a worker's /metrics merges its siblings' too).
                        urls[pid] = plan.private_url(plan.index) + "/metrics?worker=self"
    if not urls and pids:
        urls[pids[0]] = public_url.rstrip("/") + "/metrics"
    return urls


@dataclass
class Lag:
    """One relay process's loop-lag histogram: cumulative counts by bucket bound, stalls, and
    the viewers it refused or closed because a source was behind live (``overload``)."""

    buckets: dict[float, float]
    stalls: float
    refused: float = 0.0
    shed: float = 0.0


def parse_lag(text: str) -> Lag:
    buckets: dict[float, float] = {}
    totals = {STALLS: 0.0, REFUSED: 0.0, SHED: 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == LAG + "_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.removesuffix("_total") in totals:
                totals[sample.name.removesuffix("_total")] += sample.value
    if not buckets:
        raise ValueError(f"no {LAG} histogram in the metrics")
    return Lag(buckets, totals[STALLS], totals[REFUSED], totals[SHED])


async def read_lags(http: aiohttp.ClientSession, urls: dict[int, str]) -> dict[int, Lag]:
    """Every process's lag now; a process that does not answer within 2 s is left out."""

    async def one(url: str) -> Lag | None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    return parse_lag(await r.text())
        return None

    found = await asyncio.gather(*(one(u) for u in urls.values()))
    return {pid: lag for pid, lag in zip(urls, found, strict=True) if lag is not None}


def lag_window(l0: dict[int, Lag], l1: dict[int, Lag]) -> dict[str, dict[str, Any]]:
    """pid → stalls (lags >= 0.1 s) in the window and the upper bound of its largest lag."""
    out = {}
    for pid, b in l1.items():
        a = l0.get(pid)
        if a is None:
            continue
        added = {le: n - a.buckets.get(le, 0.0) for le, n in b.buckets.items()}
        ticks = added.get(float("inf"), 0.0)
        # The smallest bucket bound that holds every lag of the window: the worst is below it.
        holding = [le for le, n in sorted(added.items()) if n >= ticks]
        out[str(pid)] = {
            "ticks": int(ticks),
            "stalls": int(b.stalls - a.stalls),
            # Since the process started: refusals come as viewers join, before the window.
            "refused": int(b.refused),
            "shed": int(b.shed),
            "worst_le": holding[0] if ticks and holding else None,
        }
    return out
