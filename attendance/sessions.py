"""Study sessions: scheduling, listing and describing one broadcast."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from attendance.clock import as_utc
from attendance.errors import Conflict, InvalidInput, NotFound, invalid_input
from attendance.journal import NewAttendanceEvent, append_attendance_events, record_admin_event
from attendance.models import SessionState, StudySession, Venue, VideoCodec
from attendance.units import get_unit
from attendance.venues import get_venue

MAX_DURATION = timedelta(hours=24)


class AttendanceRule(BaseModel):
    """When a member counts as having attended, and the points a session awards.

    The default asks for at least 85% of the live time and at least 2 of 3 presence checks
    (a share of 0.66: with 3 checks, 2 must pass; with 1 check, it must pass)."""

    model_config = ConfigDict(extra="forbid")

    min_share: float = Field(0.85, ge=0, le=1, description="share of live time watched")
    min_presence_share: float = Field(
        0.66, ge=0, le=1, description="share of the presence checks a member was given"
    )
    min_presence_passed: int = Field(0, ge=0, le=100, description="presence checks passed")
    attendance_points: int = Field(10, ge=0, le=1000, description="points for qualifying")
    note_points: int = Field(5, ge=0, le=1000, description="points for an accepted note")
    makeup_presence: bool = Field(
        False, description="make-up viewers must pass the presence checks in the recording"
    )


class SessionDraft(BaseModel):
    """What an organiser gives to schedule a session (CLI options or the JSON API body)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=5000)
    scheduled_start: AwareDatetime
    scheduled_end: AwareDatetime
    video_codec: VideoCodec = VideoCodec.H264
    recording_enabled: bool = True
    venues: list[str] = Field(default_factory=list, max_length=1000)
    expected_units: list[str] = Field(default_factory=list, max_length=1000)
    attendance_rule: AttendanceRule = Field(default_factory=AttendanceRule)

    @field_validator("venues", "expected_units")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists an entry twice")
        return value

    @model_validator(mode="after")
    def _times(self) -> SessionDraft:
        if self.scheduled_end <= self.scheduled_start:
            raise ValueError("scheduled_end must be after scheduled_start")
        if self.scheduled_end - self.scheduled_start > MAX_DURATION:
            raise ValueError("a session may last at most 24 hours")
        return self


def parse_draft(data: Any) -> SessionDraft:
    """Validate outside input into a draft; the error names every bad field."""
    try:
        return SessionDraft.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc) from exc


async def create_session(
    db: AsyncSession, draft: SessionDraft, *, now: datetime, actor: str, user_id: int | None
) -> StudySession:
    """Schedule a session; venues and expected units must exist already."""
    venues = [await get_venue(db, slug) for slug in draft.venues]
    units = [await get_unit(db, path) for path in draft.expected_units]
    session = StudySession(
        title=draft.title,
        description=draft.description,
        scheduled_start=as_utc(draft.scheduled_start),
        scheduled_end=as_utc(draft.scheduled_end),
        state=SessionState.SCHEDULED,
        video_codec=draft.video_codec,
        recording_enabled=draft.recording_enabled,
        attendance_rule=draft.attendance_rule.model_dump(),
        created_by=user_id,
        created_at=now,
    )
    session.venues = venues
    session.expected_units = units
    db.add(session)
    await db.flush()
    await record_admin_event(
        db,
        now=now,
        actor=actor,
        action="session_created",
        target=f"session:{session.id}",
        detail={"title": draft.title, "venues": draft.venues, "units": draft.expected_units},
    )
    return session


EDITABLE_FIELDS = tuple(SessionDraft.model_fields)


def _as_draft_data(session: StudySession) -> dict[str, Any]:
    """A stored session in the shape of a ``SessionDraft`` (what an edit is merged into)."""
    return {
        "title": session.title,
        "description": session.description,
        "scheduled_start": as_utc(session.scheduled_start),
        "scheduled_end": as_utc(session.scheduled_end),
        "video_codec": session.video_codec,
        "recording_enabled": session.recording_enabled,
        "venues": sorted(v.slug for v in session.venues),
        "expected_units": sorted(u.path for u in session.expected_units),
        "attendance_rule": dict(session.attendance_rule or {}),
    }


def _comparable(draft: SessionDraft) -> dict[str, Any]:
    """The draft as JSON-ready values, lists sorted: equal values mean no change."""
    return {
        "title": draft.title,
        "description": draft.description,
        "scheduled_start": as_utc(draft.scheduled_start).isoformat(),
        "scheduled_end": as_utc(draft.scheduled_end).isoformat(),
        "video_codec": draft.video_codec.value,
        "recording_enabled": draft.recording_enabled,
        "venues": sorted(draft.venues),
        "expected_units": sorted(draft.expected_units),
        "attendance_rule": draft.attendance_rule.model_dump(),
    }


