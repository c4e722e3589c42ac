"""WHEP load testing: many cheap viewers that count frames instead of decoding them.

A full aiortc viewer (jitter buffer, decoder thread) costs about as much CPU as the relay spends
on it, so it cannot measure a relay. ``CountingViewer`` replaces each receiver's
``_handle_rtp_packet`` (where aiortc's DTLS transport delivers every decrypted RTP packet) with
a ``StreamCounter`` that reads only a few header bytes: packets, bytes, frames, keyframes,
sequence gaps. To stay alive for the relay it still feeds the receiver's own RTCP statistics
(``StreamStatistics`` in ``_RTCRtpReceiver__remote_streams``) with every media packet, so
aiortc's RTCP task keeps sending accurate receiver reports; it sends no NACK, PLI or REMB, and
the receiver's idle decoder thread is stopped.

``client.header_viewer.HeaderCountingViewer`` is cheaper still, for loading a relay from the
machine it runs on: it counts frames from the RTP headers SRTP leaves in clear, decrypting
nothing.

``run_loadtest`` spreads viewers over spawned processes, ramps them up, watches, closes them
(DELETE on the resource, then the peer) and returns a JSON-ready summary.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtpPacket
from aiortc.sdp import SessionDescription

from attendance.errors import InvalidInput
from client.publisher import (
    CLOCK_RATES,
    DEFAULT_REQUEST_TIMEOUT,
    AiortcChanged,
    SignallingError,
    delete_resource,
    post_offer,
)
from server.relay.ice import advertise_addresses, check_addresses, rtc_configuration
from server.relay.keyframes import keyframe_start

MAX_VIEWERS = 2000
MAX_SECONDS = 3600
MAX_PROCS = 32
DEFAULT_RAMP_PER_SECOND = 20.0
SPAWN_ALLOWANCE = 30.0  # a spawned process imports aiortc and av before its first viewer
CLOSE_ALLOWANCE = 20.0
_MAX_TRACKED_MISSING = 2048
COUNTS = (  # what StreamCounter counts, by attribute name
    "packets",
    "bytes",
    "frames",
    "keyframes",
    "expected",
    "lost",
    "recovered",
    "duplicates",
    "retransmissions",
    "unknown_payload_type",
    "ssrc_changes",
)


# --- reading RTP payloads -------------------------------------------------------------------


def is_keyframe_start(codec: str, payload: bytes) -> bool:
    """Whether this RTP payload begins a keyframe (reads at most a few header bytes): the
    relay's own rule (``server.relay.keyframes``), so both sides agree on what a start is."""
    return keyframe_start(codec, payload)


def payload_codecs(answer_sdp: str) -> dict[str, dict[int, str]]:
    """Payload type → lower-case codec name, per media kind, from an SDP answer."""
    description = SessionDescription.parse(answer_sdp)
    codecs: dict[str, dict[int, str]] = {"audio": {}, "video": {}}
    for media in description.media:
        if media.kind in codecs:
            for codec in media.rtp.codecs:
                if codec.payloadType is not None:
                    codecs[media.kind][codec.payloadType] = codec.name.lower()
    return codecs


# --- counting -------------------------------------------------------------------------------


