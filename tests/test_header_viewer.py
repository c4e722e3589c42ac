"""The header-counting load viewer: counting from clear RTP headers, receiver reports built from
those counts, and real viewers against a real aiortc WHEP endpoint (``whep_support``), read by
one sweep per event loop; and their video frames counted by the kernel (``NetfilterTally``)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import aioice.ice
import aioice.stun
import pytest
from conftest import missing_service
from whep_support import TOKEN, WAIT, WhepEndpoint, eventually, remote_reports, whep_endpoint

from client import netfilter_tally
from client.clip import EncodedClip, make_clip
from client.header_batch import DatagramTable
from client.header_viewer import HeaderCounter, HeaderCountingViewer, Sweep
from client.netfilter_tally import NetfilterTally, TallyError
from client.publisher import SignallingError
from server.relay.ice import advertise_addresses

VIDEO, AUDIO, RTX = 96, 111, 97


@pytest.fixture(scope="module", autouse=True)
def loopback_ice() -> None:
    """Peers offer 127.0.0.1 only. Never undone: no test may reach beyond loopback."""
    advertise_addresses(["127.0.0.1"])


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> EncodedClip:
    return make_clip("vp8", 4.0, 30, 320, 240, 400_000, 1.0, cache_dir=tmp_path_factory.mktemp("c"))


@pytest.fixture
async def whep(clip: EncodedClip) -> AsyncIterator[WhepEndpoint]:
    async with whep_endpoint(clip) as endpoint:
        yield endpoint


# --- counting ---------------------------------------------------------------------------------


def rtp(seq: int, ts: int, *, pt: int = VIDEO, marker: bool = False, ssrc: int = 7) -> bytes:
    header = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts, ssrc)
    return header + b"\x00" * 100  # the payload stays encrypted: never read


def counter() -> HeaderCounter:
    c = HeaderCounter(clock=lambda: 5.0)
    c.kinds = {VIDEO: "video", AUDIO: "audio", RTX: "rtx"}
    return c


def test_video_frames_end_at_a_marker_counted_once_per_timestamp() -> None:
    c = counter()
    packets = [
        rtp(65533, 0),
        rtp(65534, 0, marker=True),  # frame 1
        rtp(65535, 3000),
        rtp(0, 3000, marker=True),  # frame 2, across the sequence wrap
        rtp(1, 3000, marker=True),  # a second marker on the same timestamp: not a frame
        rtp(2, 6000),  # frame 3 has not ended yet
    ]
    assert [c.datagram(p) for p in packets] == [True] * 6
    (stream,) = c.streams.values()
    assert (stream.kind, stream.frames, stream.packets, stream.expected) == ("video", 2, 6, 6)
    assert (stream.lost, stream.late, stream.highest) == (0, 0, 65533 + 5)
    assert stream.bytes == sum(len(p) for p in packets)
    assert c.first_video_at == 5.0
    assert c.total("video", "frames") == 2 and c.total("audio", "frames") == 0


def test_gaps_late_packets_and_duplicates() -> None:
    c = counter()
    for packet in (rtp(10, 0), rtp(13, 0, marker=True), rtp(11, 0), rtp(13, 0), rtp(14, 3000)):
        c.datagram(packet)
    (stream,) = c.streams.values()
    # 11 and 12 were missing when 13 came; 11 then came late and 13 twice: neither is new.
    assert (stream.expected, stream.lost, stream.late, stream.packets) == (5, 2, 2, 5)
    assert (stream.frames, stream.highest) == (1, 14)


def test_audio_frames_are_timestamps_and_streams_are_told_apart_by_ssrc() -> None:
    c = counter()
    for n in range(4):
        c.datagram(rtp(100 + n, n * 960, pt=AUDIO, ssrc=1))
    c.datagram(rtp(5, 0, pt=VIDEO, ssrc=2, marker=True))
    c.datagram(rtp(9, 0, pt=RTX, ssrc=3))
    c.datagram(rtp(1, 0, pt=99, ssrc=4))  # a payload type the answer did not name
    kinds = {s.ssrc: s.kind for s in c.streams.values()}
    assert kinds == {1: "audio", 2: "video", 3: "rtx", 4: "unknown"}
    assert (c.total("audio", "frames"), c.total("video", "frames")) == (4, 1)


def test_only_srtp_and_srtcp_are_counted() -> None:
    c = counter()
    stun = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 12  # binding request
    dtls = b"\x15\xfe\xfd" + b"\x00" * 20  # an alert record
    sender_report = struct.pack("!BBHI", 0x80, 200, 6, 7) + b"\x00" * 20
    assert [c.datagram(d) for d in (stun, dtls, b"\x80\x60\x00")] == [False, False, False]
    assert c.datagram(sender_report) is True
    assert (c.rtcp, c.streams) == (1, {})
    buffer = bytearray(rtp(1, 0, marker=True)) + b"\xff" * 50  # a reused, longer buffer
    assert c.count(buffer, 112) is True
    assert c.total("video", "bytes") == 112


def test_receiver_reports_carry_loss_since_the_last_report() -> None:
    c = counter()
    previous: dict[int, tuple[int, int]] = {}
    assert c.receiver_report(42, previous) is None  # nothing yet: nothing to report
    for seq in (1, 2, 5):  # 3 and 4 missing
        c.datagram(rtp(seq, seq * 3000, marker=True))
    c.datagram(rtp(1, 0, pt=RTX, ssrc=9))  # retransmissions get no report block
    report = c.receiver_report(42, previous)
    assert report is not None and report.ssrc == 42
    (block,) = report.reports
    assert (block.ssrc, block.highest_sequence, block.packets_lost) == (7, 5, 2)
    assert block.fraction_lost == (2 << 8) // 5
    for seq in (6, 7):
        c.datagram(rtp(seq, seq * 3000, marker=True))
    report = c.receiver_report(42, previous)
    assert report is not None
    (block,) = report.reports
    assert (block.fraction_lost, block.packets_lost, block.highest_sequence) == (0, 2, 7)


def test_a_sweep_interval_is_bounded() -> None:
    for interval in (0, -1, 1.5):
        with pytest.raises(ValueError, match="interval"):
            Sweep(interval)


# --- real viewers -----------------------------------------------------------------------------


# Read with recvmmsg into a table counted once per pass (Linux), and one datagram at a time.
READING = [pytest.param(True, id="batched"), pytest.param(False, id="one-by-one")]
if not DatagramTable.available():
    READING[0] = pytest.param(True, id="batched", marks=pytest.mark.skip("no recvmmsg here"))


@pytest.mark.parametrize("batched", READING)
async def test_header_viewers_count_real_time_frames_and_report_back(
    whep: WhepEndpoint, batched: bool
) -> None:
    sweep = Sweep(0.05, batched=batched)
    watch = 3.0
    async with aiohttp.ClientSession() as http:
        viewers = [HeaderCountingViewer(whep.url, TOKEN, http=http, sweep=sweep) for _ in range(3)]
        try:
            await asyncio.wait_for(asyncio.gather(*(v.start() for v in viewers)), WAIT)
            assert len(sweep) == 3, [v.error for v in viewers]
            await eventually(lambda: all(v.swept_since is not None for v in viewers), "sweeps")
            await eventually(lambda: all(v.frames("audio") > 0 for v in viewers), "audio")
            for viewer in viewers:
                # Nothing reaches aiortc's receivers: no decoder threads, no RTCP tasks of theirs.
                assert viewer.pc is not None
                for transceiver in viewer.pc.getTransceivers():
                    task = transceiver.receiver._RTCRtpReceiver__rtcp_task  # type: ignore[attr-defined]
                    assert task is not None
                    await eventually(task.done, "the receiver's RTCP task to end")
            assert not [t for t in threading.enumerate() if t.name.endswith("-decoder")]
            sweep.sweep()
            before = [(v.frames("video"), v.frames("audio")) for v in viewers]
            await asyncio.sleep(watch)
            sweep.sweep()
            after = [(v.frames("video"), v.frames("audio")) for v in viewers]
            for served in whep.served.values():
                for sender in served.senders.values():
                    await eventually_async(lambda s=sender: remote_reports(s), "receiver reports")
        finally:
            await asyncio.gather(*(v.close() for v in viewers))
    for (video_a, audio_a), (video_b, audio_b) in zip(before, after, strict=True):
        assert (video_b - video_a) / watch == pytest.approx(30, rel=0.15)
        assert (audio_b - audio_a) / watch == pytest.approx(50, rel=0.15)
    for viewer in viewers:
        assert viewer.counter.total("video", "lost") == 0
        assert viewer.counter.total("audio", "lost") == 0
        assert viewer.reports_sent >= 2 and viewer.error is None
        assert viewer.pc is not None and viewer.pc.connectionState == "closed"
    assert sorted(whep.deleted) == ["s1/1", "s1/2", "s1/3"]
    assert len(sweep) == 0
    await eventually(lambda: not sweep.running, "the sweep to stop")


async def eventually_async(probe: object, what: str) -> None:
    """Like ``eventually`` for an async probe returning something truthy."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await probe():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("batched", READING)