def merge_edit(session: StudySession, data: Any) -> SessionDraft:
    """The session with a partial edit applied, validated like a new draft.

    Only the given fields change; ``attendance_rule`` may itself be partial (the named limits
    change, the others stay)."""
    if not isinstance(data, dict):
        raise InvalidInput("the edit must be a JSON object")
    unknown = sorted(str(k) for k in data if k not in EDITABLE_FIELDS)
    if unknown:
        raise InvalidInput("; ".join(f"{k}: Extra inputs are not permitted" for k in unknown))
    merged = _as_draft_data(session)
    for key, value in data.items():
        if key == "attendance_rule" and isinstance(value, dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return parse_draft(merged)


async def update_session(
    db: AsyncSession, session_id: int, data: Any, *, now: datetime, actor: str
) -> dict[str, dict[str, Any]]:
    """Edit a session that has not ended; returns the changes as ``{field: {before, after}}``.

    The video codec is fixed once a broadcast has happened (viewers already decode it). Every
    change is written to the admin trail with its value before and after."""
    session = await get_session(db, session_id)
    if session.state == SessionState.ENDED:
        raise Conflict(
            f"study session {session_id} has ended; it can no longer be edited",
            code="session_ended",
        )
    before = _stored_values(session)
    draft = merge_edit(session, data)
    after = _comparable(draft)
    changes = {
        key: {"before": before[key], "after": after[key]}
        for key in EDITABLE_FIELDS
        if before[key] != after[key]
    }
    if not changes:
        return changes
    if "video_codec" in changes and (
        session.started_at is not None or session.state != SessionState.SCHEDULED
    ):
        raise Conflict(
            f"study session {session_id} has been broadcast in {before['video_codec']}; "
            "its video codec can no longer change",
            code="codec_fixed",
        )
    if "venues" in changes:
        session.venues = [await get_venue(db, slug) for slug in draft.venues]
    if "expected_units" in changes:
        session.expected_units = [await get_unit(db, path) for path in draft.expected_units]
    session.title = draft.title
    session.description = draft.description
    session.scheduled_start = as_utc(draft.scheduled_start)
    session.scheduled_end = as_utc(draft.scheduled_end)
    session.video_codec = draft.video_codec
    session.recording_enabled = draft.recording_enabled
    session.attendance_rule = draft.attendance_rule.model_dump()
    await db.flush()
    await record_admin_event(
        db,
        now=now,
        actor=actor,
        action="session_updated",
        target=f"session:{session_id}",
        detail={"changes": changes},
    )
    return changes


def _stored_values(session: StudySession) -> dict[str, Any]:
    """The session's editable values as ``_comparable`` shapes them."""
    data = _as_draft_data(session)
    return {
        **data,
        "scheduled_start": data["scheduled_start"].isoformat(),
        "scheduled_end": data["scheduled_end"].isoformat(),
        "video_codec": session.video_codec.value,
        "attendance_rule": {**AttendanceRule().model_dump(), **data["attendance_rule"]},
    }


async def end_session(
    db: AsyncSession, session_id: int, *, now: datetime, actor: str
) -> StudySession:
    """Mark a session ended (for good: nobody may broadcast or join it again)."""
    session = await get_session(db, session_id)
    if session.state == SessionState.ENDED:
        raise Conflict(f"study session {session_id} has ended already", code="session_ended")
    session.state = SessionState.ENDED
    session.ended_at = now
    await record_admin_event(
        db, now=now, actor=actor, action="session_ended", target=f"session:{session_id}"
    )
    # Live time ends here, whatever the relay reports afterwards.
    await append_attendance_events(
        db,
        [
            NewAttendanceEvent(
                session_id=session_id,
                event_uuid=uuid.uuid5(uuid.NAMESPACE_URL, f"studycast:session:{session_id}:ended"),
                kind="broadcast",
                source=actor,
                client_time=now,
                payload={"state": "ended", "at": now.isoformat()},
            )
        ],
        now=now,
    )
    return session


async def get_session(db: AsyncSession, session_id: int) -> StudySession:
    session = await db.scalar(
        select(StudySession)
        .options(selectinload(StudySession.venues), selectinload(StudySession.expected_units))
        .where(StudySession.id == session_id)
    )
    if session is None:
        raise NotFound(f"no study session {session_id}")
    return session


async def list_sessions(
    db: AsyncSession, *, state: SessionState | None = None, limit: int = 200
) -> list[StudySession]:
    """Sessions, newest scheduled first."""
    query = (
        select(StudySession)
        .options(selectinload(StudySession.venues), selectinload(StudySession.expected_units))
        .order_by(StudySession.scheduled_start.desc(), StudySession.id.desc())
        .limit(limit)
    )
    if state is not None:
        query = query.where(StudySession.state == state)
    return list(await db.scalars(query))


async def count_sessions(db: AsyncSession) -> int:
    return int(await db.scalar(select(func.count()).select_from(StudySession)) or 0)


def describe(session: StudySession) -> dict[str, Any]:
    """A session as plain JSON-ready data (API and ``--json`` output)."""
    return {
        "id": session.id,
        "title": session.title,
        "description": session.description,
        "state": session.state.value,
        "scheduled_start": as_utc(session.scheduled_start).isoformat(),
        "scheduled_end": as_utc(session.scheduled_end).isoformat(),
        "video_codec": session.video_codec.value,
        "recording_enabled": session.recording_enabled,
        "venues": [{"slug": v.slug, "name": v.name} for v in sorted(session.venues, key=_slug)],
        "expected_units": sorted(u.path for u in session.expected_units),
        "attendance_rule": session.attendance_rule,
        "started_at": as_utc(session.started_at).isoformat() if session.started_at else None,
        "ended_at": as_utc(session.ended_at).isoformat() if session.ended_at else None,
    }


def _slug(venue: Venue) -> str:
    return venue.slug