class StreamCounter:
    """What one viewer received of one kind: counts only, from RTP headers and payload starts.

    Frames: video frames end at a packet with the marker bit (counted once per RTP timestamp);
    every audio packet is a frame. Loss: gaps in the sequence numbers, minus packets that arrive
    late or as RTX retransmissions.
    """

    def __init__(self, kind: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.kind = kind
        self.codecs: dict[int, str] = {}
        self.packets = 0
        self.bytes = 0
        self.frames = 0
        self.keyframes = 0
        self.expected = 0
        self.lost = 0
        self.recovered = 0
        self.duplicates = 0
        self.retransmissions = 0
        self.unknown_payload_type = 0
        self.ssrc_changes = 0
        self.first_packet_at: float | None = None
        self.first_keyframe_at: float | None = None
        self.first_frame_keyframe: bool | None = None
        self._clock = clock
        self._ssrc: int | None = None
        self._last_seq = 0
        self._last_frame_ts: int | None = None
        self._last_key_ts: int | None = None
        self._missing: set[int] = set()

    def add(self, packet: RtpPacket) -> bool:
        """Count one packet; True if it is media (not RTX, known payload type)."""
        payload = packet.payload
        self.packets += 1
        self.bytes += len(payload)
        codec = self.codecs.get(packet.payload_type)
        if codec == "rtx":
            self.retransmissions += 1
            if len(payload) >= 2:
                self._late(((payload[0] << 8) | payload[1]), count_duplicate=False)
            return False
        if codec is None:
            self.unknown_payload_type += 1
            return False
        seq = packet.sequence_number
        if packet.ssrc != self._ssrc:
            if self._ssrc is not None:
                self.ssrc_changes += 1
            self._ssrc = packet.ssrc
            self._last_seq = (seq - 1) & 0xFFFF
            self._missing.clear()
        delta = (seq - self._last_seq) & 0xFFFF
        if delta == 0 or delta >= 0x8000:
            self._late(seq, count_duplicate=True)
            return True
        if delta > 1:
            self.lost += delta - 1
            if len(self._missing) + delta < _MAX_TRACKED_MISSING:
                self._missing.update((self._last_seq + i) & 0xFFFF for i in range(1, delta))
        self.expected += delta
        self._last_seq = seq
        if self.first_packet_at is None:
            self.first_packet_at = self._clock()
            if self.kind == "video":
                self.first_frame_keyframe = is_keyframe_start(codec, payload)
        if self.kind == "video":
            if packet.marker and packet.timestamp != self._last_frame_ts:
                self._last_frame_ts = packet.timestamp
                self.frames += 1
            if packet.timestamp != self._last_key_ts and is_keyframe_start(codec, payload):
                self._last_key_ts = packet.timestamp
                self.keyframes += 1
                if self.first_keyframe_at is None:
                    self.first_keyframe_at = self._clock()
        elif packet.timestamp != self._last_frame_ts:
            self._last_frame_ts = packet.timestamp
            self.frames += 1
        return True

    def _late(self, seq: int, *, count_duplicate: bool) -> None:
        if seq in self._missing:
            self._missing.discard(seq)
            self.lost -= 1
            self.recovered += 1
        elif count_duplicate:
            self.duplicates += 1

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTS}


def install_counter(receiver: RTCRtpReceiver, counter: StreamCounter) -> None:
    """Count this receiver's RTP instead of depacketising and decoding it.

    Must run after the transceiver exists and before media flows. The receiver's RTCP task
    keeps sending receiver reports because we feed its per-SSRC ``StreamStatistics``. Its idle
    decoder thread (started by ``receive()``, before the first packet can reach us) is stopped
    at the first packet, so a thousand viewers do not hold two thousand threads.
    """
    for name in ("_handle_rtp_packet", "_handle_disconnect"):
        if not callable(getattr(receiver, name, None)):
            raise AiortcChanged(f"RTCRtpReceiver.{name} is gone")
    streams = getattr(receiver, "_RTCRtpReceiver__remote_streams", None)
    if not isinstance(streams, dict):
        raise AiortcChanged("RTCRtpReceiver.__remote_streams is gone: no receiver reports")
    clock_rate = CLOCK_RATES[counter.kind]
    decoder_running = True

    async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        nonlocal decoder_running
        if decoder_running:
            decoder_running = False
            receiver._handle_disconnect()  # ends the decoder thread (and the unused track)
        if counter.add(packet):
            stats = streams.get(packet.ssrc)
            if stats is None:
                stats = streams[packet.ssrc] = StreamStatistics(clock_rate)
            stats.add(packet)

    receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]


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
) -> list[dict[str, Any]]:
    """Run ``viewers`` counting viewers here: join at the ramp rate, watch ``seconds`` after the
    ramp, close them all. Returns each viewer's ``result()``."""
    clock = time.monotonic
    started = clock()
    ramp = viewers / ramp_per_second
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
                joins.append(asyncio.create_task(_join(viewer)))
            await asyncio.sleep(max(0.0, started + ramp + seconds - clock()))
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


async def _join(viewer: CountingViewer) -> None:
    try:
        await viewer.start()
    except SignallingError as exc:
        viewer.error = str(exc)
    except Exception as exc:  # one broken viewer must not end the test
        viewer.error = f"{type(exc).__name__}: {exc}"


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
