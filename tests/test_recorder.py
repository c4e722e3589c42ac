"""The recorder end to end: a clip published through the real relay, one broadcaster reconnect,
two segment files remuxed (never encoded) that decode completely, catalogued with offsets; and a
recorder killed with SIGKILL that leaves a readable file, completed by ``recover``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import signal
import sys
from datetime import datetime
from pathlib import Path

import av
import pytest
from recording_support import clip_packets, decoded_audio_seconds, decoded_numbers
from relay_support import (
    CLIP_FPS,
    clip_from,
    create_study_session,
    relay_stage,
    shared_clip,
    wait_for,
)
from sqlalchemy import select

from attendance.migrate import upgrade
from attendance.models import Recording
from attendance.store import Store
from recordings import Recordings, SegmentClosed, SegmentOpened, playlist, recover
from recordings.assembly import TrackAssembler

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
CODECS = pytest.mark.parametrize("codec", ["vp8", "h264"])
SEGMENT_S = 10.0


async def rows(store: Store, session_id: int) -> list[Recording]:
    async with store.read() as db:
        return list(
            await db.scalars(
                select(Recording)
                .where(Recording.session_id == session_id)
                .order_by(Recording.segment_index)
            )
        )


@SQLITE_ONLY
@CODECS
async def test_a_session_with_a_reconnect_records_two_whole_segments(
    store: Store, tmp_path: Path, now: datetime, codec: str
) -> None:
    clip = shared_clip(codec)
    resume_at = round(SEGMENT_S * CLIP_FPS)  # a keyframe: the clip has one every second
    assert resume_at in clip.keyframe_indices
    data_dir = tmp_path / "data"
    async with relay_stage(store, tmp_path, now, codec) as stage:
        recordings = Recordings(store, data_dir, lambda: now)
        recordings.start()
        try:
            assert await recordings.attach(stage.hub) is not None
            assert await recordings.attach(stage.hub) is not None  # idempotent
            assert len(stage.hub.taps) == 1
            # A broadcaster's timestamps follow its capture clock: after a stall of this busy
            # process its packets burst out instead of the schedule moving (max_lag).
            first = await stage.publish(max_lag=math.inf)
            await asyncio.sleep(SEGMENT_S)
            second = await stage.publish(clip_from(clip, resume_at), max_lag=math.inf)
            sent_first = first.video.packets_sent  # the old connection is closed by now
            await asyncio.sleep(SEGMENT_S)
            sent_second = second.video.packets_sent
            await second.close()
            await wait_for(lambda: len(recordings.events) == 4, 15, "both segments catalogued")
        finally:
            await recordings.close()

    # Each segment is opened then closed (the second may open before the first has closed).
    events = sorted(recordings.events, key=lambda e: e.segment_index)
    assert [(type(e), e.segment_index) for e in events] == [
        (SegmentOpened, 0),
        (SegmentClosed, 0),
        (SegmentOpened, 1),
        (SegmentClosed, 1),
    ]
    assert first.video.jumps == second.video.jumps == 0
    # aiortc's sender reports (one clock for both tracks) placed each segment's audio.
    closed = [e for e in events if isinstance(e, SegmentClosed)]
    assert [e.audio_placed_by for e in closed] == ["sender reports"] * 2
    published = set(range(sent_first)) | set(range(resume_at, resume_at + sent_second))
    published_s = (sent_first + sent_second) / CLIP_FPS

    catalogued = await rows(store, stage.session_id)
    ext = "webm" if codec == "vp8" else "mkv"
    container = "webm" if codec == "vp8" else "matroska"
    assert [
        (r.segment_index, r.path, r.container, r.video_codec, r.audio_codec) for r in catalogued
    ] == [(i, f"recordings/{stage.session_id}/{i}.{ext}", container, codec, "opus") for i in (0, 1)]
    recorded: list[int] = []
    for row in catalogued:
        path = data_dir / row.path
        body = path.read_bytes()
        assert row.size_bytes == len(body)
        assert row.sha256 == hashlib.sha256(body).hexdigest()
        assert row.ended_at is not None and row.duration_s is not None
        assert row.ended_at > row.started_at
        numbers = decoded_numbers(path)
        assert numbers == sorted(numbers), "frames in order"
        assert numbers[0] in clip.keyframe_indices, "each segment starts at a keyframe"
        with av.open(str(path)) as media:
            assert media.duration is not None
            assert abs(media.duration / 1e6 - row.duration_s) < 0.1
            assert [s.type for s in media.streams] == ["video", "audio"]
            assert media.streams.video[0].codec_context.name == codec
        assert abs(decoded_audio_seconds(path) - row.duration_s) < 0.5
        recorded += numbers
    present = published & set(recorded)
    assert len(present) >= 0.99 * len(published), (len(present), len(published))
    total = sum(r.duration_s or 0 for r in catalogued)
    assert abs(total - published_s) < 0.5, (total, published_s)

    async with store.read() as db:
        entries = await playlist(db, stage.session_id)
    assert [e.segment_index for e in entries] == [0, 1]
    assert entries[0].offset_s == 0.0
    # The second segment starts when the second connection did, by wall time.
    assert first.video.started_at is not None and second.video.started_at is not None
    between = second.video.started_at - first.video.started_at
    assert abs(entries[1].offset_s - between) < 0.5, (entries[1].offset_s, between)
    # ... after the first segment's content, which ends where the first connection stopped.
    assert entries[0].duration_s is not None
    assert entries[1].offset_s > entries[0].duration_s - 0.2, entries


@SQLITE_ONLY
async def test_a_session_with_recording_off_is_not_tapped(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    from sqlalchemy import update

    from attendance.models import StudySession

    async with relay_stage(store, tmp_path, now, "vp8") as stage:
        async with store.write() as db:
            await db.execute(
                update(StudySession)
                .where(StudySession.id == stage.session_id)
                .values(recording_enabled=False)
            )
        recordings = Recordings(store, tmp_path / "data", lambda: now)
        recordings.start()
        try:
            assert await recordings.attach(stage.hub) is None
            assert stage.hub.taps == []
        finally:
            await recordings.close()


def test_lost_packets_spoil_their_frame_and_mark_the_next() -> None:
    """The assembler gives out whole frames only, and flags the frame after a gap."""
    clip = shared_clip("vp8")
    video = [s.packet for s in clip_packets(clip) if s.packet.kind == "video"][:200]
    while not video[-1].marker:
        video.pop()
    lost = 40
    assembler = TrackAssembler("video", "vp8")
    frames = []
    # The packets two by two swapped (reordered on the way), one missing.
    order = [p for i, p in enumerate(video) if i != lost]
    frames += assembler.push(order[0])
    for i in range(1, len(order) - 1, 2):
        frames += assembler.push(order[i + 1]) + assembler.push(order[i])
    if len(order) % 2 == 0:
        frames += assembler.push(order[-1])
    frames += assembler.flush()
    starts = list(dict.fromkeys(p.timestamp for p in video))
    spoiled = starts.index(video[lost].timestamp)
    # The frame after a gap might have lost its first packet: it is not trusted either (it is a
    # delta frame here; a keyframe's first packet is recognised and would be kept).
    whole = starts[:spoiled] + starts[spoiled + 2 :]
    assert [f.timestamp for f in frames] == whole
    assert [f.timestamp for f in frames if f.after_loss] == [starts[spoiled + 2]]
    assert assembler.lost_packets == 1


@CODECS
async def test_a_killed_recorder_leaves_a_readable_file_that_recover_completes(
    tmp_path: Path, now: datetime, codec: str
) -> None:
    database_url = f"sqlite:///{tmp_path}/studycast.db"
    store = Store(database_url)
    await upgrade(store)
    data_dir = tmp_path / "data"
    try:
        session_id = await create_study_session(store, now, codec)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).parent / "recording_support.py"),
            "--database-url",
            database_url,
            "--data-dir",
            str(data_dir),
            "--session-id",
            str(session_id),
            "--codec",
            codec,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        fed, opened = -1, False
        async with asyncio.timeout(30):
            while fed < 4 * CLIP_FPS + 7 or not opened:  # ~4.5 s, mid-GOP
                line = (await process.stdout.readline()).decode()
                assert line, "the recorder process ended early"
                if line.startswith("FED "):
                    fed = int(line.split()[1])
                opened = opened or line.startswith("OPENED")
        process.send_signal(signal.SIGKILL)
        await process.wait()
        assert process.returncode == -signal.SIGKILL

        [row] = await rows(store, session_id)
        assert row.ended_at is None and row.sha256 is None
        path = data_dir / row.path
        numbers = decoded_numbers(path)
        assert numbers == list(range(len(numbers))), "a whole prefix of the clip"
        assert numbers[-1] >= fed - 2 * CLIP_FPS, (numbers[-1], fed)

        [done] = await recover(store, data_dir, now=now)
        assert done.segment_index == row.segment_index
        [row] = await rows(store, session_id)
        body = path.read_bytes()
        assert row.ended_at is not None and row.duration_s is not None
        assert (row.size_bytes, row.sha256) == (len(body), hashlib.sha256(body).hexdigest())
        assert abs(row.duration_s - len(numbers) / CLIP_FPS) < 0.2
        assert await recover(store, data_dir, now=now) == [], "nothing left open"
    finally:
        await store.close()
