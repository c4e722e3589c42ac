"""Every model round-trips through a real store, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import inspect, select

from attendance.errors import Conflict
from attendance.models import (
    AdminEvent,
    AttendanceEvent,
    Base,
    LoginSession,
    Member,
    Node,
    OrgUnit,
    PointsEntry,
    PresenceCheck,
    PresenceResponse,
    QuizAnswer,
    QuizQuestion,
    Recording,
    Role,
    SessionCheckin,
    SessionExpectedMember,
    SessionExpectedUnit,
    SessionResult,
    SessionState,
    SessionVenue,
    StudyNote,
    StudySession,
    User,
    Venue,
    VideoCodec,
)
from attendance.store import Store

H = "a" * 64


def build_all(now: datetime) -> list[Base]:
    """One row of every table, linked by explicit ids (1 each), in insertion order."""
    t = now + timedelta(minutes=5)
    return [
        OrgUnit(id=1, parent_id=None, name="北京", path="北京", depth=1, created_at=now),
        OrgUnit(
            id=2, parent_id=1, name="朝阳办公区", path="北京/朝阳办公区", depth=2, created_at=now
        ),
        Member(
            id=1,
            member_no="1001",
            name="王芳",
            unit_id=2,
            phone="+86 138 0000 0001",
            active=True,
            link_version=3,
            created_at=now,
            updated_at=t,
        ),
        Venue(
            id=1,
            slug="bj-1",
            name="第1会议室",
            unit_id=2,
            capacity=40,
            created_at=now,
            edge_url="http://edge-bj.example:8080",
        ),
        User(
            id=1,
            username="alice",
            role=Role.VENUE_OPERATOR,
            password_hash="$argon2id$x",
            display_name="Alice",
            venue_id=1,
            active=True,
            failed_logins=2,
            last_login_at=t,
            created_at=now,
        ),
        LoginSession(
            id=1,
            token_hash=H,
            csrf_token="c" * 32,
            user_id=1,
            created_at=now,
            expires_at=now + timedelta(hours=12),
            revoked_at=None,
        ),
        StudySession(
            id=1,
            title="学习会",
            description="季度",
            scheduled_start=now,
            scheduled_end=now + timedelta(hours=2),
            state=SessionState.PAUSED,
            video_codec=VideoCodec.VP8,
            recording_enabled=False,
            attendance_rule={"min_share": 0.75, "min_presence_passed": 2},
            started_at=t,
            ended_at=None,
            created_by=1,
            created_at=now,
        ),
        SessionVenue(session_id=1, venue_id=1),
        SessionExpectedUnit(session_id=1, unit_id=1),
        SessionExpectedMember(session_id=1, member_id=1),
        AttendanceEvent(
            id=1,
            session_id=1,
            event_uuid=uuid.UUID(int=7),
            kind="heartbeat",
            member_id=1,
            venue_id=1,
            source="member:1001",
            client_time=now,
            server_time=t,
            late=True,
            payload={"visible": True, "笔记": "好"},
            prev_hash="0" * 64,
            hash=H,
            pruned_at=None,
        ),
        PresenceCheck(
            id=1,
            session_id=1,
            code="K7Q2",
            opened_at=now,
            closes_at=now + timedelta(seconds=60),
            created_by=1,
            announced_at=now,
        ),
        PresenceResponse(
            id=1,
            check_id=1,
            member_id=1,
            answered_at=t,
            code_given="K7Q2",
            outcome="passed",
            event_id=1,
        ),
        QuizQuestion(
            id=1,
            session_id=1,
            position=1,
            prompt="1+1=?",
            kind="single",
            options={"choices": ["1", "2"]},
            correct={"choices": [1]},
            points=5,
            time_limit_s=30,
            opened_at=now,
            closes_at=t,
            closed_at=t,
            revealed_at=None,
            created_at=now,
        ),
        QuizAnswer(
            id=1,
            question_id=1,
            answerer="member:1001",
            member_id=1,
            venue_id=None,
            answer={"choices": [1]},
            answered_at=t,
            correct=True,
            points_awarded=7,
            speed_bonus=2,
            event_id=1,
        ),
        StudyNote(
            id=1,
            session_id=1,
            member_id=1,
            body="第一章要点",
            created_at=t,
            event_id=1,
            status="returned",
            reviewed_by=1,
            reviewed_at=t,
            review_comment="请补充第二节",
        ),
        SessionCheckin(session_id=1, member_id=1, venue_id=1, since=t),
        SessionResult(
            session_id=1,
            member_id=1,
            expected=True,
            first_join=now,
            last_leave=t,
            watched_s=1234.5,
            live_s=3600.0,
            share=0.3429,
            venue_id=1,
            presence_passed=1,
            presence_total=3,
            quiz_points=12,
            qualified=False,
            reason="watched 34% of live time (needs 85%)",
            evaluated_at=t,
        ),
        PointsEntry(
            id=1,
            ref="quiz:1:member:1001",
            member_id=1,
            venue_id=1,
            unit_id=1,
            session_id=1,
            kind="quiz",
            points=7,
            reason="question 1 answered correctly",
            at=t,
        ),
        Recording(
            id=1,
            session_id=1,
            segment_index=0,
            path="recordings/1/0.mkv",
            container="matroska",
            video_codec="h264",
            audio_codec="opus",
            started_at=now,
            ended_at=t,
            duration_s=300.5,
            size_bytes=5_000_000_000,
            sha256=H,
            deleted_at=None,
            deleted_reason=None,
        ),
        AdminEvent(
            id=1,
            at=now,
            actor="cli",
            action="roster_imported",
            target=None,
            detail={"created": 3},
            prev_hash="0" * 64,
            hash="b" * 64,
        ),
        Node(
            name="edge-bj",
            role="edge",
            url="http://edge-bj.example:8080",
            pid=4242,
            started_at=now,
            seen_at=t,
            status={"sessions": {"1": {"viewers": 3, "by_kind": {"venue": 1, "member": 2}}}},
        ),
    ]


def columns(row: Base) -> dict[str, object]:
    return {a.key: getattr(row, a.key) for a in inspect(row).mapper.column_attrs}


def test_every_table_has_a_row_in_the_fixture(now: datetime) -> None:
    built = {type(r).__tablename__ for r in build_all(now)}
    assert built == set(Base.metadata.tables)


async def test_every_model_round_trips(store: Store, now: datetime) -> None:
    rows = build_all(now)
    expected = [(type(r), columns(r)) for r in rows]
    async with store.write() as db:
        for row in rows:
            db.add(row)
            await db.flush()
    async with store.read() as db:
        for model, values in expected:
            pk = inspect(model).primary_key
            key = tuple(values[c.key] for c in pk)
            got = await db.get(model, key if len(key) > 1 else key[0])
            assert got is not None, model.__name__
            assert columns(got) == values, model.__name__
            for name, value in columns(got).items():
                if isinstance(value, datetime):
                    assert value.tzinfo is not None, f"{model.__name__}.{name} lost its zone"


async def test_relationships_load(store: Store, now: datetime) -> None:
    async with store.write() as db:
        for row in build_all(now):
            db.add(row)
            await db.flush()
    async with store.read() as db:
        from sqlalchemy.orm import selectinload

        session = await db.scalar(
            select(StudySession).options(
                selectinload(StudySession.venues), selectinload(StudySession.expected_units)
            )
        )
        assert session is not None
        assert [v.slug for v in session.venues] == ["bj-1"]
        assert [u.path for u in session.expected_units] == ["北京"]
        unit = await db.scalar(
            select(OrgUnit).options(selectinload(OrgUnit.children)).where(OrgUnit.id == 1)
        )
        assert unit is not None and [c.path for c in unit.children] == ["北京/朝阳办公区"]


async def test_event_uuid_unique_per_session(store: Store, now: datetime) -> None:
    rows = build_all(now)
    async with store.write() as db:
        for row in rows:
            db.add(row)
            await db.flush()
    duplicate = AttendanceEvent(
        session_id=1,
        event_uuid=uuid.UUID(int=7),
        kind="heartbeat",
        member_id=1,
        source="member:1001",
        client_time=now,
        server_time=now,
        late=False,
        payload={},
        prev_hash=H,
        hash="c" * 64,
    )
    with pytest.raises(Conflict):
        async with store.write() as db:
            db.add(duplicate)
    # The failed transaction left nothing behind.
    async with store.read() as db:
        assert len((await db.scalars(select(AttendanceEvent))).all()) == 1


async def test_session_must_end_after_it_starts(store: Store, now: datetime) -> None:
    with pytest.raises(Conflict):
        async with store.write() as db:
            db.add(StudySession(title="x", scheduled_start=now, scheduled_end=now, created_at=now))
    async with store.read() as db:
        assert (await db.scalars(select(StudySession))).all() == []


async def test_naive_datetimes_are_refused(store: Store, now: datetime) -> None:
    with pytest.raises(Exception, match="naive datetime"):
        async with store.write() as db:
            db.add(OrgUnit(name="x", path="x", depth=1, created_at=now.replace(tzinfo=None)))
            await db.flush()
