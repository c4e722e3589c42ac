"""The relay end to end: a real HTTP server over a real record store, a WHIP publisher sending a
pre-encoded clip (numbered frames, Opus), and WHEP viewers on real aiortc peers over loopback.

Viewers log every RTP packet on arrival; decoding viewers also read back the frame numbers drawn
into the pictures, so order, gaps and keyframe starts are checked on what really arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import pytest
from aiortc import RTCPeerConnection
from relay_support import (
    FRAME_TICKS,
    CodecUse,
    RtpRecord,
    Stage,
    Watcher,
    clip_from,
    create_study_session,
    decode_alone,
    first_arrivals,
    frame_packets,
    relay_process,
    relay_stage,
    sequence_steps,
    shared_clip,
    timestamp_steps,
    token,
    wait_for,
)
from sqlalchemy import select
from yarl import URL

from attendance.models import AdminEvent
from attendance.sessions import end_session
from attendance.store import Store
from client.clip import read_frame_number
from client.loadtest import CountingViewer
from client.publisher import Publication, publish
from client.watch import Watcher as Player
from client.watch import parse_target
from server.app import STATE_RECORDER
from server.relay.codecs import MAX_SDP_BYTES
from server.relay.feedback import MIN_INTERVAL_S
from server.relay.ice import rtc_configuration
from server.relay.wire import AiortcChanged, check_internals
from server.tokens import TokenRole
from server.whip import RELAY, RETRY_AFTER_FULL_S

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
CODECS = pytest.mark.parametrize("codec", ["vp8", "h264"])


def starts_with_keyframe(watcher: Watcher, codec: str, after: float = 0.0) -> int:
    """The first video packet the viewer got (after ``after``) starts a keyframe: its frame,
    from that very packet on, decodes with a fresh decoder. Returns the number drawn in it."""
    video = [p for p in watcher.of("video") if p.at > after]
    first = video[0]
    packets = frame_packets(video, first.timestamp)
    assert packets[0] == first, "the first packet received is the first of its frame"
    assert packets[-1].marker, "the frame arrived whole"
    frames = decode_alone(codec, packets)
    assert len(frames) == 1, "the first frame received decodes without any earlier frame"
    number = read_frame_number(frames[0])
    assert number in shared_clip(codec).keyframe_indices
    return number


def assert_continuous(packets: list[RtpRecord]) -> None:
    """One SSRC, and sequence numbers that only ever step by one."""
    assert len({p.ssrc for p in packets}) == 1
    steps = sequence_steps(first_arrivals(packets))
    assert set(steps) <= {1}, [i for i, s in enumerate(steps) if s != 1]


def frame_steps(numbers: list[int], codec: str) -> None:
    """Frame numbers go up by one, or jump ahead to a keyframe (the publisher answering a PLI)."""
    keyframes = set(shared_clip(codec).keyframe_indices)
    for a, b in itertools.pairwise(numbers):
        assert b == a + 1 or (b > a and b in keyframes), (a, b, numbers)


def video_sender(publication: Publication) -> Any:
    return next(t.sender for t in publication.pc.getTransceivers() if t.kind == "video")


async def admin_actions(store: Store, session_id: int) -> list[str]:
    async with store.read() as db:
        rows = await db.scalars(
            select(AdminEvent.action)
            .where(AdminEvent.target == f"session:{session_id}")
            .order_by(AdminEvent.id)
        )
        return list(rows)


# --- media reaches every viewer -------------------------------------------------------------


@SQLITE_ONLY
@CODECS
async def test_viewers_receive_the_broadcast_in_order_from_a_keyframe(
    store: Store, tmp_path: Path, now: datetime, codec: str
) -> None:
    async with relay_stage(store, tmp_path, now, codec) as stage:
        publication = await stage.publish()
        await publication.wait_connected()
        watchers = await asyncio.gather(*(stage.watch(decode=True) for _ in range(3)))
        await wait_for(lambda: all(len(w.frames) >= 30 for w in watchers), 20, "30 frames each")

        for w in watchers:
            numbers = [f.number for f in w.frames]
            frame_steps(numbers, codec)
            # The decoder's first picture is the first frame that arrived (aiortc maps the first
            # RTP timestamp to pts 0), and that frame is a keyframe on its own.
            assert w.frames[0].pts == 0
            assert starts_with_keyframe(w, codec) == numbers[0]
            video, audio = w.of("video"), w.of("audio")
            assert_continuous(video)
            assert_continuous(audio)
            assert set(timestamp_steps(w.frame_starts())) == {FRAME_TICKS}
            assert len(audio) >= 25, "Opus arrives too"
            audio_ticks = timestamp_steps([p.timestamp for p in first_arrivals(audio)])
            assert set(audio_ticks) == {960}, "20 ms of Opus per packet"
        stats = stage.hub.stats()
        assert stats["state"] == "live"
        assert stats["viewers"] == {"total": 3, "by_kind": {"viewer": 3}}
        assert stats["broadcaster"]["video_codec"] == codec.upper()


@SQLITE_ONLY
async def test_a_viewer_that_joins_before_the_broadcast_gets_it_once_it_starts(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path, now, "h264") as stage:
        watcher = await stage.watch(decode=True)
        assert stage.hub.state == "waiting"
        await asyncio.sleep(0.3)
        assert watcher.packets == []

        await stage.publish()
        await wait_for(lambda: len(watcher.frames) >= 15, 10, "15 frames")
        assert stage.hub.state == "live"
        assert watcher.frames[0].pts == 0
        assert starts_with_keyframe(watcher, "h264") == watcher.frames[0].number
        frame_steps([f.number for f in watcher.frames], "h264")
        assert_continuous(watcher.of("video"))


# --- forwarding only: the relay process never encodes or decodes ---------------------------


@SQLITE_ONLY
async def test_the_relay_process_never_encodes_or_decodes(
    store: Store, database_url: str, tmp_path: Path, now: datetime
) -> None:
    sessions = {codec: await create_study_session(store, now, codec) for codec in ("vp8", "h264")}
    use_here = CodecUse()
    async with (
        relay_process(tmp_path, database_url) as relay,
        aiohttp.ClientSession() as http,
    ):
        publications: list[Publication] = []
        watchers: list[Watcher] = []
        try:
            with use_here.installed():
                for codec, sid in sessions.items():
                    publications.append(
                        await publish(
                            f"{relay.base_url}/whip/{sid}",
                            token(sid, TokenRole.BROADCASTER, now),
                            shared_clip(codec),
                            http=http,
                        )
                    )
                    watcher = Watcher(decode=True)
                    watchers.append(watcher)
                    await watcher.start(
                        http, f"{relay.base_url}/whep/{sid}", token(sid, TokenRole.VENUE, now)
                    )
                await wait_for(lambda: all(len(w.frames) >= 20 for w in watchers), 20, "frames")
            there = await relay.codec_use(http)
        finally:
            await asyncio.gather(*(w.close() for w in watchers), *(p.close() for p in publications))

    # The viewers decoded here (the counters do see aiortc's decoders), the publishers only
    # packetised their pre-encoded clip; the relay did neither.
    assert use_here.made["decoders"] >= 2 and use_here.calls["decode"] >= 40
    assert use_here.calls["encode"] == 0
    assert there["made"] == {"encoders": 0, "decoders": 0}
    assert there["calls"] == {"encode": 0, "decode": 0}
    assert there["decoder_threads"] == []
    assert there["relay"]["packets_out"]["video"] >= 40
    assert there["relay"]["packets_out"]["audio"] >= 50


# --- a new broadcaster takes over, viewers follow ---------------------------------------------


@SQLITE_ONLY
@CODECS
async def test_a_replacing_broadcaster_is_followed_without_reconnecting(
    store: Store, tmp_path: Path, now: datetime, codec: str
) -> None:
    async with relay_stage(store, tmp_path, now, codec) as stage:
        first = await stage.publish()
        decoding = await stage.watch(decode=True)
        counting = await stage.watch()
        tool = CountingViewer(
            stage.url(f"/whep/{stage.session_id}"), stage.viewer_token, http=stage.http
        )
        await tool.start()
        await wait_for(lambda: len(decoding.frames) >= 15, 10, "frames before the switch")
        resources = set(stage.hub.viewers)
        old_ingest = stage.hub.ingest
        assert old_ingest is not None

        # The new broadcaster starts mid-GOP: the relay must hold its video until a keyframe.
        second = await stage.publish(clip_from(shared_clip(codec), 5))
        switched_at = time.monotonic()
        assert old_ingest.pc.connectionState == "closed"
        assert stage.hub.ingest is not old_ingest
        await wait_for(lambda: first.pc.connectionState == "closed", 5, "old broadcaster closed")
        await wait_for(
            lambda: sum(p.at > switched_at and p.marker for p in decoding.of("video")) >= 15,
            10,
            "frames after the switch",
        )
        await asyncio.sleep(0.2)  # for the decoder to catch up

        assert set(stage.hub.viewers) == resources, "the same viewers, not reconnected"
        assert decoding.pc.connectionState == counting.pc.connectionState == "connected"
        for w in (decoding, counting):
            video = w.of("video")
            assert_continuous(video)
            assert_continuous(w.of("audio"))
            before = [p for p in video if p.at <= switched_at]
            after = [p for p in video if p.at > switched_at]
            assert (after[0].seq - before[-1].seq) & 0xFFFF == 1
            # Timestamps go on from where they were, by the time that passed in between.
            gap = after[0].at - before[-1].at
            ticks = (after[0].timestamp - before[-1].timestamp) & 0xFFFFFFFF
            assert abs(ticks / 90_000 - gap) < 0.1, (ticks / 90_000, gap)
            assert starts_with_keyframe(w, codec, after=switched_at) >= 15
        # The decoder's pts is the RTP timestamp since the first one it saw.
        video = decoding.of("video")
        switch_pts = next(p.timestamp - video[0].timestamp for p in video if p.at > switched_at)
        old_numbers = [f.number for f in decoding.frames if f.pts < switch_pts]
        new_numbers = [f.number for f in decoding.frames if f.pts >= switch_pts]
        frame_steps(old_numbers, codec)
        frame_steps(new_numbers, codec)
        assert new_numbers[0] in shared_clip(codec).keyframe_indices
        assert [f.pts for f in decoding.frames] == sorted({f.pts for f in decoding.frames})
        assert stage.hub.stats()["broadcasters_seen"] == 2
        # The load tool's viewer saw one stream: no SSRC change, nothing lost or repeated.
        await tool.close()
        assert tool.video.first_frame_keyframe is True
        assert tool.video.keyframes >= 2 and tool.video.frames >= 25
        for counter in (tool.video, tool.audio):
            assert (counter.ssrc_changes, counter.lost, counter.duplicates) == (0, 0, 0)
        await second.close()
        await stage.app[STATE_RECORDER].idle.wait()
        assert await admin_actions(store, stage.session_id) == [
            "session_created",
            "broadcast_live",
            "broadcast_paused",
        ], "a takeover is no pause"


# --- drop-out, resume, end ------------------------------------------------------------------


async def test_broadcaster_drop_out_pauses_and_a_new_one_resumes(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path, now, "vp8") as stage:
        csrf = await stage.log_in_organiser()
        watcher = await stage.watch()
        assert await stage.session_state() == "scheduled"
        first = await stage.publish()
        await wait_for(lambda: len(watcher.of("video")) >= 10, 10, "video")
        assert await stage.session_state() == "live"

        # A broadcaster that hangs up (DELETE): paused, and the viewer stays connected.
        await first.close()
        assert first.close_error is None
        assert stage.hub.state == "paused"
        await wait_until_state(stage, "paused")
        count = len(watcher.packets)
        await asyncio.sleep(0.3)
        assert len(watcher.packets) == count, "nothing is sent while paused"
        assert watcher.pc.connectionState == "connected"
        assert len(stage.hub.viewers) == 1

        second = await stage.publish()
        resumed_at = time.monotonic()
        await wait_until_state(stage, "live")
        await wait_for(
            lambda: sum(p.at > resumed_at for p in watcher.of("video")) >= 10, 10, "video again"
        )
        starts_with_keyframe(watcher, "vp8", after=resumed_at)
        assert_continuous(watcher.of("video"))

        # A broadcaster whose media stops (the network went away) counts as gone after the
        # silence limit, and as back when its media flows again.
        sender = video_sender(second)
        audio_sender = next(t.sender for t in second.pc.getTransceivers() if t.kind == "audio")
        sender._enabled = audio_sender._enabled = False
        silent_for = await wait_until_state(stage, "paused", within=8)
        assert watcher.pc.connectionState == "connected"
        sender._enabled = audio_sender._enabled = True
        await wait_until_state(stage, "live", within=4)

        # A broadcaster that just closes its peer (no DELETE) is gone at once.
        await second.pc.close()
        closed_for = await wait_until_state(stage, "paused", within=3)

        # Ending the session closes every viewer; nobody may join again.
        r = await stage.client.post(
            f"/api/sessions/{stage.session_id}/end", headers={"X-CSRF-Token": csrf}
        )
        assert r.status == 200, await r.text()
        await wait_for(lambda: watcher.pc.connectionState == "closed", 5, "viewer closed")
        # The ended session's hub is closed and forgotten; the store says it ended.
        assert stage.session_id not in stage.app[RELAY].sessions
        assert (await (await stage.client.get(f"/api/sessions/{stage.session_id}")).json())[
            "state"
        ] == "ended"
        r = await stage.client.post(
            f"/whep/{stage.session_id}",
            data=watcher.pc.localDescription.sdp,
            headers={
                "Authorization": f"Bearer {stage.viewer_token}",
                "Content-Type": "application/sdp",
            },
        )
        assert r.status == 409
        assert await r.json() == {
            "error": "session_ended",
            "detail": f"study session {stage.session_id} has ended",
        }
        await stage.app[STATE_RECORDER].idle.wait()
        assert await admin_actions(store, stage.session_id) == [
            "session_created",
            "broadcast_live",
            "broadcast_paused",
            "broadcast_live",
            "broadcast_paused",
            "broadcast_live",
            "broadcast_paused",
            "session_ended",
        ]
        print(f"silence noticed after {silent_for:.1f} s, a closed peer after {closed_for:.2f} s")


async def wait_until_state(stage: Stage, state: str, within: float = 5) -> float:
    started = time.monotonic()
    while (current := await stage.session_state()) != state:
        if time.monotonic() - started > within:
            raise AssertionError(f"session state is {current!r}, not {state!r}, after {within} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


# --- keyframe requests and retransmissions ---------------------------------------------------


@SQLITE_ONLY
async def test_keyframe_requests_of_many_joining_viewers_are_coalesced(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path, now, "h264") as stage:
        publication = await stage.publish()
        sender = video_sender(publication)
        keyframe_request = sender._send_keyframe
        plis: list[float] = []

        def counting() -> None:
            plis.append(time.monotonic())
            keyframe_request()

        sender._send_keyframe = counting
        await wait_for(lambda: stage.hub.ingest and stage.hub.ingest.video_ssrc, 10, "video in")
        joined_at = time.monotonic()
        watchers = await asyncio.gather(*(stage.watch() for _ in range(10)))
        await wait_for(lambda: all(w.of("video") for w in watchers), 10, "video everywhere")
        await asyncio.sleep(0.5)  # let the last PLI arrive

        asked = stage.hub.stats()["keyframe_requests"]
        span = time.monotonic() - joined_at
        assert asked["asked"] >= 10, asked
        assert len(plis) == asked["sent"] == stage.hub.ingest.plis_sent
        gaps = [b - a for a, b in itertools.pairwise(plis)]
        assert all(g >= MIN_INTERVAL_S - 0.05 for g in gaps), gaps
        assert len([t for t in plis if t - plis[0] < MIN_INTERVAL_S]) <= 2
        assert len(plis) <= 1 + span / MIN_INTERVAL_S
        for w in watchers:
            starts_with_keyframe(w, "h264")
        print(f"{asked['asked']} keyframe requests -> {len(plis)} PLIs in {span:.2f} s")


@SQLITE_ONLY
async def test_a_lost_packet_is_resent_on_the_viewers_nack(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path, now, "vp8") as stage:
        await stage.publish()
        watcher = await stage.watch()
        await wait_for(lambda: len(watcher.of("video")) >= 20, 10, "20 video packets")
        viewer = stage.hub.viewers[watcher.resource_url.rsplit("/", 1)[1]]  # type: ignore[union-attr]
        assert (viewer.nacks_received, viewer.retransmitted) == (0, 0)

        # The network loses a packet; aiortc's receiver NACKs it when the next one arrives.
        target = (watcher.of("video")[-1].seq + 3) & 0xFFFF
        lost = await asyncio.wait_for(watcher.lose(target), 5)
        await wait_for(
            lambda: any(p.seq == target for p in watcher.of("video")), 3, "the retransmission"
        )
        video = watcher.of("video")
        resent = next(i for i, p in enumerate(video) if p.seq == target)
        assert video[resent - 1].seq != (target - 1) & 0xFFFF, "it came late, out of order"
        again = video[resent]
        assert (again.ssrc, again.timestamp, again.marker) == (
            lost.ssrc,
            lost.timestamp,
            lost.marker,
        )
        assert [p.seq for p in video].count(target) == 1
        assert viewer.nacks_received >= 1 and viewer.retransmitted == 1
        steps = sequence_steps(sorted(video, key=lambda p: (p.seq - video[0].seq) & 0xFFFF))
        assert set(steps) == {1}, "in sequence order nothing is missing"

        # A NACK for a packet this viewer was never sent is not answered.
        nacks = viewer.nacks_received
        never = (video[0].seq - 3) & 0xFFFF
        await watcher.send_nack([never])
        await wait_for(lambda: viewer.nacks_received == nacks + 1, 3, "the NACK")
        assert viewer.retransmitted == 1
        assert stage.hub.stats()["viewer_feedback"]["retransmitted"] == 1

        # What is kept for NACKs adds nothing per packet for the cycle collector to walk.
        headers, payloads = viewer._history["video"]
        kept = [x for x in (*headers, *payloads) if x is not None]
        assert len(kept) >= 40 and not any(gc.is_tracked(x) for x in kept)


@SQLITE_ONLY
async def test_media_goes_out_on_the_wire_not_through_aiortcs_coroutines(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path, now, "vp8") as stage:
        await stage.publish()
        watcher = await stage.watch()
        await wait_for(lambda: len(watcher.of("video")) >= 10, 10, "10 video packets")
        viewer = stage.hub.viewers[watcher.resource_url.rsplit("/", 1)[1]]  # type: ignore[union-attr]
        wires = set(map(id, viewer._wires.values()))
        assert len(wires) == 1 and viewer._wires["video"].usable()  # BUNDLE: one for both kinds

        through_aiortc: list[bytes] = []
        for kind, send in list(viewer._send_rtp.items()):

            async def counted(data: bytes, send: Any = send) -> None:
                through_aiortc.append(data)
                await send(data)

            viewer._send_rtp[kind] = counted
        before = (len(watcher.of("video")), len(watcher.of("audio")))
        sent_before = viewer.streams["video"].packets
        await wait_for(
            lambda: (
                len(watcher.of("video")) >= before[0] + 30
                and len(watcher.of("audio")) >= before[1] + 10
            ),
            10,
            "more media",
        )
        # The real aiortc receiver decrypted them all: the wire's SRTP is the transport's.
        assert through_aiortc == []
        assert viewer.streams["video"].packets - sent_before >= 30
        assert viewer._wires["video"].dropped == 0
        video = watcher.of("video")[before[0] :]
        assert set(sequence_steps(video)) == {1}


def test_moved_aiortc_internals_are_named_at_the_first_viewer() -> None:
    class Changed:  # what a later aiortc could look like: no DTLS state, no ICE connection
        transport = None

    with pytest.raises(AiortcChanged, match=r"RTCDtlsTransport\._state"):
        check_internals(Changed())  # type: ignore[arg-type]


# --- nothing leaks ---------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _peers() -> int:
    return sum(isinstance(o, RTCPeerConnection) for o in gc.get_objects())


@SQLITE_ONLY
async def test_connect_close_cycles_leave_nothing_behind(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    cycles, connected_every = 200, 1
    async with relay_stage(store, tmp_path, now, "vp8") as stage:
        await stage.publish()
        url, token_ = stage.url(f"/whep/{stage.session_id}"), stage.viewer_token

        async def cycle(i: int) -> None:
            if i % 10 == 9:  # now and then a viewer that just goes away, without a DELETE
                watcher = Watcher()
                await watcher.start(stage.http, url, token_)
                await watcher.wait_connected()
                await watcher.close()
                return
            viewer = CountingViewer(url, token_, http=stage.http)
            try:
                await viewer.start()
                if i % connected_every == 0:
                    await wait_for(
                        lambda: viewer.pc is not None and viewer.pc.connectionState == "connected",
                        10,
                        "the viewer connected",
                    )
            finally:
                await viewer.close()
            assert viewer.close_error is None

        for i in range(5):  # warm up: first use of executors, caches, the hub's watch task
            await cycle(i)
        # The recorder's file is opened by its first write, once the segment's audio is placed.
        segment = tmp_path / "data" / "recordings" / str(stage.session_id) / "0.webm"
        await wait_for(segment.exists, 10, "the recording's file")
        # Fill the store's read pool (a thread and files per SQLite connection): background
        # readers may otherwise open another pooled connection during the cycles.
        async with contextlib.AsyncExitStack() as pool:
            for _ in range(store.read_engine.pool.size()):  # type: ignore[attr-defined]
                connection = await pool.enter_async_context(store.read_engine.connect())
                await connection.exec_driver_sql("SELECT count(*) FROM admin_events")
        await asyncio.sleep(0.5)
        gc.collect()
        baseline = (_open_fds(), len(asyncio.all_tasks()), threading.active_count(), _peers())
        started = time.monotonic()
        for i in range(cycles):
            await cycle(i)
        elapsed = time.monotonic() - started

        last: list[tuple[int, int, int, int]] = []

        def settled() -> bool:
            gc.collect()
            last[:] = [(_open_fds(), len(asyncio.all_tasks()), threading.active_count(), _peers())]
            return last[0] == baseline

        try:
            await wait_for(settled, 10, "fds, tasks, threads and peers back to the baseline", 0.2)
        finally:
            print(f"{cycles} cycles in {elapsed:.1f} s; (fds, tasks, threads, peers) {baseline}")
            if last and last[0] != baseline:
                print("now", last[0], [t.get_coro() for t in asyncio.all_tasks()])
        assert stage.hub.viewers == {}
        assert stage.app[RELAY].viewer_count == 0
        assert stage.hub.viewers_served == cycles + 5
        assert elapsed < 60


# --- WHIP/WHEP errors: status, JSON body, CORS -------------------------------------------------


async def offer_sdp(video: list[str] | None = None, direction: str = "recvonly") -> str:
    """A real aiortc offer (video and audio, recvonly: a viewer's), optionally limited to some
    video codecs."""
    pc = RTCPeerConnection(rtc_configuration())
    try:
        transceiver = pc.addTransceiver("video", direction=direction)
        if video is not None:
            caps = [c for c in transceiver.receiver.getCapabilities("video").codecs]
            transceiver.setCodecPreferences([c for c in caps if c.name in video])
        pc.addTransceiver("audio", direction=direction)
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


@pytest.fixture
async def stage(store: Store, tmp_path: Path, now: datetime) -> AsyncIterator[Stage]:
    async with relay_stage(store, tmp_path, now, "vp8") as s:
        yield s


async def answer(stage: Stage, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    headers = kwargs.pop("headers", {})
    auth = kwargs.pop("auth", None)
    if auth is not None:
        headers["Authorization"] = f"Bearer {auth}"
    if "data" in kwargs:
        headers.setdefault("Content-Type", "application/sdp")
    r = await stage.client.request(method, path, headers=headers, **kwargs)
    assert r.headers.get("Access-Control-Allow-Origin") == "*", (method, path, r.status)
    if r.headers.get("Content-Type", "").startswith("application/json"):
        return r.status, await r.json()
    return r.status, await r.text()


async def test_whip_and_whep_errors(stage: Stage, now: datetime) -> None:
    sid = stage.session_id
    other = await create_study_session(stage.store, now, "vp8")
    offer = await offer_sdp()
    h264_only = await offer_sdp(["H264"])
    broadcaster = stage.token(TokenRole.BROADCASTER)
    viewer = stage.viewer_token
    expired = stage.token(TokenRole.VIEWER, ttl=timedelta(days=-1))
    forged = stage.token(TokenRole.VIEWER, secret="another-secret-0123456789abcdefghijklmn")
    whep, whip = f"/whep/{sid}", f"/whip/{sid}"
    no_media = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    too_large = offer + "a=x-pad:" + "x" * MAX_SDP_BYTES + "\r\n"
    vp8_only = "this session's video is VP8, which the {} does not offer (offered: H264)"

    cases: list[tuple[str, str, dict[str, Any], tuple[int, str, str]]] = [
        ("POST", whep, {"data": offer}, (401, "missing_token", "a bearer token is required")),
        (
            "POST",
            whep,
            {"data": offer, "headers": {"Authorization": f"Basic {viewer}"}},
            (401, "missing_token", "a bearer token is required"),
        ),
        (
            "POST",
            whep,
            {"data": offer, "auth": "abc"},
            (401, "invalid_token", "the token is not valid: Not enough segments"),
        ),
        (
            "POST",
            whep,
            {"data": offer, "auth": forged},
            (401, "invalid_token", "the token is not valid: Signature verification failed"),
        ),
        (
            "POST",
            whep,
            {"data": offer, "auth": expired},
            (401, "token_expired", "the token has expired"),
        ),
        (
            "POST",
            whep,
            {"data": offer, "auth": broadcaster},
            (
                403,
                "wrong_role",
                "a broadcaster token cannot do this (needs: member, venue, viewer)",
            ),
        ),
        (
            "POST",
            whip,
            {"data": offer, "auth": viewer},
            (403, "wrong_role", "a viewer token cannot do this (needs: broadcaster)"),
        ),
        (
            "POST",
            f"/whep/{other}",
            {"data": offer, "auth": viewer},
            (403, "wrong_session", f"this token is for session {sid}, not {other}"),
        ),
        (
            "POST",
            "/whep/999",
            {"data": offer, "auth": stage.token(TokenRole.VIEWER, 999)},
            (404, "not_found", "no study session 999"),
        ),
        (
            "POST",
            "/whip/abc",
            {"data": offer, "auth": broadcaster},
            (404, "not_found", "no study session 'abc'"),
        ),
        (
            "POST",
            whep,
            {"data": offer, "auth": viewer, "headers": {"Content-Type": "application/json"}},
            (
                415,
                "unsupported_media_type",
                "the offer must be sent as application/sdp, not application/json",
            ),
        ),
        (
            "POST",
            whip,
            {"data": offer, "auth": broadcaster, "headers": {"Content-Type": "text/plain"}},
            (
                415,
                "unsupported_media_type",
                "the offer must be sent as application/sdp, not text/plain",
            ),
        ),
        (
            "POST",
            whip,
            {"data": too_large, "auth": broadcaster},
            (413, "body_too_large", "the SDP offer is larger than 32 KiB"),
        ),
        ("POST", whep, {"data": "", "auth": viewer}, (400, "bad_sdp", "the SDP offer is empty")),
        (
            "POST",
            whep,
            {"data": "hello", "auth": viewer},
            (400, "bad_sdp", "the body is not an SDP offer (it must start with v=0)"),
        ),
        (
            "POST",
            whep,
            {"data": no_media, "auth": viewer},
            (400, "bad_sdp", "the SDP offer has no media sections"),
        ),
        (
            "POST",
            whep,
            {"data": h264_only, "auth": viewer},
            (400, "unsupported_codec", vp8_only.format("viewer")),
        ),
        (
            "POST",
            whip,
            {"data": h264_only, "auth": broadcaster},
            (400, "unsupported_codec", vp8_only.format("broadcaster")),
        ),
        (
            "POST",
            whip,
            {"data": offer, "auth": broadcaster},
            (
                400,
                "bad_sdp",
                "the broadcaster's offer does not send video (it is recvonly): a WHIP offer "
                "is sendonly",
            ),
        ),
        (
            "POST",
            f"{whip}?reconnect=a%20b",
            {"data": offer, "auth": broadcaster},
            (
                400,
                "invalid_input",
                "reconnect must be the resource id of this client's previous connection (the "
                "last part of its Location)",
            ),
        ),
        (
            "DELETE",
            f"{whep}/nope",
            {"auth": viewer},
            (404, "not_found", f"no resource 'nope' in session {sid}"),
        ),
        (
            "DELETE",
            f"{whip}/nope",
            {"auth": broadcaster},
            (404, "not_found", f"no resource 'nope' in session {sid}"),
        ),
        ("DELETE", f"{whep}/nope", {}, (401, "missing_token", "a bearer token is required")),
    ]
    got = []
    for method, path, request, _ in cases:
        status, body = await answer(stage, method, path, **request)
        got.append((method, path, (status, body["error"], body["detail"])))
    assert got == [(method, path, expected) for method, path, _, expected in cases]
    assert stage.hub.viewers == {} and stage.hub.ingest is None
    assert stage.hub.state == "waiting"


async def test_whep_resource_delete_and_methods(stage: Stage, now: datetime) -> None:
    sid = stage.session_id
    other = await create_study_session(stage.store, now, "vp8")
    watcher = Watcher()
    stage.watchers.append(watcher)
    await watcher.start(stage.http, stage.url(f"/whep/{sid}"), stage.token(TokenRole.MEMBER))
    path = URL(str(watcher.resource_url)).path
    assert path.startswith(f"/whep/{sid}/")
    assert stage.hub.stats()["viewers"] == {"total": 1, "by_kind": {"member": 1}}

    for method in ("GET", "PUT", "PATCH", "POST"):
        r = await stage.client.request(method, path, headers={"Content-Type": "application/sdp"})
        assert r.status == 405, method
        assert r.headers["Allow"] == "DELETE,OPTIONS"
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert await r.json() == {
            "error": "method_not_allowed",
            "detail": f"{method} is not allowed on {path}; allowed: DELETE, OPTIONS",
        }
    for method in ("GET", "DELETE"):
        r = await stage.client.request(method, f"/whep/{sid}")
        assert r.status == 405, method
        assert r.headers["Allow"] == "OPTIONS,POST"
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert await r.json() == {
            "error": "method_not_allowed",
            "detail": f"{method} is not allowed on /whep/{sid}; allowed: OPTIONS, POST",
        }

    for options_path in (f"/whep/{sid}", f"/whip/{sid}", path):
        r = await stage.client.options(options_path)
        assert r.status == 204
        assert {
            k: r.headers.get(k)
            for k in (
                "Access-Control-Allow-Origin",
                "Access-Control-Allow-Methods",
                "Access-Control-Allow-Headers",
                "Access-Control-Expose-Headers",
                "Accept-Post",
            )
        } == {
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
            "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Post",
            "Accept-Post": "application/sdp",
        }

    assert await answer(stage, "DELETE", path, auth=stage.token(TokenRole.VIEWER, other)) == (
        403,
        {"error": "wrong_session", "detail": f"this token is for session {other}, not {sid}"},
    )
    assert await answer(stage, "DELETE", path, auth=stage.token(TokenRole.BROADCASTER)) == (
        403,
        {
            "error": "wrong_role",
            "detail": "a broadcaster token cannot do this (needs: member, venue, viewer)",
        },
    )
    assert len(stage.hub.viewers) == 1
    assert await answer(stage, "DELETE", path, auth=stage.token(TokenRole.MEMBER)) == (200, "")
    assert stage.hub.viewers == {}
    resource = path.rsplit("/", 1)[1]
    assert await answer(stage, "DELETE", path, auth=stage.token(TokenRole.MEMBER)) == (
        404,
        {"error": "not_found", "detail": f"no resource {resource!r} in session {sid}"},
    )


async def test_whip_and_whep_refuse_an_ended_session(stage: Stage, now: datetime) -> None:
    async with stage.store.write() as db:
        await end_session(db, stage.session_id, now=now, actor="test")
    offer = await offer_sdp()
    ended = {"error": "session_ended", "detail": f"study session {stage.session_id} has ended"}
    for path, role in (("whip", TokenRole.BROADCASTER), ("whep", TokenRole.VENUE)):
        got = await answer(
            stage, "POST", f"/{path}/{stage.session_id}", data=offer, auth=stage.token(role)
        )
        assert got == (409, ended)


@SQLITE_ONLY
async def test_whep_is_503_with_retry_after_when_the_node_is_full(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path, now, "vp8", max_viewers=1) as stage:
        first = await stage.watch(connect=False)
        offer = await offer_sdp()
        path = f"/whep/{stage.session_id}"
        headers = {
            "Authorization": f"Bearer {stage.viewer_token}",
            "Content-Type": "application/sdp",
        }
        r = await stage.client.post(path, data=offer, headers=headers)
        assert r.status == 503
        assert r.headers["Retry-After"] == "30"
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert await r.json() == {
            "error": "overloaded",
            "detail": "this node serves its maximum of 1 viewers",
        }
        await first.hang_up(stage.http, stage.viewer_token)
        r = await stage.client.post(path, data=offer, headers=headers)
        assert r.status == 201, await r.text()
        assert r.content_type == "application/sdp"
        assert r.headers["Location"].startswith(f"/whep/{stage.session_id}/")


@SQLITE_ONLY
async def test_watch_waits_as_long_as_a_full_node_asks_then_plays(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path, now, "vp8", max_viewers=1) as stage:
        await stage.publish()
        first = await stage.watch(connect=False)  # the node's one place
        waits: list[float] = []
        said: list[str] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 1:  # the place frees while the player waits
                await first.hang_up(stage.http, stage.viewer_token)

        url = stage.url(f"/whep/{stage.session_id}")
        player = Player(
            stage.http,
            parse_target(url, stage.viewer_token),
            stage.viewer_token,
            say=said.append,
            sleep=sleep,
        )
        task = asyncio.create_task(player.run())
        try:
            await wait_for(lambda: player.status.frames > 10, 20, "frames after the wait")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # The first refusal's Retry-After (30 s), not the first backoff (1 s); then it played.
        assert waits == [RETRY_AFTER_FULL_S]
        assert len(said) == 1 and said[0].startswith("the server asked to try again in 30 s:")
        assert "HTTP 503 overloaded" in said[0] and "maximum of 1 viewers" in said[0]
        assert player.status.state == "playing"


@SQLITE_ONLY
async def test_watch_waiting_out_a_retry_after_stops_when_the_session_ends(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    """A full node asks for 30 s; the session ending meanwhile (as its event stream tells the
    player) ends the watch at once, not after the wait."""
    async with relay_stage(store, tmp_path, now, "vp8", max_viewers=1) as stage:
        await stage.watch(connect=False)  # the node's one place
        url = stage.url(f"/whep/{stage.session_id}")
        player = Player(stage.http, parse_target(url, stage.viewer_token), stage.viewer_token)
        task = asyncio.create_task(player.run())
        try:
            await wait_for(lambda: "503" in player.status.last_error, 10, "the refusal")
            await asyncio.sleep(0.5)  # well into the 30 s wait
            assert not task.done()
            started = time.monotonic()
            player.liveness.session_state("ended", started)  # what the event stream reports
            await asyncio.wait_for(task, 5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert time.monotonic() - started < 2
        assert player.status.state == "ended"


@SQLITE_ONLY
async def test_a_reconnect_of_a_broadcaster_taken_over_is_refused(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    """Two devices broadcasting one session must not take it from each other for ever: a
    reconnect names the connection it replaces, and is refused if another one took it over."""
    async with relay_stage(store, tmp_path, now, "vp8") as stage:
        first = await stage.publish()
        await first.wait_connected(10)
        second = await stage.publish()  # another device (a WHIP client naming nothing)
        await second.wait_connected(10)
        a, b = (URL(p.resource_url).name for p in (first, second))
        whip = f"/whip/{stage.session_id}"
        token = stage.token(TokenRole.BROADCASTER)
        offer = await offer_sdp(direction="sendonly")

        async def reconnect(query: str) -> tuple[int, Any]:
            return await answer(stage, "POST", f"{whip}?{query}", data=offer, auth=token)

        status, body = await reconnect(f"reconnect={a}")
        assert status == 409 and body["error"] == "taken_over", body
        assert f"took session {stage.session_id} over" in body["detail"]
        assert stage.hub.ingest is not None and stage.hub.ingest.resource_id == b
        # A malformed name is refused as such, before anything is negotiated.
        for bad in ("reconnect=", "reconnect=../x", "reconnect=" + "x" * 65):
            status, body = await reconnect(bad)
            assert (status, body["error"]) == (400, "invalid_input"), (bad, body)
            assert "reconnect must be the resource id" in body["detail"]
        # The current broadcaster's own reconnect (cut off, not replaced) replaces it as ever,
        # and does not mark it taken over: its next reconnect is accepted too.
        status, _ = await reconnect(f"reconnect={b}")
        assert status == 201
        c = stage.hub.ingest.resource_id
        assert b not in stage.hub.taken_over and a in stage.hub.taken_over
        status, _ = await reconnect(f"reconnect={c}")
        assert status == 201
        # A plain offer (a new start, or OBS) takes the session whoever has it.
        status, _ = await answer(stage, "POST", whip, data=offer, auth=token)
        assert status == 201
        assert stage.hub.broadcasters_seen == 5
        # A connection the relay dropped (a device cut off for long), then a new start: the
        # dropped one's reconnect is refused too, not handed the session back.
        dropped = stage.hub.ingest
        assert dropped is not None
        await dropped.close()
        await wait_for(lambda: stage.hub.ingest is None, 5, "the relay to drop the connection")
        status, _ = await answer(stage, "POST", whip, data=offer, auth=token)
        assert status == 201
        status, body = await reconnect(f"reconnect={dropped.resource_id}")
        assert (status, body["error"]) == (409, "taken_over"), body


# --- defects found by these tests, fixed since ----------------------------------------------


@SQLITE_ONLY
@pytest.mark.parametrize(
    "codec",
    ["vp8", "h264"],
)
async def test_the_broadcaster_stats_count_each_frame_and_keyframe_once(
    store: Store, tmp_path: Path, now: datetime, codec: str
) -> None:
    clip = shared_clip(codec)
    async with relay_stage(store, tmp_path, now, codec) as stage:
        publication = await stage.publish()  # nobody watches, so nobody asks for keyframes
        await wait_for(lambda: publication.video.packets_sent > 2 * clip.gop_frames, 10, "2 GOPs")
        seen: dict[str, int] = {}

        def caught_up() -> bool:
            ingest = stage.hub.ingest
            assert ingest is not None
            sent = publication.video.packets_sent
            seen.update(sent=sent, frames=ingest.frames_in, keyframes=ingest.keyframes_in)
            return ingest.frames_in == sent

        await wait_for(caught_up, 5, "the relay to get every frame sent")
        assert publication.video.jumps == 0
        keyframes_sent = sum(p.keyframe for p in clip.video[: seen["sent"]])
        assert seen["keyframes"] == keyframes_sent, seen


@SQLITE_ONLY
async def test_concurrent_offers_cannot_take_the_node_over_its_viewer_cap(
    store: Store, tmp_path: Path, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with relay_stage(store, tmp_path, now, "vp8", max_viewers=1) as stage:
        offers = [await offer_sdp() for _ in range(3)]
        # A busy machine: ICE gathering (part of every answer) takes a little while.
        gather = aioice.ice.Connection.gather_candidates

        async def slow_gather(self: aioice.ice.Connection) -> None:
            await asyncio.sleep(0.2)
            await gather(self)

        monkeypatch.setattr(aioice.ice.Connection, "gather_candidates", slow_gather)
        headers = {
            "Authorization": f"Bearer {stage.viewer_token}",
            "Content-Type": "application/sdp",
        }
        responses = await asyncio.gather(
            *(
                stage.client.post(f"/whep/{stage.session_id}", data=o, headers=headers)
                for o in offers
            )
        )
        statuses = sorted(r.status for r in responses)
        assert (statuses, stage.app[RELAY].viewer_count) == ([201, 503, 503], 1)


@SQLITE_ONLY
async def test_an_offer_that_arrives_in_pieces_is_read_whole(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path, now, "vp8") as stage:
        offer = (await offer_sdp()).encode()
        server = stage.client.server
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            head = (
                f"POST /whep/{stage.session_id} HTTP/1.1\r\nHost: {server.host}\r\n"
                f"Authorization: Bearer {stage.viewer_token}\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: {len(offer)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            writer.write(head + offer[:1400])  # what fits in one segment on most links
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(offer[1400:])
            await writer.drain()
            async with asyncio.timeout(10):
                response = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
        assert response.split(b"\r\n", 1)[0] == b"HTTP/1.1 201 Created", response[:300]
        assert len(stage.hub.viewers) == 1

        async def slowly() -> AsyncIterator[bytes]:  # chunked, no Content-Length
            yield offer
            for _ in range(32):
                await asyncio.sleep(0.01)
                yield b"a=x-pad:" + b"x" * 1024 + b"\r\n"

        status, body = await answer(
            stage, "POST", f"/whep/{stage.session_id}", data=slowly(), auth=stage.viewer_token
        )
        assert (status, body) == (
            413,
            {"error": "body_too_large", "detail": "the SDP offer is larger than 32 KiB"},
        )


def _without(sdp: str, *prefixes: str) -> str:
    return "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith(prefixes))


@SQLITE_ONLY
@pytest.mark.parametrize("damage", ["cut short", "no DTLS fingerprint", "no ICE credentials"])
async def test_offers_that_cannot_be_applied_are_a_400(
    store: Store, tmp_path: Path, now: datetime, damage: str
) -> None:
    async with relay_stage(store, tmp_path, now, "vp8") as stage:
        offer = await offer_sdp()
        damaged = {
            "cut short": offer[:1400],
            "no DTLS fingerprint": _without(offer, "a=fingerprint", "a=setup"),
            "no ICE credentials": _without(offer, "a=ice-ufrag", "a=ice-pwd"),
        }[damage]
        status, body = await answer(
            stage, "POST", f"/whep/{stage.session_id}", data=damaged, auth=stage.viewer_token
        )
        assert (status, body["error"]) == (400, "bad_sdp"), body
        assert stage.hub.viewers == {}


@SQLITE_ONLY
async def test_whep_answers_carry_the_broadcasters_h264_profile(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path, now, "h264") as stage:
        broadcaster = RTCPeerConnection(rtc_configuration())
        try:
            video = broadcaster.addTransceiver("video", direction="sendonly")
            video.setCodecPreferences(
                [
                    c
                    for c in video.sender.getCapabilities("video").codecs
                    if c.name == "H264" and c.parameters.get("profile-level-id") == "42001f"
                ]
            )
            broadcaster.addTransceiver("audio", direction="sendonly")
            await broadcaster.setLocalDescription(await broadcaster.createOffer())
            status, whip_answer = await answer(
                stage,
                "POST",
                f"/whip/{stage.session_id}",
                data=broadcaster.localDescription.sdp,
                auth=stage.token(TokenRole.BROADCASTER),
            )
            assert status == 201
            assert h264_profiles(whip_answer) == ["42001f"]
            viewer = await stage.watch(connect=False)  # offers both baseline profiles
            assert h264_profiles(viewer.answer_sdp) == ["42001f"]
        finally:
            await broadcaster.close()


def h264_profiles(sdp: str) -> list[str]:
    return re.findall(r"a=fmtp:\d+ .*profile-level-id=([0-9a-f]{6})", sdp)
