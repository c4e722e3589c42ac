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
from datetime import datetime
from pathlib import Path

import pytest
from relay_support import relay_stage, wait_for

from attendance.store import Store
from client.publisher import SignallingError
from server.relay.overload import SHED_AFTER_S, SHED_FACTOR, OverloadGuard, receive_backlog

LINUX_ONLY = pytest.mark.skipif(sys.platform != "linux", reason="SO_MEMINFO is Linux's")
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
KB = 1024


# --- the policy -------------------------------------------------------------------------------


def test_behind_while_the_queue_is_over_the_threshold() -> None:
    guard = OverloadGuard(64 * KB)
    assert guard.observe(10 * KB, 0.0, 20) == 0 and not guard.behind
    assert guard.observe(65 * KB, 0.5, 20) == 0 and guard.behind
    assert guard.backlog == 65 * KB
    assert guard.observe(64 * KB, 1.0, 20) == 0 and not guard.behind


def test_off_or_unknown_is_never_behind() -> None:
    assert OverloadGuard(0).observe(10_000 * KB, 0.0, 20) == 0
    guard = OverloadGuard(64 * KB)
    guard.observe(10_000 * KB, 0.0, 20)
    assert guard.observe(None, 5.0, 20) == 0 and not guard.behind


def test_a_queue_that_stays_deep_sheds_the_newest_share_each_interval() -> None:
    guard = OverloadGuard(64 * KB)
    deep = SHED_FACTOR * 64 * KB + 1
    assert guard.observe(deep, 0.0, 50) == 0  # deep once: not yet
    assert guard.observe(deep, SHED_AFTER_S - 0.1, 50) == 0
    assert guard.observe(deep, SHED_AFTER_S, 50) == 3  # 5 % of 50, rounded up
    assert guard.observe(deep, SHED_AFTER_S + 0.5, 47) == 0  # the next share after a pause
    assert guard.observe(deep, 2 * SHED_AFTER_S, 47) == 3
    assert guard.observe(deep, 3 * SHED_AFTER_S, 1) == 1
    assert guard.shed == 7
    assert guard.observe(deep, 4 * SHED_AFTER_S, 0) == 0


def test_a_queue_that_drains_starts_the_count_again() -> None:
    guard = OverloadGuard(64 * KB)
    deep = SHED_FACTOR * 64 * KB + 1
    guard.observe(deep, 0.0, 10)
    guard.observe(100 * KB, 1.5, 10)  # behind, but no longer deep
    assert guard.observe(deep, 2.5, 10) == 0
    assert guard.observe(deep, 2.5 + SHED_AFTER_S, 10) == 1


# --- a real socket's queue --------------------------------------------------------------------


@LINUX_ONLY
def test_the_kernel_counts_what_a_socket_has_not_read() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        assert receive_backlog(receiver) == 0
        for _ in range(50):
            sender.sendto(b"x" * 1000, receiver.getsockname())
        queued = receive_backlog(receiver)
        assert queued is not None and queued >= 50 * 1000
        for _ in range(50):
            receiver.recv(2048)
        assert receive_backlog(receiver) == 0


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

        flood(source_address(hub.ingest), 400)
        hub._watch_tick(time.monotonic())  # what the watch loop does, before anything is read
        assert hub.overload.behind
        assert (hub.overload.backlog or 0) >= 400 * 1200

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
async def test_a_node_that_stays_behind_closes_its_newest_viewer(
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
        flood(address, 400)  # ~0.9 MB as the kernel counts it: over 4 x 64 KB
        hub._watch_tick(start)
        assert hub.viewers.keys() >= {newest.resource_id}, "not yet: deep only once"
        flood(address, 400)
        hub._watch_tick(start + SHED_AFTER_S)

        await wait_for(lambda: newest.resource_id not in hub.viewers, 5, "the newest closed")
        assert len(hub.viewers) == 2
        assert hub.overload.shed == 1
        await wait_for(
            lambda: watchers[-1].pc.connectionState in ("closed", "failed"), 40, "its peer"
        )
        assert [w.pc.connectionState for w in watchers[:2]] == ["connected", "connected"]
        assert publication.pc.connectionState == "connected"
        r = await stage.client.get("/metrics")
        assert 'studycast_relay_viewers_shed_total{node="origin"} 1.0' in await r.text()
