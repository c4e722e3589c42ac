"""The cheapest WHEP viewer, for loading a relay from the machine it runs on.

A load generator that shares the relay's cores takes from the relay every core-second it spends,
so the viewers it plays must cost next to nothing. ``HeaderCountingViewer`` joins like any WHEP
viewer (offer, ICE, DTLS, SRTP keys), then stops using aiortc's receive path: its ICE socket is
read by a ``Sweep`` that visits every viewer of the process once per interval, counts frames from
the RTP header SRTP leaves in clear (``HeaderCounter``, nothing decrypted) and sends each viewer's
receiver report when it is due. STUN (consent checks) and DTLS still reach aioice and aiortc, so
the connection stays up and closes as usual.

Why a sweep rather than asyncio's reader per socket: with hundreds of sockets, asyncio wakes per
readable socket and reads one datagram per wake-up, and the bookkeeping around each wake-up
costs more than the read. A sweep every 100 ms finds about twelve datagrams of a 0.6 Mbit/s
stream queued per socket (~30 KB of the socket's 208 KB default buffer) and reads them in a row
with ``recv_into`` into one reused buffer. Counts are therefore up to one interval late; call
``Sweep.sweep()`` right before reading them to have them current.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import struct
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket

from client.header_batch import DatagramTable
from client.netfilter_tally import NetfilterTally
from client.publisher import (
    DEFAULT_REQUEST_TIMEOUT,
    AiortcChanged,
    SignallingError,
    delete_resource,
    post_offer,
)
from client.stream_counter import payload_codecs
from server.relay.ice import rtc_configuration

DEFAULT_SWEEP_INTERVAL = 0.1
MAX_READS_PER_VISIT = 64  # bounds one socket's share of a sweep; the rest waits for the next
REPORT_INTERVAL = (0.5, 1.5)  # seconds between receiver reports, drawn anew each time (aiortc's)

_RTP_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC


# --- counting from clear headers --------------------------------------------------------------


class HeaderStream:
    """One SSRC as seen in clear RTP headers: packets, bytes, frames, sequence gaps."""

    __slots__ = (
        "bytes",
        "expected",
        "frames",
        "highest",
        "kind",
        "last_sequence",
        "last_timestamp",
        "late",
        "lost",
        "packets",
        "ssrc",
        "video",
    )

    def __init__(self, ssrc: int, kind: str, sequence: int) -> None:
        self.ssrc = ssrc
        self.kind = kind  # "audio", "video", "rtx" or "unknown" (from the payload type)
        self.video = kind == "video"
        self.packets = 0
        self.bytes = 0
        self.frames = 0
        self.expected = 0
        self.lost = 0
        self.late = 0
        # As if the packet before the first had arrived: the first then counts as expected.
        self.highest = sequence - 1  # extended (cycles << 16 | sequence), for receiver reports
        self.last_sequence = (sequence - 1) & 0xFFFF
        self.last_timestamp = -1  # the timestamp of the last frame counted


class HeaderCounter:
    """Counts a viewer's media from the RTP header SRTP leaves in clear, without decrypting.

    SRTP encrypts only the payload: the 12-byte header (marker bit, payload type, sequence
    number, timestamp, SSRC) is readable as sent. A video frame ends at a packet with the marker
    bit (counted once per timestamp), an audio frame is a new timestamp. Nothing is
    authenticated and keyframes cannot be seen (their bits are in the encrypted payload), so
    this is for load, not for checking what a viewer would decode.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.kinds: dict[int, str] = {}  # payload type → kind, from the SDP answer
        self.streams: dict[int, HeaderStream] = {}
        self.rtcp = 0
        self.first_video_at: float | None = None
        self._clock = clock

    def datagram(self, data: bytes | bytearray | memoryview) -> bool:
        """Count one SRTP or SRTCP datagram; False if it is neither (STUN, DTLS)."""
        return self.count(data, len(data))

    def count(self, buffer: bytes | bytearray | memoryview, size: int) -> bool:
        """``datagram`` for the first ``size`` bytes of a reused receive buffer."""
        if size < 12:
            return False
        first, second, sequence, timestamp, ssrc = _RTP_HEADER.unpack_from(buffer)
        if not 127 < first < 192:  # RTP version 2 (RFC 7983's demultiplexing range)
            return False
        if 191 < second < 209:  # RTCP (sender reports, ...): not needed to count media
            self.rtcp += 1
            return True
        stream = self.streams.get(ssrc)
        if stream is None:
            stream = self.new_stream(ssrc, second & 0x7F, sequence)
        stream.packets += 1
        stream.bytes += size
        delta = (sequence - stream.last_sequence) & 0xFFFF
        if delta == 0 or delta >= 0x8000:
            stream.late += 1  # a duplicate or a packet arriving after a later one
            return True
        stream.expected += delta
        stream.lost += delta - 1
        stream.highest += delta
        stream.last_sequence = sequence
        if timestamp != stream.last_timestamp and (second & 0x80 or not stream.video):
            stream.frames += 1
            stream.last_timestamp = timestamp
        return True

    def new_stream(self, ssrc: int, payload_type: int, sequence: int) -> HeaderStream:
        kind = self.kinds.get(payload_type, "unknown")
        stream = self.streams[ssrc] = HeaderStream(ssrc, kind, sequence)
        if kind == "video" and self.first_video_at is None:
            self.first_video_at = self._clock()
        return stream

    def total(self, kind: str, name: str) -> int:
        """The sum of one count (``frames``, ``packets``, ...) over this kind's SSRCs."""
        return sum(getattr(s, name) for s in self.streams.values() if s.kind == kind)

    def receiver_report(
        self, ssrc: int, previous: dict[int, tuple[int, int]]
    ) -> RtcpRrPacket | None:
        """RFC 3550 report blocks from the counts (loss since ``previous``, which is updated,
        and the highest sequence); no jitter and no round-trip fields. None if no media yet."""
        blocks = []
        for stream in list(self.streams.values()):
            if stream.kind not in ("audio", "video"):
                continue
            expected, lost = previous.get(stream.ssrc, (0, 0))
            previous[stream.ssrc] = (stream.expected, stream.lost)
            new, missing = stream.expected - expected, stream.lost - lost
            fraction = min(255, (missing << 8) // new) if new > 0 and missing > 0 else 0
            blocks.append(
                RtcpReceiverInfo(
                    ssrc=stream.ssrc,
                    fraction_lost=fraction,
                    packets_lost=min(max(stream.lost, 0), 0x7FFFFF),
                    highest_sequence=stream.highest & 0xFFFFFFFF,
                    jitter=0,
                    lsr=0,
                    dlsr=0,
                )
            )
        return RtcpRrPacket(ssrc=ssrc, reports=blocks) if blocks else None


# --- one sweep for every viewer of a process --------------------------------------------------


class Sweep:
    """Visits every registered viewer once per ``interval`` on the running event loop.

    ``shared()`` gives the one sweep of the running loop; its task starts with the first viewer
    and ends once none is left. A viewer's ``visit(now)`` returning False drops it.
    """

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Sweep]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(
        self,
        interval: float = DEFAULT_SWEEP_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        *,
        batched: bool | None = None,
    ) -> None:
        if not 0 < interval <= 1:
            raise ValueError("a sweep interval is more than 0 and at most 1 s")
        if batched and not DatagramTable.available():
            raise OSError("batched reading needs recvmmsg (Linux)")
        self.interval = interval
        self.sweeps = 0
        # One recvmmsg per socket and one vectorised count per pass, where the system has it.
        self.batched = DatagramTable.available() if batched is None else batched
        self._table: DatagramTable | None = None
        self.tally: NetfilterTally | None = None  # see ``count_in_kernel``
        self._clock = clock
        self._viewers: dict[int, HeaderCountingViewer] = {}  # insertion order: visit order
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def shared(cls) -> Sweep:
        loop = asyncio.get_running_loop()
        sweep = cls._by_loop.get(loop)
        if sweep is None:
            sweep = cls._by_loop[loop] = cls()
        return sweep

    def __len__(self) -> int:
        return len(self._viewers)

    def count_in_kernel(self, tally: NetfilterTally) -> None:
        """Have the kernel count (and drop) the RTP of viewers taken over from now on: their
        video frames are then ``tally``'s per-port counts, read by ``tally.refresh()``."""
        self.tally = tally

    @property
    def running(self) -> bool:
        """Whether the sweep's task is on (it is while any viewer is registered)."""
        return self._task is not None and not self._task.done()

    def add(self, viewer: HeaderCountingViewer) -> None:
        self._viewers[id(viewer)] = viewer
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, viewer: HeaderCountingViewer) -> None:
        self._viewers.pop(id(viewer), None)

    def sweep(self, limit: int | None = MAX_READS_PER_VISIT) -> None:
        """One pass over every viewer (what the task does each interval): at most ``limit``
        datagrams per socket, or (None) until every socket is empty, which makes the counts
        exact as of the pass's end, however long the process waited for a core."""
        now = self._clock()
        self.sweeps += 1
        if self.batched and self._table is None:
            self._table = DatagramTable()
        for key, viewer in list(self._viewers.items()):
            try:
                keep = viewer.visit(now, limit, self._table)
            except Exception as exc:  # one broken viewer must not stop the others' sweep
                viewer.error = f"sweep: {type(exc).__name__}: {exc}"
                keep = False
            if not keep:
                self._viewers.pop(key, None)
        if self._table is not None:
            self._table.flush()
        if self.tally is not None:
            self.tally.sync()
        for key, viewer in list(self._viewers.items()):  # reports from the counts just made
            try:
                viewer.report_if_due(now)
            except Exception as exc:
                viewer.error = f"report: {type(exc).__name__}: {exc}"
                self._viewers.pop(key, None)

    async def _run(self) -> None:
        next_at = self._clock()
        while self._viewers:
            next_at = max(next_at + self.interval, self._clock())
            await asyncio.sleep(next_at - self._clock())
            self.sweep()


