"""The recordings API: the catalogue of a session's segments, playback with HTTP ranges,
chapter markers, and downloads of one segment or the whole session.

Organisers, auditors and the session's members (their token, as a header or ``?token=`` for a
``<video src>``) may list and play; only staff may download, and every download is written to
the admin trail (``recording_downloaded``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from aiohttp import web
from sqlalchemy import select

from attendance.clock import as_utc
from attendance.errors import Conflict, InvalidInput, NotFound
from attendance.journal import record_admin_event
from attendance.makeup import (
    Segment,
    TimelineCheck,
    checks_in_recording,
    makeup_code,
    recorded_timeline,
)
from attendance.models import (
    AttendanceEvent,
    PresenceCheck,
    QuizQuestion,
    Recording,
    SessionState,
    StudySession,
)
from attendance.sessions import AttendanceRule, get_session
from recordings.playback import (
    Moment,
    Placed,
    chapters,
    join_files,
    pauses,
    timeline_end,
    webvtt,
)
from server.api import id_param
from server.auth import CLOCK, SETTINGS, STORE, token_or_login
from server.callers import AUDITOR, MEMBER, ORGANISER, Caller
from server.presence_api import render_code
from server.record_api import caller_for

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

VIEWERS = frozenset({ORGANISER, AUDITOR, MEMBER})
STAFF = frozenset({ORGANISER, AUDITOR})
CONTENT_TYPES = {"webm": "video/webm", "matroska": "video/x-matroska"}
EXTENSIONS = {"webm": "webm", "matroska": "mkv"}
_CHUNK = 1 << 20


def _base(session_id: int) -> str:
    return f"/api/sessions/{session_id}/recordings"


async def _segments(request: web.Request, session_id: int) -> list[Recording]:
    """Every catalogued segment of the session, deleted ones too, in order (404: no session)."""
    async with request.config_dict[STORE].read() as db:
        await get_session(db, session_id)
        return list(
            await db.scalars(
                select(Recording)
                .where(Recording.session_id == session_id)
                .order_by(Recording.segment_index)
            )
        )


def _placed(rows: list[Recording]) -> dict[int, Placed]:
    """The segments still kept, on the timeline (as ``catalogue.playlist`` places them)."""
    kept = [r for r in rows if r.deleted_at is None]
    if not kept:
        return {}
    origin = as_utc(kept[0].started_at)
    return {
        r.segment_index: Placed(
            as_utc(r.started_at),
            round((as_utc(r.started_at) - origin).total_seconds(), 3),
            r.duration_s,
        )
        for r in kept
    }


def _file(request: web.Request, row: Recording) -> Path:
    """The segment's file, which must lie inside the data directory and exist."""
    root = request.config_dict[SETTINGS].data_dir.resolve()
    path = (root / row.path).resolve()
    if row.deleted_at is not None or not path.is_relative_to(root) or not path.is_file():
        raise NotFound(f"segment {row.segment_index} of session {row.session_id} is not kept")
    return path


def _filename(session_id: int, row: Recording) -> str:
    return f"session-{session_id}-segment-{row.segment_index}.{EXTENSIONS[row.container]}"


def _segment_json(session_id: int, row: Recording, placed: Placed | None) -> dict[str, Any]:
    deleted = row.deleted_at is not None
    return {
        "index": row.segment_index,
        "started_at": row.started_at.isoformat(),
        "ended_at": row.ended_at.isoformat() if row.ended_at else None,
        "duration_s": row.duration_s,
        "offset_s": placed.offset_s if placed else None,
        "size_bytes": row.size_bytes,
        "container": row.container,
        "video_codec": row.video_codec,
        "audio_codec": row.audio_codec,
        "sha256": row.sha256,
        "deleted": deleted,
        "url": None if deleted else f"{_base(session_id)}/{row.segment_index}/file",
        "content_type": CONTENT_TYPES.get(row.container, "application/octet-stream"),
    }


@routes.get("/api/sessions/{id}/recordings")
@token_or_login
async def recordings_index(request: web.Request) -> web.Response:
    """The session's segments on one timeline, with where to play, chapter and download them."""
    session_id, _ = await caller_for(request, VIEWERS)
    rows = await _segments(request, session_id)
    placed = _placed(rows)
    base = _base(session_id)
    asked, checks = await _makeup_checks(request, session_id)
    return web.json_response(
        {
            "session_id": session_id,
            "segments": [_segment_json(session_id, r, placed.get(r.segment_index)) for r in rows],
            "total_duration_s": timeline_end(list(placed.values())),
            "chapters_url": f"{base}/chapters.vtt",
            "download_url": f"{base}/download",
            # Make-up viewers stop at these checks and answer them, where the rule asks.
            "makeup_presence": asked,
            "presence_checks": [
                {
                    "id": check.check_id,
                    "at_s": round(check.at_s, 3),
                    "segment": segment.index,
                    "position_s": round(check.at_s - segment.offset_s, 3),
                    "code_url": f"{base}/checks/{check.check_id}/code.png",
                }
                for check, segment in checks
            ],
        }
    )


