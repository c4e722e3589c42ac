"""WHEP load testing: many cheap viewers that count frames instead of decoding them.

A full aiortc viewer (jitter buffer, decoder thread) costs about as much CPU as the relay spends
on it, so it cannot measure a relay. ``CountingViewer`` replaces each receiver's
``_handle_rtp_packet`` (where aiortc's DTLS transport delivers every decrypted RTP packet) with
a ``client.stream_counter.StreamCounter`` that reads only a few header bytes: packets, bytes,
frames, keyframes, sequence gaps. To stay alive for the relay it still feeds the receiver's own
RTCP statistics (``StreamStatistics`` in ``_RTCRtpReceiver__remote_streams``) with every media
packet, so aiortc's RTCP task keeps sending accurate receiver reports; it sends no NACK, PLI or
REMB, and the receiver's idle decoder thread is stopped.

``client.header_viewer.HeaderCountingViewer`` is cheaper still, for loading a relay from the
machine it runs on: it counts frames from the RTP headers SRTP leaves in clear, decrypting
nothing.

``run_loadtest`` spreads viewers over spawned processes, ramps them up, watches, closes them
(DELETE on the resource, then the peer) and returns a JSON-ready summary. A viewer that a full
node or one behind live refuses (503 with ``Retry-After``) tries again after that delay, as the
pages and ``studycast watch`` do, while the test lasts; the summary counts those refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.queues
import queue
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from attendance.errors import InvalidInput
from client.publisher import (
    DEFAULT_REQUEST_TIMEOUT,
    MAX_RETRY_AFTER_S,
    SignallingError,
    delete_resource,
    post_offer,
)
from client.stream_counter import COUNTS, StreamCounter, install_counter, payload_codecs
from server.relay.ice import advertise_addresses, check_addresses, rtc_configuration

MAX_VIEWERS = 2000
MAX_SECONDS = 3600
MAX_PROCS = 32
DEFAULT_RAMP_PER_SECOND = 20.0
SPAWN_ALLOWANCE = 30.0  # a spawned process imports aiortc and av before its first viewer
CLOSE_ALLOWANCE = 20.0
MIN_RETRY_S = 1.0  # between a refused offer and the next, whatever the server asked

Sleep = Callable[[float], Awaitable[None]]

# --- one viewer -----------------------------------------------------------------------------


class CountingViewer:
    """A recvonly WHEP viewer (audio + video) that counts what arrives; ``close()`` ends it."""

    def __init__(
        self,
        whep_url: str,
        token: str,
        *,
        http: aiohttp.ClientSession,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.whep_url = whep_url
        self.audio = StreamCounter("audio", clock)
        self.video = StreamCounter("video", clock)
        self.pc: RTCPeerConnection | None = None
        self.resource_url: str | None = None
        self.posted_at: float | None = None
        self.answered_at: float | None = None
        self.stopped_at: float | None = None
        self.error: str | None = None
        self.close_error: str | None = None
        self.refusals = 0  # offers refused with a Retry-After before this viewer joined
        self.waited_s = 0.0  # how long it waited for them
        self._token = token
        self._http = http
        self._request_timeout = request_timeout
        self._clock = clock
        self._closing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Offer, POST, apply the answer; media then flows into the counters."""
        if self.pc is not None:
            raise RuntimeError("a viewer starts once")
        pc = self.pc = RTCPeerConnection(configuration=rtc_configuration())
        for counter in (self.audio, self.video):
            transceiver = pc.addTransceiver(counter.kind, direction="recvonly")
            install_counter(transceiver.receiver, counter)
        await pc.setLocalDescription(await pc.createOffer())
        self.posted_at = self._clock()
        answer, self.resource_url = await post_offer(
            self._http,
            self.whep_url,
            self._token,
            pc.localDescription.sdp,
            request_timeout=self._request_timeout,
        )
        self.answered_at = self._clock()
        codecs = payload_codecs(answer)
        self.audio.codecs, self.video.codecs = codecs["audio"], codecs["video"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def refused(self, wait: float) -> None:
        """The last offer was refused, to be tried again in ``wait`` seconds: its peer is closed
        and a later ``start()`` begins afresh."""
        self.refusals += 1
        self.waited_s += wait
        pc, self.pc, self.posted_at = self.pc, None, None
        if pc is not None:
            await pc.close()

    async def close(self) -> None:
        """DELETE the WHEP resource (if we got one) and close the peer; idempotent."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self.stop_counting()
        try:
            if self.resource_url is not None:
                await delete_resource(
                    self._http,
                    self.resource_url,
                    self._token,
                    request_timeout=self._request_timeout,
                )
        except SignallingError as exc:
            self.close_error = str(exc)
        finally:
            if self.pc is not None:
                await self.pc.close()

    def closed_cleanly(self) -> bool:
        """Whether ``close()`` ran to its end."""
        closing = self._closing
        return closing is not None and closing.done() and not closing.cancelled()

    def stop_counting(self) -> None:
        """Fix the end of the measured interval (the counters may still tick after it)."""
        if self.stopped_at is None:
            self.stopped_at = self._clock()

    def result(self) -> dict[str, Any]:
        """This viewer's numbers, JSON-ready; times in milliseconds from the POST."""
        end = self.stopped_at if self.stopped_at is not None else self._clock()
        first = self.video.first_packet_at
        watched = end - first if first is not None else 0.0
        return {
            "joined": self.answered_at is not None,
            "error": self.error,
            "refusals": self.refusals,
            "waited_seconds": round(self.waited_s, 3),
            "close_error": self.close_error,
            "connection": self.pc.connectionState if self.pc is not None else "new",
            "answer_ms": _ms(self.posted_at, self.answered_at),
            "first_keyframe_ms": _ms(self.posted_at, self.video.first_keyframe_at),
            "first_frame_keyframe": self.video.first_frame_keyframe,
            "watched_seconds": round(watched, 3),
            "fps": round(self.video.frames / watched, 2) if watched > 0 else 0.0,
            "video_kbps": round(self.video.bytes * 8 / watched / 1000, 1) if watched > 0 else 0.0,
            "video": self.video.as_dict(),
            "audio": self.audio.as_dict(),
        }


def _ms(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round((end - start) * 1000, 1)


# --- many viewers in one process ------------------------------------------------------------


async def watch(
    whep_url: str,
    token: str,
    viewers: int,
    seconds: float,
    *,
    ramp_per_second: float = DEFAULT_RAMP_PER_SECOND,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[dict[str, Any]]:
    """Run ``viewers`` counting viewers here: join at the ramp rate, watch ``seconds`` after the
    ramp, close them all. Returns each viewer's ``result()``. ``sleep`` is how a refused viewer
    waits out the server's ``Retry-After``; ``clock`` times the test and the viewers."""
    started = clock()
    ramp = viewers / ramp_per_second
    until = started + ramp + seconds
    joins: list[asyncio.Task[None]] = []
    crowd: list[CountingViewer] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            for i in range(viewers):
                await asyncio.sleep(max(0.0, started + i / ramp_per_second - clock()))
                viewer = CountingViewer(
                    whep_url, token, http=http, request_timeout=request_timeout, clock=clock
                )
                crowd.append(viewer)
                joins.append(
                    asyncio.create_task(_join(viewer, until=until, sleep=sleep, clock=clock))
                )
            # The clock is read again each second (a test's clock jumps over refusal waits).
            while (left := until - clock()) > 0:  # noqa: ASYNC110 (nothing to wait on but time)
                await asyncio.sleep(min(left, 1.0))
            for viewer, join in zip(crowd, joins, strict=True):
                viewer.stop_counting()
                if not join.done():
                    viewer.error = "still joining when the test ended"
            results = [viewer.result() for viewer in crowd]
        finally:
            for join in joins:
                join.cancel()
            await asyncio.gather(*joins, return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(request_timeout + CLOSE_ALLOWANCE):
                    await asyncio.gather(*(v.close() for v in crowd), return_exceptions=True)
    for result, viewer in zip(results, crowd, strict=True):
        result["close_error"] = viewer.close_error or (
            None if viewer.closed_cleanly() else "close did not finish"
        )
    return results


async def _join(
    viewer: CountingViewer, *, until: float, sleep: Sleep, clock: Callable[[], float]
) -> None:
    """Start ``viewer``; after a refusal with a ``Retry-After`` (a full node, one behind live)
    wait that long, at most ``MAX_RETRY_AFTER_S``, and offer again, unless the wait would end
    after ``until`` (the end of the test)."""
    while True:
        try:
            await viewer.start()
            return
        except SignallingError as exc:
            wait = retry_wait(exc)
            if wait is None or clock() + wait >= until:
                viewer.error = str(exc)
                return
            await viewer.refused(wait)
            await sleep(wait)
        except Exception as exc:  # one broken viewer must not end the test
            viewer.error = f"{type(exc).__name__}: {exc}"
            return


def retry_wait(exc: SignallingError) -> float | None:
    """How long to wait before offering again after ``exc``; None: do not try again. Only a
    503 that says when (``Retry-After``) is worth waiting for: anything else is a real error.
    At least ``MIN_RETRY_S``: a "Retry-After: 0" must not make a viewer offer in a busy loop."""
    if exc.status != 503 or exc.retry_after is None:
        return None
    return max(MIN_RETRY_S, min(exc.retry_after, MAX_RETRY_AFTER_S))


# --- many processes -------------------------------------------------------------------------


@dataclass(frozen=True)
class _WorkerSpec:
    index: int
    whep_url: str
    token: str
    viewers: int
    seconds: float
    ramp_per_second: float
    request_timeout: float
    ice_addresses: tuple[str, ...] | None


def _worker_main(spec: _WorkerSpec, results: multiprocessing.queues.Queue[dict[str, Any]]) -> None:
    """Entry point of a spawned load process: its share of viewers, reported on ``results``."""
    try:
        if spec.ice_addresses is not None:
            advertise_addresses(spec.ice_addresses)
        viewers = asyncio.run(
            watch(
                spec.whep_url,
                spec.token,
                spec.viewers,
                spec.seconds,
                ramp_per_second=spec.ramp_per_second,
                request_timeout=spec.request_timeout,
            )
        )
        results.put({"worker": spec.index, "viewers": viewers})
    except BaseException as exc:
        error = f"load process failed: {type(exc).__name__}: {exc}"
        results.put({"worker": spec.index, "error": error, "viewers_lost": spec.viewers})


def check_limits(viewers: int, seconds: float, procs: int) -> None:
    if not 1 <= viewers <= MAX_VIEWERS:
        raise InvalidInput(f"viewers must be 1..{MAX_VIEWERS}")
    if not 1 <= seconds <= MAX_SECONDS:
        raise InvalidInput(f"seconds must be 1..{MAX_SECONDS}")
    if not 1 <= procs <= MAX_PROCS:
        raise InvalidInput(f"procs must be 1..{MAX_PROCS}")


async def run_loadtest(
    whep_url: str,
    token: str,
    viewers: int,
    seconds: float,
    procs: int = 1,
    *,
    ramp_per_second: float = DEFAULT_RAMP_PER_SECOND,
    ice_addresses: Sequence[str] | None = ("127.0.0.1",),
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
) -> dict[str, Any]:
    """Watch ``whep_url`` with ``viewers`` counting viewers spread over ``procs`` spawned
    processes; returns the JSON-ready summary (see ``summarise``).

    Viewers join at ``ramp_per_second`` in total, then all watch for ``seconds``; each process
    offers only ``ice_addresses`` as ICE host candidates (None: every interface). Processes are
    spawned, so a calling script needs the usual ``if __name__ == "__main__":`` guard.
    """
    check_limits(viewers, seconds, procs)
    if ramp_per_second <= 0:
        raise InvalidInput("the ramp must be positive")
    addresses = None if ice_addresses is None else tuple(check_addresses(ice_addresses))
    procs = min(procs, viewers)
    shares = [viewers // procs + (1 if i < viewers % procs else 0) for i in range(procs)]
    specs = [
        _WorkerSpec(
            i, whep_url, token, n, seconds, ramp_per_second / procs, request_timeout, addresses
        )
        for i, n in enumerate(shares)
    ]
    budget = (
        SPAWN_ALLOWANCE
        + max(shares) * procs / ramp_per_second
        + seconds
        + 2 * request_timeout
        + CLOSE_ALLOWANCE
    )
    started = time.monotonic()
    reports = await _run_workers(specs, deadline=started + budget)
    return summarise(
        reports,
        whep_url=whep_url,
        requested=viewers,
        seconds=seconds,
        procs=procs,
        wall_seconds=time.monotonic() - started,
    )


async def _run_workers(specs: list[_WorkerSpec], *, deadline: float) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.queues.Queue[dict[str, Any]] = ctx.Queue()
    processes = [
        ctx.Process(
            target=_worker_main,
            args=(spec, results),
            name=f"studycast-loadtest-{spec.index}",
            daemon=True,
        )
        for spec in specs
    ]
    reports: dict[int, dict[str, Any]] = {}
    try:
        for process in processes:
            process.start()
        while len(reports) < len(specs) and time.monotonic() < deadline:
            try:
                report = await asyncio.to_thread(results.get, True, 0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in processes) and results.empty():
                    break
                continue
            reports[report["worker"]] = report
    finally:
        # Finished workers exit by themselves; late or abandoned ones are stopped at once.
        for spec, process in zip(specs, processes, strict=True):
            if process.pid is None:
                continue
            if spec.index in reports:
                await asyncio.to_thread(process.join, 5.0)
            if process.is_alive():
                process.terminate()
                await asyncio.to_thread(process.join, 5.0)
        results.close()
    for spec, process in zip(specs, processes, strict=True):
        if spec.index not in reports:
            why = "timed out" if process.exitcode is None or process.exitcode < 0 else "crashed"
            reports[spec.index] = {
                "worker": spec.index,
                "error": f"load process {why} (exit code {process.exitcode})",
                "viewers_lost": spec.viewers,
            }
    return [reports[spec.index] for spec in specs]


# --- the summary (pure) ---------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def summarise(
    reports: Sequence[dict[str, Any]],
    *,
    whep_url: str,
    requested: int,
    seconds: float,
    procs: int,
    wall_seconds: float,
) -> dict[str, Any]:
    """Fold the workers' per-viewer results into one report."""
    errors: Counter[str] = Counter()
    results: list[dict[str, Any]] = []
    for report in reports:
        if "error" in report:
            errors[report["error"]] += max(1, int(report.get("viewers_lost", 1)))
        results.extend(report.get("viewers", ()))
    joined = [r for r in results if r["joined"]]
    for r in results:
        if r["error"]:
            errors[r["error"]] += 1
        if r["close_error"]:
            errors[f"close: {r['close_error']}"] += 1
    for r in joined:
        if r["video"]["packets"] == 0:
            errors[f"no video received (connection {r['connection']})"] += 1
    fps = [float(r["fps"]) for r in joined]
    keyframe_ms = [float(r["first_keyframe_ms"]) for r in joined if r["first_keyframe_ms"]]
    answer_ms = [float(r["answer_ms"]) for r in joined if r["answer_ms"] is not None]
    first_frames = [
        r["first_frame_keyframe"] for r in joined if r["first_frame_keyframe"] is not None
    ]
    totals = {
        kind: {key: sum(int(r[kind][key]) for r in results) for key in COUNTS}
        for kind in ("video", "audio")
    }
    loss = {
        kind: round(100 * t["lost"] / t["expected"], 3) if t["expected"] else None
        for kind, t in totals.items()
    }
    return {
        "whep_url": whep_url,
        "viewers_requested": requested,
        "viewers_joined": len(joined),
        "viewers_with_video": sum(1 for r in joined if r["video"]["frames"] > 0),
        # Offers a full or lagging node refused with a Retry-After, and the viewers that joined
        # after waiting them out.
        "refusals": sum(int(r["refusals"]) for r in results),
        "viewers_joined_after_refusal": sum(1 for r in joined if r["refusals"]),
        "procs": procs,
        "seconds": seconds,
        "wall_seconds": round(wall_seconds, 2),
        "errors": dict(errors.most_common()),
        "fps_per_viewer": {
            "median": round(statistics.median(fps), 2) if fps else None,
            "min": min(fps) if fps else None,
        },
        "first_keyframe_ms": {
            "p50": _percentile(keyframe_ms, 50),
            "p95": _percentile(keyframe_ms, 95),
            "max": max(keyframe_ms) if keyframe_ms else None,
        },
        "answer_ms": {"p50": _percentile(answer_ms, 50), "p95": _percentile(answer_ms, 95)},
        "first_frame_keyframe": {
            "yes": sum(1 for f in first_frames if f),
            "no": sum(1 for f in first_frames if not f),
        },
        "packet_loss_percent": loss,
        "totals": totals,
    }