async def test_consent_checks_are_answered_and_a_dead_sender_drops_the_viewer(
    whep: WhepEndpoint, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    # Consent (RFC 7675) every 0.1 s instead of 5 s, a check unanswered after 0.1 s instead of
    # 0.5 s: unanswered, the sender would give up on this viewer within a second, and this
    # viewer gives up on a silent sender as quickly.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.1)
    monkeypatch.setattr(aioice.stun, "RETRY_RTO", 0.1)
    sweep = Sweep(0.05, batched=batched)
    async with aiohttp.ClientSession() as http:
        viewer = HeaderCountingViewer(whep.url, TOKEN, http=http, sweep=sweep)
        try:
            await asyncio.wait_for(viewer.start(), WAIT)
            await eventually(lambda: viewer.swept_since is not None, "the sweep to take over")
            await asyncio.sleep(2.0)  # ~20 consent rounds each way, STUN through the sweep
            (served,) = whep.served.values()
            assert served.pc.connectionState == "connected"
            assert viewer.pc is not None and viewer.pc.connectionState == "connected"
            frames = viewer.frames()
            assert frames > 30
            await served.pc.close()  # the sender goes away without a word to the viewer
            await eventually(lambda: len(sweep) == 0, "the sweep to drop the viewer", 5.0)
            assert viewer.pc.connectionState in ("failed", "closed")
        finally:
            await viewer.close()
    assert viewer.error is None


async def test_a_refused_header_viewer_never_joins_the_sweep(whep: WhepEndpoint) -> None:
    sweep = Sweep()
    async with aiohttp.ClientSession() as http:
        viewer = HeaderCountingViewer(whep.url, "wrong", http=http, sweep=sweep)
        with pytest.raises(SignallingError, match="unauthorized"):
            await asyncio.wait_for(viewer.start(), WAIT)
        await viewer.close()
        with pytest.raises(RuntimeError, match="starts once"):
            await viewer.start()
    assert len(sweep) == 0 and whep.deleted == [] and viewer.frames() == 0


async def test_a_sweep_without_a_limit_reads_every_socket_empty(whep: WhepEndpoint) -> None:
    def datagrams(viewer: HeaderCountingViewer) -> int:
        return viewer.counter.rtcp + sum(s.packets for s in viewer.counter.streams.values())

    sweep = Sweep(1.0)  # its own pass once a second: the test's passes run in between
    async with aiohttp.ClientSession() as http:
        viewer = HeaderCountingViewer(whep.url, TOKEN, http=http, sweep=sweep)
        try:
            await asyncio.wait_for(viewer.start(), WAIT)
            await eventually(lambda: viewer.swept_since is not None, "the sweep to take over")
            sweep.sweep(limit=None)
            await asyncio.sleep(0.7)  # about 85 datagrams of audio and video queue meanwhile
            before = datagrams(viewer)
            sweep.sweep(limit=1)
            one = datagrams(viewer) - before
            sweep.sweep(limit=None)
            rest = datagrams(viewer) - before - one
            sweep.sweep(limit=None)
            again = datagrams(viewer) - before - one - rest
        finally:
            await viewer.close()
    assert one <= 1 and rest > 50 and again <= 2


# --- frames counted by the kernel (nftables: root; .ci/run installs it) ---------------------


HEADER = struct.Struct("!BBHII")


@pytest.fixture
def tally() -> Iterator[NetfilterTally]:
    reason = netfilter_tally.unavailable()
    if reason is not None:
        missing_service(reason)
    made = NetfilterTally()
    made.open()
    try:
        yield made
    finally:
        made.close()


def tally_rtp(payload_type: int, sequence: int, marker: bool, first: int = 0x90) -> bytes:
    second = (0x80 if marker else 0) | payload_type
    return HEADER.pack(first, second, sequence, sequence * 3000, 7) + bytes(200)


def test_the_kernel_counts_frames_per_port_and_lets_only_non_rtp_through(
    tally: NetfilterTally,
) -> None:
    watched = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for s in (watched, other):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        port = watched.getsockname()[1]
        tally.watch(port, [VIDEO])
        tally.sync()
        stun = bytes([0, 1, 0, 0]) + bytes(16)
        sender_report = bytes([0x80, 200, 0, 6]) + bytes(24)
        traffic = [tally_rtp(VIDEO, i, marker=i % 3 == 2) for i in range(30)]  # 10 frames
        traffic += [tally_rtp(AUDIO, i, marker=i == 0) for i in range(20)]  # audio: never a frame
        traffic += [stun, sender_report]
        for data in traffic:
            sender.sendto(data, watched.getsockname())
            sender.sendto(data, other.getsockname())
        asked = time.monotonic()
        assert tally.refresh() == {port: 10}
        assert tally.read_between is not None
        listed_from, listed_to = tally.read_between  # when the kernel's counts were taken
        assert asked <= listed_from <= listed_to <= time.monotonic()
        arrived = []
        while True:
            try:
                arrived.append(watched.recv(2048))
            except BlockingIOError:
                break
        assert arrived == [stun, sender_report]  # the RTP was dropped before the socket
        unwatched = 0
        while True:
            try:
                other.recv(2048)
            except BlockingIOError:
                break
            unwatched += 1
        assert unwatched == len(traffic)  # other ports are not touched
        tally.forget(port)
        assert tally.refresh() == {}
        sender.sendto(tally_rtp(VIDEO, 99, marker=True), watched.getsockname())
        assert len(watched.recv(2048)) == 212  # forgotten: delivered again
    finally:
        for s in (watched, other, sender):
            s.close()


def test_a_tally_checks_what_it_is_given(tally: NetfilterTally) -> None:
    with pytest.raises(ValueError, match="payload type"):
        tally.watch(5000, [200])
    tally.watch(70000, [VIDEO])
    with pytest.raises(ValueError, match="UDP port"):
        tally.sync()
    closed = NetfilterTally(table="studycast_load_never_opened")
    with pytest.raises(TallyError, match="not open"):
        closed.watch(5000, [VIDEO])


def test_tables_of_dead_load_processes_are_removed(tally: NetfilterTally) -> None:
    stale = NetfilterTally(table=f"{netfilter_tally.TABLE_PREFIX}999999999")
    stale.open()
    removed = netfilter_tally.remove_stale()
    assert stale.table in removed and tally.table not in removed
    with pytest.raises(TallyError):
        stale.close()  # already gone


async def test_a_viewer_counted_in_the_kernel_gets_the_frame_rate(
    whep: WhepEndpoint, tally: NetfilterTally
) -> None:
    sweep = Sweep(0.05)
    sweep.count_in_kernel(tally)
    watch = 3.0
    async with aiohttp.ClientSession() as http:
        viewer = HeaderCountingViewer(whep.url, TOKEN, http=http, sweep=sweep)
        try:
            await asyncio.wait_for(viewer.start(), WAIT)
            await eventually(lambda: viewer.swept_since is not None, "the sweep to take over")
            await asyncio.sleep(0.3)
            sweep.sweep(limit=None)
            tally.refresh()
            swept, before = viewer.counter.total("video", "frames"), viewer.frames()
            await asyncio.sleep(watch)
            sweep.sweep(limit=None)
            tally.refresh()
            after = viewer.frames()
            assert viewer.port in tally.frames
            assert viewer.counter.total("video", "frames") == swept  # none reached the socket
            assert viewer.pc is not None and viewer.pc.connectionState == "connected"
            reports = viewer.reports_sent
            await asyncio.sleep(1.6)
            sweep.sweep()
            assert viewer.reports_sent > reports  # RTCP still flows both ways
        finally:
            await viewer.close()
    assert (after - before) / watch == pytest.approx(30, rel=0.15)
    sweep.sweep()
    assert tally.refresh() == {}  # the closed viewer's port is forgotten