# --- the viewer -------------------------------------------------------------------------------


class HeaderCountingViewer:
    """A recvonly WHEP viewer (audio + video) that counts frames from clear RTP headers only.

    No SRTP decryption, no aiortc receive path, no task of its own once connected: about a
    tenth of ``CountingViewer``'s CPU (``bench/bench_scale.py``). Use it to load a relay with
    many viewers from the same machine; use ``CountingViewer`` to check what viewers get
    (keyframes, retransmissions, accurate receiver reports).
    """

    def __init__(
        self,
        whep_url: str,
        token: str,
        *,
        http: aiohttp.ClientSession,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        sweep: Sweep | None = None,
    ) -> None:
        self.whep_url = whep_url
        self.counter = HeaderCounter(clock)
        self.pc: RTCPeerConnection | None = None
        self.resource_url: str | None = None
        self.posted_at: float | None = None
        self.answered_at: float | None = None
        self.swept_since: float | None = None  # when the sweep took the socket over
        self.port: int | None = None  # the local UDP port of the nominated ICE pair
        self.reports_sent = 0
        self.error: str | None = None
        self.close_error: str | None = None
        self._token = token
        self._http = http
        self._request_timeout = request_timeout
        self._clock = clock
        self._sweep = sweep
        self._closing: asyncio.Task[None] | None = None
        self._rtcp_ssrc = random.randint(1, 0xFFFFFFFF)  # noqa: S311 (an id, not a secret)
        self._dtls: Any = None
        self._connection: Any = None  # aioice's Connection under the DTLS transport
        self._reader: _SocketReader | None = None
        self._next_report = 0.0
        self._previous: dict[int, tuple[int, int]] = {}
        self._idle_receivers: list[Any] = []  # aiortc's, to stop once they have started

    async def start(self) -> None:
        """Offer, POST, apply the answer and join the sweep; once DTLS has agreed the keys the
        sweep reads the socket, counts and reports (as from a browser, every 0.5-1.5 s)."""
        if self.pc is not None:
            raise RuntimeError("a viewer starts once")
        pc = self.pc = RTCPeerConnection(configuration=rtc_configuration())
        for kind in ("audio", "video"):
            pc.addTransceiver(kind, direction="recvonly")
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
        for kind, types in payload_codecs(answer).items():
            for payload_type, codec in types.items():
                self.counter.kinds[payload_type] = "rtx" if codec == "rtx" else kind
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        self._dtls = pc.getTransceivers()[0].receiver.transport
        self._connection = getattr(getattr(self._dtls, "transport", None), "_connection", None)
        for name in ("_rx_srtp", "_tx_srtp"):
            if not hasattr(self._dtls, name):
                raise AiortcChanged(f"RTCDtlsTransport.{name} is gone")
        protocols = getattr(self._connection, "_protocols", None)
        if not isinstance(getattr(self._connection, "_nominated", None), dict) or not isinstance(
            protocols, list
        ):
            raise AiortcChanged("cannot reach aioice's Connection under RTCDtlsTransport")
        for protocol in protocols:  # until the sweep takes the socket over
            _count_before_aiortc(protocol, self._dtls, self.counter)
        self._idle_receivers = [t.receiver for t in pc.getTransceivers()]
        if self._closing is None:
            self._the_sweep().add(self)

    def _the_sweep(self) -> Sweep:
        if self._sweep is None:  # (not ``or``: a sweep with no viewers is falsy)
            self._sweep = Sweep.shared()
        return self._sweep

    def visit(
        self,
        now: float,
        limit: int | None = MAX_READS_PER_VISIT,
        table: DatagramTable | None = None,
    ) -> bool:
        """The sweep's call: read what queued (into ``table``, counted when the sweep flushes
        it, or counted at once without one). False once the socket is gone."""
        reader = self._reader
        if reader is None:
            if self._dtls._rx_srtp is None or 1 not in self._connection._nominated:
                # Still connecting: asyncio's reader serves ICE and DTLS meanwhile.
                return self.pc is not None and self.pc.connectionState != "closed"
            reader = self._take_over(now)
        if not reader.read(self.counter, limit, table):
            return False
        if self._idle_receivers:
            self._idle_receivers = [r for r in self._idle_receivers if not _stop_receiver(r)]
        return True

    def report_if_due(self, now: float) -> None:
        """Send a receiver report from the counts, if one is due (the sweep's second call)."""
        if self._reader is not None and now >= self._next_report:
            self._next_report = now + random.uniform(*REPORT_INTERVAL)  # noqa: S311
            self._report(self._reader)

    def _take_over(self, now: float) -> _SocketReader:
        """Read the nominated pair's socket from now on, in place of asyncio's reader (which
        is not given back: after ``close()`` nothing needs reading, and the socket closes)."""
        pair = self._connection._nominated[1]
        transport: Any = getattr(getattr(pair, "protocol", None), "transport", None)
        sock: Any = getattr(transport, "_sock", None)
        loop: Any = getattr(transport, "_loop", None)
        if sock is None or not callable(getattr(loop, "_remove_reader", None)):
            raise AiortcChanged("cannot reach the nominated ICE socket (aioice or asyncio changed)")
        if sock.fileno() >= 0:
            loop._remove_reader(sock.fileno())
        self._reader = _SocketReader(sock, pair.protocol, pair.remote_addr)
        self.swept_since = now
        self.port = sock.getsockname()[1]
        tally = self._the_sweep().tally
        if tally is not None:
            video = [pt for pt, kind in self.counter.kinds.items() if kind == "video"]
            tally.watch(self.port, video)
        self._next_report = now + random.uniform(*REPORT_INTERVAL)  # noqa: S311
        return self._reader

    def _report(self, reader: _SocketReader) -> None:
        packet = self.counter.receiver_report(self._rtcp_ssrc, self._previous)
        tx = self._dtls._tx_srtp
        if packet is None or tx is None:
            return
        with contextlib.suppress(OSError):
            reader.send(tx.protect_rtcp(bytes(packet)))
            self.reports_sent += 1

    def frames(self, kind: str = "video") -> int:
        """Frames counted so far: by the sweep, plus by the kernel where it counts them (as of
        the tally's last ``refresh()``)."""
        counted = self.counter.total(kind, "frames")
        tally = self._sweep.tally if self._sweep is not None else None
        if kind == "video" and tally is not None and self.port is not None:
            counted += tally.frames.get(self.port, 0)
        return counted

    async def close(self) -> None:
        """DELETE the WHEP resource (if we got one) and close the peer; idempotent."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        sweep = self._the_sweep()
        sweep.discard(self)
        if sweep.tally is not None and self.port is not None:
            sweep.tally.forget(self.port)
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


class _SocketReader:
    """One ICE socket, read in a row until empty: SRTP/SRTCP to the counter, STUN and DTLS on
    to aioice as if asyncio had read them (from the nominated pair's remote address: after ICE
    nothing else sends to this socket)."""

    __slots__ = ("_buffer", "_protocol", "_remote", "_sock")

    def __init__(self, sock: Any, protocol: Any, remote: tuple[str, int]) -> None:
        self._sock = sock
        self._protocol = protocol
        self._remote = remote
        self._buffer = bytearray(2048)

    def read(
        self, counter: HeaderCounter, limit: int | None, table: DatagramTable | None = None
    ) -> bool:
        """Read until the queue is empty or ``limit`` datagrams were read; False once closed.
        With a table, the datagrams are counted when it is flushed."""
        if table is not None:
            fd = self._sock.fileno()
            if fd < 0:
                return False
            return table.read(fd, counter, limit, self._hand_on, self._protocol.error_received)
        recv_into, buffer, count = self._sock.recv_into, self._buffer, counter.count
        for _ in itertools.repeat(None) if limit is None else range(limit):
            try:
                size = recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if self._sock.fileno() < 0:
                    return False  # closed under us (the peer closed)
                self._protocol.error_received(exc)  # e.g. ICMP port unreachable
                return True
            if not count(buffer, size):
                self._protocol.datagram_received(bytes(buffer[:size]), self._remote)
        return True

    def _hand_on(self, data: bytes) -> None:
        self._protocol.datagram_received(data, self._remote)

    def send(self, data: bytes) -> None:
        self._protocol.transport.sendto(data, self._remote)


def _count_before_aiortc(protocol: Any, dtls: Any, counter: HeaderCounter) -> None:
    """From the SRTP keys on, count SRTP on the way into aioice instead of letting aiortc
    decrypt it: the packets that arrive before the sweep takes the socket over."""
    original: Callable[[bytes, Any], None] = protocol.datagram_received

    def datagram_received(data: bytes, addr: Any) -> None:
        if dtls._rx_srtp is None or not counter.datagram(data):
            original(data, addr)

    protocol.datagram_received = datagram_received


def _stop_receiver(receiver: Any) -> bool:
    """End an aiortc receiver's decoder thread and RTCP task (no packet reaches it now); False
    if it has not started yet (aiortc starts it once DTLS is up), to be tried again later."""
    started = getattr(receiver, "_RTCRtpReceiver__rtcp_started", None)
    task = getattr(receiver, "_RTCRtpReceiver__rtcp_task", None)
    if started is None or not hasattr(receiver, "_handle_disconnect"):
        raise AiortcChanged("RTCRtpReceiver's RTCP task or _handle_disconnect is gone")
    # Only once running: a task cancelled before its first step would never set the event
    # RTCRtpReceiver.stop() waits for, and closing the peer would hang.
    if task is None or not started.is_set():
        return False
    receiver._handle_disconnect()  # joins the decoder thread
    task.cancel()
    return True
