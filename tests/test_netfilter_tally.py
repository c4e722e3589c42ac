"""Frames counted by the kernel (nftables) for load viewers: raw datagrams, then a real viewer.

Needs root and Debian's nftables (``.ci/run`` installs it); elsewhere these tests skip.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from conftest import missing_service
from whep_support import TOKEN, WAIT, WhepEndpoint, eventually, whep_endpoint

from client import netfilter_tally
from client.clip import EncodedClip, make_clip
from client.header_viewer import HeaderCountingViewer, Sweep
from client.netfilter_tally import NetfilterTally, TallyError
from server.relay.ice import advertise_addresses

HEADER = struct.Struct("!BBHII")
VIDEO, AUDIO = 96, 111


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


def rtp(payload_type: int, sequence: int, marker: bool, first: int = 0x90) -> bytes:
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
        traffic = [rtp(VIDEO, i, marker=i % 3 == 2) for i in range(30)]  # 10 frames
        traffic += [rtp(AUDIO, i, marker=i == 0) for i in range(20)]  # audio: never a frame
        traffic += [stun, sender_report]
        for data in traffic:
            sender.sendto(data, watched.getsockname())
            sender.sendto(data, other.getsockname())
        assert tally.refresh() == {port: 10}
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
        sender.sendto(rtp(VIDEO, 99, marker=True), watched.getsockname())
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