async def _makeup_checks(
    request: web.Request, session_id: int
) -> tuple[bool, list[tuple[TimelineCheck, Segment]]]:
    """Whether the session's rule asks make-up viewers to pass presence checks, and the checks
    in the recording with the segment each opened in."""
    async with request.config_dict[STORE].read() as db:
        raw_rule = await db.scalar(
            select(StudySession.attendance_rule).where(StudySession.id == session_id)
        )
        segments, checks = await recorded_timeline(db, session_id)
    asked = AttendanceRule.model_validate(raw_rule or {}).makeup_presence
    kept = [s for s in segments if not s.deleted]
    placed = []
    for check in checks_in_recording(checks, segments):
        segment = next(s for s in kept if s.offset_s <= check.at_s < s.offset_s + s.duration_s)
        placed.append((check, segment))
    return asked, placed


@routes.get("/api/sessions/{id}/recordings/checks/{cid}/code.png")
@token_or_login
async def makeup_check_code(request: web.Request) -> web.Response:
    """The member's own code for a presence check met in the recording, as a picture; only
    after the session ended and where its rule asks make-up viewers to answer checks."""
    session_id, caller = await caller_for(request, frozenset({MEMBER}))
    check_id = id_param(request, "presence check", "cid")
    async with request.config_dict[STORE].read() as db:
        session = await get_session(db, session_id)
    if session.state != SessionState.ENDED:
        raise Conflict("make-up viewing opens when the session ends", code="not_ended")
    asked, checks = await _makeup_checks(request, session_id)
    if not asked:
        raise NotFound(f"session {session_id} does not ask make-up viewers for presence checks")
    if all(check.check_id != check_id for check, _ in checks):
        raise NotFound(f"no presence check {check_id} in the recording of session {session_id}")
    assert caller.member_id is not None
    code = makeup_code(
        request.config_dict[SETTINGS].resolved_secret_key(),
        session_id,
        check_id,
        caller.member_id,
    )
    return web.Response(
        body=render_code(code),
        content_type="image/png",
        headers={"Cache-Control": "no-store"},
    )


