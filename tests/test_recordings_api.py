"""The recordings API over a real two-segment recording made through the relay (a broadcast, a
reconnect): the catalogue, HTTP ranges, who may play and download, the whole session joined by
remuxing, and chapters on the recording's timeline; and the pure timeline mapping, exactly."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import av
from recording_support import decoded_numbers
from relay_support import (
    CLIP_FPS,
    PASSWORD,
    Stage,
    clip_from,
    relay_stage,
    shared_clip,
    wait_for,
)
from sqlalchemy import select

from attendance.models import (
    AdminEvent,
    Member,
    OrgUnit,
    PresenceCheck,
    QuizQuestion,
    Role,
    SessionState,
    StudySession,
)
from attendance.sessions import create_session, parse_draft
from attendance.store import Store
from attendance.users import add_user
from recordings import SegmentClosed
from recordings.playback import (
    Chapter,
    Moment,
    Placed,
    chapters,
    join_shifts,
    pauses,
    timeline_position,
    vtt_time,
    webvtt,
)
from server.tokens import TokenRole
from server.whip import RECORDINGS

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
SEGMENT_S = 3.0


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- the timeline, pure ------------------------------------------------------------------------

# Two segments: [0, 10) and, after a 2 s gap, [12, 20); then one still being written at 30.
SEGMENTS = [Placed(s(0), 0.0, 10.0), Placed(s(12), 12.0, 8.0)]


def test_wall_clock_moments_map_onto_the_recording_timeline() -> None:
    moments = [-5, 0, 3.25, 10, 11, 12, 15.5, 20, 21]
    assert [timeline_position(SEGMENTS, s(m)) for m in moments] == [
        0.0,  # before the first segment: its start
        0.0,
        3.25,
        10.0,
        12.0,  # in the gap: the next segment's start
        12.0,
        15.5,
        20.0,
        None,  # after the recording
    ]
    still_open = [*SEGMENTS, Placed(s(30), 30.0, None)]
    assert [timeline_position(still_open, s(m)) for m in (25, 31, 100)] == [30.0, 31.0, 100.0]
    assert timeline_position([], s(0)) is None


def test_chapters_are_placed_clamped_and_written_as_webvtt() -> None:
    moments = [
        Moment("quiz-2", "Which <one> & why?\nExplain.", s(14), s(16.5)),
        Moment("presence-7", "Presence check", s(5), s(11)),  # ends in the gap
        Moment("pause-1", "Broadcast paused", s(10.5), s(11.5)),  # entirely in the gap
        Moment("quiz-1", "Open question", s(18), None),  # never closed: to the end
        Moment("quiz-3", "After the end", s(25), s(30)),
    ]
    placed = chapters(SEGMENTS, moments)
    assert placed == [
        Chapter("presence-7", "Presence check", 5.0, 12.0),
        Chapter("pause-1", "Broadcast paused", 12.0, 12.001),
        Chapter("quiz-2", "Which <one> & why?\nExplain.", 14.0, 16.5),
        Chapter("quiz-1", "Open question", 18.0, 20.0),
    ]
    assert webvtt(placed) == (
        "WEBVTT\n\n"
        "presence-7\n00:00:05.000 --> 00:00:12.000\nPresence check\n\n"
        "pause-1\n00:00:12.000 --> 00:00:12.001\nBroadcast paused\n\n"
        "quiz-2\n00:00:14.000 --> 00:00:16.500\nWhich &lt;one&gt; &amp; why? Explain.\n\n"
        "quiz-1\n00:00:18.000 --> 00:00:20.000\nOpen question\n"
    )
    assert vtt_time(3723.4567) == "01:02:03.457"


def test_pauses_run_from_paused_to_the_next_live_or_end() -> None:
    changes = [(s(0), "live"), (s(5), "paused"), (s(6), "paused"), (s(9), "live")]
    changes += [(s(20), "paused"), (s(25), "ended"), (s(26), "paused")]
    assert pauses(changes) == [(s(5), s(9)), (s(20), s(25)), (s(26), None)]


def test_joined_segments_never_step_back() -> None:
    # The second segment's media runs 0.2 s past the third's wall-clock offset.
    assert join_shifts([0.0, 10.0, 15.0], [9.5, 5.2, 3.0]) == [0.0, 10.0, 15.2]


# --- the API over a real recording ---------------------------------------------------------------


async def _record_two_segments(stage: Stage) -> None:
    """A broadcast, then a reconnect from a keyframe on: two segments, both catalogued."""
    clip = shared_clip("vp8")
    resume_at = round(2 * SEGMENT_S * CLIP_FPS)
    assert resume_at in clip.keyframe_indices
    recordings = stage.app[RECORDINGS]
    first = await stage.publish()
    await wait_for(lambda: stage.hub.state == "live", 10, "live")
    await asyncio.sleep(SEGMENT_S)
    second = await stage.publish(clip_from(clip, resume_at))
    await asyncio.sleep(SEGMENT_S)
    await second.close()
    await first.pc.close()

    def closed() -> int:
        return sum(isinstance(e, SegmentClosed) for e in recordings.events)

    await wait_for(lambda: closed() == 2, 15, "both segments catalogued")


async def _world(store: Store, stage: Stage) -> dict[str, Any]:
    """A member of the session (``member:test``, as the stage's tokens name it), an auditor,
    and another session."""
    async with store.write() as db:
        unit = OrgUnit(name="北京", path="北京", depth=1, created_at=stage.now)
        db.add(unit)
        await db.flush()
        db.add(
            Member(
                member_no="test",
                name="测试",
                unit_id=unit.id,
                created_at=stage.now,
                updated_at=stage.now,
            )
        )
        await add_user(
            db, username="audrey", role=Role.AUDITOR, password=PASSWORD, now=stage.now, actor="t"
        )
        draft = parse_draft(
            {
                "title": "another",
                "scheduled_start": stage.now,
                "scheduled_end": stage.now + timedelta(hours=1),
                "video_codec": "vp8",
            }
        )
        other = await create_session(db, draft, now=stage.now, actor="t", user_id=None)
        return {"other_session": other.id}


async def _get(http: Any, url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url, **kwargs) as r:
        return r.status, dict(r.headers), await r.read()


async def test_the_recordings_api_over_a_real_recording(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path, now, "vp8") as stage:
        await stage.log_in_organiser()
        world = await _world(store, stage)
        await _record_two_segments(stage)
        sid = stage.session_id
        base = f"/api/sessions/{sid}/recordings"
        data_dir = tmp_path / "data"

        # The catalogue: two segments on one timeline, sizes and digests of the files.
        status, _, body = await _get(stage.http, stage.url(base))
        assert status == 200, body
        listing = json.loads(body)
        segments = listing["segments"]
        assert [
            (g["index"], g["deleted"], g["url"], g["container"], g["content_type"])
            for g in segments
        ] == [(i, False, f"{base}/{i}/file", "webm", "video/webm") for i in (0, 1)]
        assert (listing["chapters_url"], listing["download_url"]) == (
            f"{base}/chapters.vtt",
            f"{base}/download",
        )
        files = [data_dir / f"recordings/{sid}/{i}.webm" for i in (0, 1)]
        for g, path in zip(segments, files, strict=True):
            content = path.read_bytes()
            assert (g["size_bytes"], g["sha256"]) == (
                len(content),
                hashlib.sha256(content).hexdigest(),
            )
            assert (g["video_codec"], g["audio_codec"]) == ("vp8", "opus")
        first, second = segments
        assert first["offset_s"] == 0.0
        started = [datetime.fromisoformat(g["started_at"]) for g in segments]
        assert second["offset_s"] == round((started[1] - started[0]).total_seconds(), 3)
        assert abs(second["offset_s"] - SEGMENT_S) < 1.0
        assert listing["total_duration_s"] == round(second["offset_s"] + second["duration_s"], 3)

        # Ranges: exactly the bytes asked for.
        whole = files[0].read_bytes()
        size = len(whole)
        url = stage.url(f"{base}/0/file")
        status, headers, part = await _get(stage.http, url, headers={"Range": "bytes=0-99"})
        assert (status, headers["Content-Range"], part) == (206, f"bytes 0-99/{size}", whole[:100])
        assert headers["Content-Type"] == "video/webm"
        assert headers["Accept-Ranges"] == "bytes"
        assert headers["Content-Disposition"].startswith("inline; filename=")
        middle = (size // 3, size // 3 + 4095)
        status, headers, part = await _get(
            stage.http, url, headers={"Range": f"bytes={middle[0]}-{middle[1]}"}
        )
        assert (status, headers["Content-Range"], part) == (
            206,
            f"bytes {middle[0]}-{middle[1]}/{size}",
            whole[middle[0] : middle[1] + 1],
        )
        status, headers, part = await _get(stage.http, url, headers={"Range": "bytes=-500"})
        assert (status, headers["Content-Range"], part) == (
            206,
            f"bytes {size - 500}-{size - 1}/{size}",
            whole[-500:],
        )
        status, headers, _ = await _get(stage.http, url, headers={"Range": f"bytes={size}-"})
        assert (status, headers["Content-Range"]) == (416, f"bytes */{size}")
        status, _, part = await _get(stage.http, url)
        assert (status, part) == (200, whole)
        status, _, _ = await _get(stage.http, stage.url(f"{base}/7/file"))
        assert status == 404

        # A member of the session plays with ?token=; another session's token is refused, and
        # a member may not download.
        async with aiohttp.ClientSession() as anonymous:
            member = stage.token(TokenRole.MEMBER)
            status, _, part = await _get(
                anonymous, url, params={"token": member}, headers={"Range": "bytes=0-9"}
            )
            assert (status, part) == (206, whole[:10])
            status, _, _ = await _get(anonymous, stage.url(base), params={"token": member})
            assert status == 200
            elsewhere = stage.token(TokenRole.MEMBER, session_id=world["other_session"])
            status, _, body = await _get(anonymous, url, params={"token": elsewhere})
            assert status == 403, body
            status, _, _ = await _get(
                anonymous, stage.url(f"{base}/download"), params={"token": member}
            )
            assert status == 403
            status, _, _ = await _get(anonymous, stage.url(base))
            assert status == 401

        # Chapters: a question opened and closed during the second segment, a presence check
        # from the first segment past the end of the recording.
        async with store.write() as db:
            question = QuizQuestion(
                session_id=sid,
                position=1,
                prompt="What is 6 × 7?",
                options={"choices": ["42", "24"]},
                correct={"choices": [0]},
                opened_at=started[1] + timedelta(seconds=1),
                closes_at=started[1] + timedelta(seconds=31),
                closed_at=started[1] + timedelta(seconds=1.75),
            )
            check = PresenceCheck(
                session_id=sid,
                code="1234",
                opened_at=started[0] + timedelta(seconds=0.5),
                closes_at=started[0] + timedelta(seconds=60),
                announced_at=started[0] + timedelta(seconds=0.5),
            )
            db.add_all([question, check])
            await db.flush()
            check_id = check.id
        status, headers, body = await _get(stage.http, stage.url(f"{base}/chapters.vtt"))
        assert status == 200
        assert headers["Content-Type"].startswith("text/vtt")
        cues = re.findall(
            r"^(\S+)\n(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})\n(.+)$",
            body.decode(),
            re.MULTILINE,
        )
        assert body.decode().startswith("WEBVTT\n")
        offset = second["offset_s"]
        # The stage's clock stands still, so the relay's own state changes (the pause when the
        # broadcaster left) all sit before the recording; pauses are placed in the pure tests.
        assert [c for c in cues if not c[0].startswith("pause-")] == [
            (
                f"presence-{check_id}",
                "00:00:00.500",
                vtt_time(listing["total_duration_s"]),
                "Presence check",
            ),
            ("quiz-1", vtt_time(offset + 1), vtt_time(offset + 1.75), "What is 6 × 7?"),
        ]

        # Downloads: one segment as it is, and the whole session joined into one file.
        status, headers, part = await _get(stage.http, stage.url(f"{base}/download?segment=1"))
        assert (status, part) == (200, files[1].read_bytes())
        assert headers["Content-Disposition"].startswith("attachment;")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as auditor:
            r = await auditor.post(
                stage.url("/api/login"), json={"username": "audrey", "password": PASSWORD}
            )
            assert r.status == 200, await r.text()
            status, _, body = await _get(auditor, stage.url(base))
            assert status == 200
            status, headers, joined = await _get(auditor, stage.url(f"{base}/download"))
        assert status == 200
        assert headers["Content-Type"] == "video/webm"
        assert headers["Content-Disposition"].startswith("attachment;")
        path = tmp_path / "joined.webm"
        path.write_bytes(joined)
        expected = decoded_numbers(files[0]) + decoded_numbers(files[1])
        assert decoded_numbers(path) == expected, "every frame of both segments, in order"
        assert expected == sorted(expected)
        with av.open(str(path)) as media:
            assert [st.type for st in media.streams] == ["video", "audio"]
            assert media.duration is not None
            joined_s = media.duration / 1e6
        assert abs(joined_s - listing["total_duration_s"]) < 0.2, joined_s
        assert abs(joined_s - (first["duration_s"] + second["duration_s"])) < 1.0
        assert not any((data_dir / "tmp").iterdir()), "no scratch file left behind"

        async with store.read() as db:
            trail = list(
                await db.scalars(
                    select(AdminEvent)
                    .where(AdminEvent.action == "recording_downloaded")
                    .order_by(AdminEvent.id)
                )
            )
        assert [(e.actor, e.target, e.detail.get("segment")) for e in trail] == [
            ("user:olga", f"session:{sid}", 1),
            ("user:audrey", f"session:{sid}", None),
        ]
        assert trail[1].detail["segments"] == [0, 1]

        # Make-up presence checks: the check in the first segment is listed where members stop,
        # and each member gets a picture of their own code once the session has ended, where
        # the rule asks for it.
        status, _, body = await _get(stage.http, stage.url(base))
        listing = json.loads(body)
        assert listing["makeup_presence"] is False
        assert listing["presence_checks"] == [
            {
                "id": check_id,
                "at_s": 0.5,
                "segment": 0,
                "position_s": 0.5,
                "code_url": f"{base}/checks/{check_id}/code.png",
            }
        ]
        code_url = stage.url(f"{base}/checks/{check_id}/code.png")
        async with aiohttp.ClientSession() as anonymous:
            member = stage.token(TokenRole.MEMBER)
            status, _, body = await _get(anonymous, code_url, params={"token": member})
            assert status == 409, body  # the session is still running
            async with store.write() as db:
                session = await db.get(StudySession, sid)
                assert session is not None
                session.state = SessionState.ENDED
            status, _, body = await _get(anonymous, code_url, params={"token": member})
            assert (status, json.loads(body)["error"]) == (404, "not_found")  # not asked
            async with store.write() as db:
                session = await db.get(StudySession, sid)
                assert session is not None
                session.attendance_rule = {**session.attendance_rule, "makeup_presence": True}
            status, headers, body = await _get(anonymous, code_url, params={"token": member})
            assert (status, headers["Content-Type"], body[:8]) == (
                200,
                "image/png",
                b"\x89PNG\r\n\x1a\n",
            )
            status, _, _ = await _get(
                anonymous,
                stage.url(f"{base}/checks/{check_id + 1}/code.png"),
                params={"token": member},
            )
            assert status == 404
            status, _, body = await _get(anonymous, stage.url(base), params={"token": member})
            assert json.loads(body)["makeup_presence"] is True
        status, _, _ = await _get(stage.http, code_url)
        assert status == 403  # the organiser's code would be no member's code
