"""A session whose source falls behind live on a node: new viewers are refused, then the newest
are closed, and the broadcaster stays.

The policy alone (``OverloadGuard``), the kernel's count of a real socket's queue, then a real
relay whose broadcaster's socket really has a queue in front of it: while the relay's event
loop is held (as a relay short of CPU is), datagrams are sent to that socket from a thread.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from relay_support import relay_stage, wait_for

from attendance.store import Store
from client.publisher import SignallingError
from server.relay.overload import (
    BEHIND_S,
    LATE_TICKS,
    SHED_AFTER_S,
    OverloadGuard,
    SocketQueue,
    newest_first,
    oldest_wait,
    receive_queue,
)

LINUX_ONLY = pytest.mark.skipif(sys.platform != "linux", reason="SO_MEMINFO is Linux's")
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
KB = 1024


# --- the policy -------------------------------------------------------------------------------

BIG = 8 * 1024 * KB  # a socket buffer as the relay asks for it


def test_behind_while_the_queue_is_over_the_threshold() -> None:
    guard = OverloadGuard(64 * KB)
    assert guard.observe(SocketQueue(10 * KB, BIG), 0.0, 20) == 0 and not guard.behind
    assert guard.observe(SocketQueue(65 * KB, BIG), 0.5, 20) == 0 and guard.behind
    assert (guard.backlog, guard.limit) == (65 * KB, 64 * KB)
    assert guard.observe(SocketQueue(64 * KB, BIG), 1.0, 20) == 0 and not guard.behind


def test_behind_while_the_oldest_datagram_has_waited_too_long_however_little_is_queued() -> None:
    """A low-bitrate source half a second behind queues little: the wait decides."""
    guard = OverloadGuard(256 * KB)
    assert guard.observe(SocketQueue(40 * KB, BIG, BEHIND_S), 0.0, 20) == 0 and not guard.behind
    # Late for a moment (a keyframe's burst fanned out to many viewers): not behind.
    assert LATE_TICKS == 4
    late = [guard.observe(SocketQueue(40 * KB, BIG, 0.6), t, 20) for t in (0.5, 1.0, 1.5)]
    assert late == [0, 0, 0] and not guard.behind
    assert guard.observe(SocketQueue(40 * KB, BIG, 0.1), 2.0, 20) == 0 and not guard.behind
    # Late at four ticks in a row: behind, and shedding follows as for a deep queue.
    for t in (2.5, 3.0, 3.5):
        assert guard.observe(SocketQueue(40 * KB, BIG, 0.4), t, 20) == 0 and not guard.behind
    assert guard.observe(SocketQueue(40 * KB, BIG, 0.5), 4.0, 20) == 0 and guard.behind
    assert (guard.backlog, guard.waited_s) == (40 * KB, 0.5)
    assert guard.observe(SocketQueue(50 * KB, BIG, 0.6), 4.0 + SHED_AFTER_S, 20) == 1
    assert guard.observe(SocketQueue(0, BIG, 0.0), 7.0, 20) == 0 and not guard.behind
    off = OverloadGuard(0)
    assert [off.observe(SocketQueue(40 * KB, BIG, 9.0), t, 20) for t in (0, 1, 2, 3)] == [0] * 4
    assert not off.behind


def test_a_small_buffer_lowers_the_threshold_to_a_quarter_of_it() -> None:
    """A kernel that caps the buffer (net.core.rmem_max) drops before a fixed threshold."""
    guard = OverloadGuard(256 * KB)
    assert guard.observe(SocketQueue(105 * KB, 416 * KB), 0.0, 20) == 0
    assert guard.limit == 104 * KB and guard.behind


def test_off_or_unknown_is_never_behind() -> None:
    assert OverloadGuard(0).observe(SocketQueue(BIG, BIG), 0.0, 20) == 0
    guard = OverloadGuard(64 * KB)
    guard.observe(SocketQueue(BIG, BIG), 0.0, 20)
    assert guard.behind
    assert guard.observe(None, 5.0, 20) == 0 and not guard.behind


def test_staying_behind_sheds_the_newest_share_each_interval() -> None:
    guard = OverloadGuard(64 * KB)
    deep = SocketQueue(65 * KB, BIG)
    assert guard.observe(deep, 0.0, 50) == 0  # behind once: not yet
    assert guard.observe(deep, SHED_AFTER_S - 0.1, 50) == 0
    assert guard.observe(deep, SHED_AFTER_S, 50) == 3  # 5 % of 50, rounded up
    assert guard.observe(deep, SHED_AFTER_S + 0.5, 47) == 0  # the next share after a pause
    assert guard.observe(deep, 2 * SHED_AFTER_S, 47) == 3
    assert guard.observe(deep, 3 * SHED_AFTER_S, 1) == 1
    assert guard.shed == 7
    assert guard.observe(deep, 4 * SHED_AFTER_S, 0) == 0


def test_catching_up_starts_the_count_again() -> None:
    guard = OverloadGuard(64 * KB)
    deep = SocketQueue(65 * KB, BIG)
    guard.observe(deep, 0.0, 10)
    guard.observe(SocketQueue(0, BIG), 1.5, 10)
    assert guard.observe(deep, 2.5, 10) == 0
    assert guard.observe(deep, 2.5 + SHED_AFTER_S, 10) == 1


@dataclass
class Seat:
    name: str
    kind: str
    created_at: float


def test_the_newest_viewers_go_first_and_edges_last() -> None:
    seats = [
        Seat("edge, new", "edge", 9.0),
        Seat("old", "member", 1.0),
        Seat("newest", "venue", 8.0),
        Seat("edge, old", "edge", 0.5),
        Seat("middle", "viewer", 5.0),
    ]
    assert [s.name for s in newest_first(seats)] == [
        "newest",
        "middle",
        "old",
        "edge, new",
        "edge, old",
    ]


# --- a real socket's queue --------------------------------------------------------------------


@LINUX_ONLY
def test_the_kernel_counts_what_a_socket_has_not_read() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        empty = receive_queue(receiver)
        assert empty is not None and empty.queued == 0
        assert empty.buffer == receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        for _ in range(50):
            sender.sendto(b"x" * 1000, receiver.getsockname())
        queue = receive_queue(receiver)
        assert queue is not None and queue.queued >= 50 * 1000
        for _ in range(50):
            receiver.recv(2048)
        drained = receive_queue(receiver)
        assert drained is not None and drained.queued < 50 * 1000


@LINUX_ONLY
def test_the_kernel_tells_how_long_the_oldest_datagram_has_waited() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)  # as asyncio's are
        assert receive_queue(receiver) == SocketQueue(
            0, receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), 0.0
        )
        # The kernel turns stamping on shortly after the first socket asks (a deferred work
        # item); until then a datagram is stamped when first read. Wait until probes show it.
        for _ in range(50):
            sender.sendto(b"probe", receiver.getsockname())
            time.sleep(0.02)
            stamped = oldest_wait(receiver) >= 0.02
            receiver.recv(64)
            if stamped:
                break
        else:
            pytest.fail("the kernel never stamped a datagram on arrival")
        sender.sendto(b"first", receiver.getsockname())
        time.sleep(0.3)
        sender.sendto(b"second", receiver.getsockname())
        queue = receive_queue(receiver)
        assert queue is not None and 0.3 <= queue.oldest_s < 2.0, queue
        assert 0.3 <= oldest_wait(receiver) < 2.0
        # Peeking takes nothing: the reader gets both, and then nothing waits.
        assert [receiver.recv(64), receiver.recv(64)] == [b"first", b"second"]
        drained = receive_queue(receiver)
        assert drained is not None and drained.oldest_s == 0.0 and oldest_wait(receiver) == 0.0


# --- a real relay -----------------------------------------------------------------------------


def flood(address: tuple[str, int], datagrams: int) -> None:
    """Send ``datagrams`` of 1,200 bytes to ``address`` from a thread of its own, and wait."""

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(datagrams):
                sock.sendto(b"\0" * 1200, address)

    thread = threading.Thread(target=send)
    thread.start()
    thread.join(10)  # the event loop is held meanwhile: nothing reads the relay's sockets


def source_address(ingest: object) -> tuple[str, int]:
    [sock] = ingest._sockets()  # type: ignore[attr-defined]
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


@LINUX_ONLY
@SQLITE_ONLY
async def test_a_node_behind_live_refuses_viewers_until_it_keeps_up(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path, now, "vp8", behind_kb=64) as stage:
        publication = await stage.publish()
        await publication.wait_connected()
        first = await stage.watch()
        hub = stage.hub
        assert hub.ingest is not None
        await wait_for(lambda: hub.overload.backlog is not None, 5, "a watch tick with media")
        assert not hub.overload.behind

        flood(source_address(hub.ingest), 150)  # ~180 KB, ~350 KB as the kernel holds it
        hub._watch_tick(time.monotonic())  # what the watch loop does, before anything is read
        assert hub.overload.behind
        assert (hub.overload.backlog or 0) >= 150 * 1200

        with pytest.raises(SignallingError) as refused:
            await stage.watch(connect=False)
        assert refused.value.status == 503
        assert refused.value.code == "overloaded"
        assert "behind live" in refused.value.detail
        assert hub.overload.refused == 1

        # Once the queue is read the node keeps up again and takes viewers.
        await wait_for(lambda: not hub.overload.behind, 5, "the relay to catch up")
        late = await stage.watch()
        await wait_for(lambda: any(p.kind == "video" for p in late.packets), 10, "late video")
        assert first.pc.connectionState == "connected"
        assert hub.ingest is not None and publication.pc.connectionState == "connected"
        stats = hub.stats()
        assert stats["viewers_refused_behind"] == 1 and stats["viewers_shed"] == 0
        r = await stage.client.get("/metrics")
        text = await r.text()
        assert 'studycast_relay_viewers_refused_behind_total{node="origin"} 1.0' in text


@LINUX_ONLY
@SQLITE_ONLY
async def test_a_node_reading_its_source_late_is_behind_however_little_is_queued(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    """Datagrams far under the byte threshold that wait over ``BEHIND_S`` unread (the
    relay's event loop held, as a relay short of CPU holds it): behind, and viewers are told
    how late the node is."""
    async with relay_stage(store, tmp_path, now, "vp8", behind_kb=4096) as stage:
        publication = await stage.publish()
        await publication.wait_connected()
        hub = stage.hub
        assert hub.ingest is not None
        await wait_for(lambda: hub.overload.backlog is not None, 5, "a watch tick with media")
        flood(source_address(hub.ingest), 100)  # ~230 KB as the kernel holds it
        time.sleep(BEHIND_S + 0.15)  # noqa: ASYNC251 (holding the relay's loop is the point)
        for _ in range(LATE_TICKS - 1):
            hub._watch_tick(time.monotonic())
            assert not hub.overload.behind, "late for a moment: maybe a keyframe's burst"
        hub._watch_tick(time.monotonic())  # and still late (nothing was read meanwhile)
        assert hub.overload.behind
        assert hub.overload.limit is not None
        assert 100 * 1200 <= (hub.overload.backlog or 0) < hub.overload.limit  # not by bytes
        assert (hub.overload.waited_s or 0) > BEHIND_S
        with pytest.raises(SignallingError) as refused:
            await stage.watch(connect=False)
        assert refused.value.status == 503 and "behind live" in refused.value.detail
        assert f"the oldest for {hub.overload.waited_s:.2f} s" in refused.value.detail
        await wait_for(lambda: not hub.overload.behind, 5, "the relay to catch up")
        assert hub.stats()["source_waited_s"] < BEHIND_S
        assert publication.pc.connectionState == "connected"


@LINUX_ONLY
@SQLITE_ONLY
async def test_a_node_that_stays_behind_closes_its_newest_viewers_one_by_one(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path, now, "vp8", behind_kb=64) as stage:
        publication = await stage.publish()
        await publication.wait_connected()
        watchers = [await stage.watch() for _ in range(3)]
        hub = stage.hub
        assert hub.ingest is not None
        await wait_for(lambda: len(hub.viewers) == 3, 10, "three viewers")
        newest = max(hub.viewers.values(), key=lambda v: v.created_at)
        assert watchers[-1].resource_url is not None
        assert watchers[-1].resource_url.endswith(newest.resource_id)

        address = source_address(hub.ingest)
        start = time.monotonic()
        flood(address, 150)
        hub._watch_tick(start)
        assert hub.overload.behind
        assert hub.viewers.keys() >= {newest.resource_id}, "not yet: behind only once"
        flood(address, 150)
        hub._watch_tick(start + SHED_AFTER_S)  # sheds the newest
        # Still behind (nothing was read meanwhile) and the newest not gone yet: the next one.
        hub._watch_tick(start + 2 * SHED_AFTER_S)
        assert hub.overload.shed == 2

        oldest = watchers[0]
        await wait_for(lambda: len(hub.viewers) == 1, 5, "two viewers closed")
        assert oldest.resource_url is not None
        assert [oldest.resource_url.endswith(r) for r in hub.viewers] == [True]
        await wait_for(
            lambda: all(w.pc.connectionState in ("closed", "failed") for w in watchers[1:]),
            40,
            "their peers",
        )
        assert oldest.pc.connectionState == "connected"
        assert publication.pc.connectionState == "connected"
        r = await stage.client.get("/metrics")
        assert 'studycast_relay_viewers_shed_total{node="origin"} 2.0' in await r.text()