def _segment_index(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 9:
        raise InvalidInput(f"segment must be a segment index, not {raw[:40]!r}")
    return int(raw)


def _one(rows: list[Recording], index: int, session_id: int) -> Recording:
    row = next((r for r in rows if r.segment_index == index), None)
    if row is None:
        raise NotFound(f"session {session_id} has no segment {index}")
    return row


@routes.get("/api/sessions/{id}/recordings/{index}/file")
@token_or_login
async def recording_file(request: web.Request) -> web.StreamResponse:
    """One segment's file, with HTTP ranges (``<video>`` seeks with them)."""
    session_id, _ = await caller_for(request, VIEWERS)
    index = _segment_index(request.match_info["index"])
    row = _one(await _segments(request, session_id), index, session_id)
    path = _file(request, row)
    return web.FileResponse(
        path,
        headers={
            "Content-Type": CONTENT_TYPES.get(row.container, "application/octet-stream"),
            "Content-Disposition": f'inline; filename="{_filename(session_id, row)}"',
            "Accept-Ranges": "bytes",
        },
    )


async def _moments(request: web.Request, session_id: int) -> list[Moment]:
    """The session's quiz questions, presence checks and broadcast pauses, by wall clock."""
    p = AttendanceEvent.payload
    moments: list[Moment] = []
    async with request.config_dict[STORE].read() as db:
        for q in await db.scalars(
            select(QuizQuestion)
            .where(QuizQuestion.session_id == session_id, QuizQuestion.opened_at.is_not(None))
            .order_by(QuizQuestion.position)
        ):
            assert q.opened_at is not None
            moments.append(
                Moment(
                    f"quiz-{q.position}",
                    q.prompt,
                    as_utc(q.opened_at),
                    _utc(q.closed_at or q.closes_at),
                )
            )
        for c in await db.scalars(
            select(PresenceCheck)
            .where(PresenceCheck.session_id == session_id, PresenceCheck.announced_at.is_not(None))
            .order_by(PresenceCheck.id)
        ):
            moments.append(
                Moment(
                    f"presence-{c.id}", "Presence check", as_utc(c.opened_at), as_utc(c.closes_at)
                )
            )
        changes = await db.execute(
            select(p["at"].as_string(), p["state"].as_string())
            .where(AttendanceEvent.session_id == session_id, AttendanceEvent.kind == "broadcast")
            .order_by(AttendanceEvent.id)
        )
    states = [(as_utc(datetime.fromisoformat(str(at))), str(state)) for at, state in changes if at]
    for n, (start, end) in enumerate(pauses(states), start=1):
        moments.append(Moment(f"pause-{n}", "Broadcast paused", start, end))
    return moments


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


@routes.get("/api/sessions/{id}/recordings/chapters.vtt")
@token_or_login
async def recording_chapters(request: web.Request) -> web.Response:
    """WebVTT chapters on the recording's timeline: cue ids ``quiz-N`` (text: the prompt),
    ``presence-ID`` and ``pause-N``."""
    session_id, _ = await caller_for(request, VIEWERS)
    rows = await _segments(request, session_id)
    placed = list(_placed(rows).values())
    body = webvtt(chapters(placed, await _moments(request, session_id)))
    return web.Response(text=body, content_type="text/vtt", charset="utf-8")


async def _log_download(
    request: web.Request, caller: Caller, session_id: int, detail: dict[str, Any]
) -> None:
    async with request.config_dict[STORE].write() as db:
        await record_admin_event(
            db,
            now=request.config_dict[CLOCK](),
            actor=caller.actor,
            action="recording_downloaded",
            target=f"session:{session_id}",
            detail=detail,
        )


def _attachment(name: str) -> str:
    return f"attachment; filename=\"{name}\"; filename*=UTF-8''{quote(name, safe='')}"


@routes.get("/api/sessions/{id}/recordings/download")
@token_or_login
async def recording_download(request: web.Request) -> web.StreamResponse:
    """The whole session joined into one file (remuxed, never re-encoded), or with
    ``?segment=N`` one segment as recorded. Staff only; logged in the admin trail."""
    session_id, caller = await caller_for(request, STAFF)
    rows = await _segments(request, session_id)
    if "segment" in request.query:
        row = _one(rows, _segment_index(request.query["segment"]), session_id)
        path = _file(request, row)
        await _log_download(
            request,
            caller,
            session_id,
            {"segment": row.segment_index, "sha256": row.sha256, "bytes": row.size_bytes},
        )
        return web.FileResponse(
            path,
            headers={
                "Content-Type": CONTENT_TYPES.get(row.container, "application/octet-stream"),
                "Content-Disposition": _attachment(_filename(session_id, row)),
            },
        )

    placed = _placed(rows)
    kept = [(r, _file(request, r)) for r in rows if r.segment_index in placed]
    if not kept:
        raise NotFound(f"session {session_id} has no recording to download")
    container = kept[0][0].container
    parts = [(path, placed[r.segment_index].offset_s) for r, path in kept]
    scratch = request.config_dict[SETTINGS].data_dir / "tmp"
    joined, duration, size = await asyncio.to_thread(_join, parts, scratch, container)
    try:
        await _log_download(
            request,
            caller,
            session_id,
            {
                "segment": None,
                "segments": [r.segment_index for r, _ in kept],
                "duration_s": duration,
                "bytes": size,
            },
        )
        response = web.StreamResponse(
            headers={
                "Content-Type": CONTENT_TYPES.get(container, "application/octet-stream"),
                "Content-Disposition": _attachment(f"session-{session_id}.{EXTENSIONS[container]}"),
            }
        )
        response.content_length = size
        await response.prepare(request)
        while chunk := await asyncio.to_thread(joined.read, _CHUNK):
            await response.write(chunk)
        await response.write_eof()
        log.info("session %s: joined recording downloaded by %s", session_id, caller.actor)
        return response
    finally:
        joined.close()


def _join(
    parts: list[tuple[Path, float]], scratch: Path, container: str
) -> tuple[BinaryIO, float, int]:
    """Join the segments into a scratch file; return it open (already unlinked, so nothing is
    left behind whatever happens to the request), its duration and size."""
    scratch.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(suffix="." + EXTENSIONS[container], dir=scratch)
    os.close(fd)
    path = Path(name)
    try:
        duration = join_files(parts, path, container)
        joined = path.open("rb")
    finally:
        path.unlink(missing_ok=True)
    return joined, duration, os.fstat(joined.fileno()).st_size
