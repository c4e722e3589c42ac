"""The record store's schema: SQLAlchemy 2.x typed models.

Schema changes go through alembic (``attendance/migrations``); a test checks that the migrations
produce exactly these tables. Times are aware UTC datetimes in Python and UTC in the database.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Dialect,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import DateTime, TypeDecorator

from attendance.clock import as_utc

# Stable constraint names, so alembic batch mode on SQLite and PostgreSQL agree.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT for the big tables.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always an aware UTC datetime, also on SQLite (which drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the record store; use aware UTC times")
        return as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {  # noqa: RUF012 (SQLAlchemy reads this class attribute)
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        uuid.UUID: Uuid(),
    }


class Role(enum.StrEnum):
    """Roles of people who log in with a password. Members never do (they hold a join link)."""

    ORGANISER = "organiser"
    VENUE_OPERATOR = "venue_operator"
    AUDITOR = "auditor"


class SessionState(enum.StrEnum):
    SCHEDULED = "scheduled"
    LIVE = "live"
    PAUSED = "paused"
    ENDED = "ended"


class VideoCodec(enum.StrEnum):
    H264 = "h264"
    VP8 = "vp8"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as plain strings with a CHECK, so adding a value is a small migration on both stores.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda e: [m.value for m in e],
    )


class OrgUnit(Base):
    """A node of the organisation tree (city → office area → viewing point, or any depth)."""

    __tablename__ = "org_units"

    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("org_units.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    # Full path from the root, segments joined by "/": unique, and what rosters refer to.
    path: Mapped[str] = mapped_column(String(1000), unique=True)
    depth: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]

    parent: Mapped[OrgUnit | None] = relationship(remote_side=[id], back_populates="children")
    children: Mapped[list[OrgUnit]] = relationship(back_populates="parent")


class Member(Base):
    """A person on the roster. ``link_version`` increments to revoke a personal join link."""

    __tablename__ = "members"

    id: Mapped[int] = mapped_column(primary_key=True)
    member_no: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    unit_id: Mapped[int] = mapped_column(ForeignKey("org_units.id"), index=True)
    phone: Mapped[str | None] = mapped_column(String(32))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    link_version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    unit: Mapped[OrgUnit] = relationship()


class Venue(Base):
    """A room with a screen, belonging to a unit."""

    __tablename__ = "venues"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    unit_id: Mapped[int] = mapped_column(ForeignKey("org_units.id"), index=True)
    capacity: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    # The edge node whose media the venue's screen plays (its base URL); None: the origin's.
    edge_url: Mapped[str | None] = mapped_column(String(300))

    unit: Mapped[OrgUnit] = relationship()


class User(Base):
    """Someone who logs in with a password: organiser, venue operator or auditor."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(_enum(Role, "role"))
    password_hash: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str | None] = mapped_column(String(100))
    # A venue operator runs the screens of one venue.
    venue_id: Mapped[int | None] = mapped_column(ForeignKey("venues.id"))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    last_login_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class LoginSession(Base):
    """A cookie login. Only a SHA-256 of the cookie value is stored; logging out revokes it."""

    __tablename__ = "login_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship()


class StudySession(Base):
    """One scheduled broadcast. The video codec is fixed at creation (nothing is transcoded)."""

    __tablename__ = "study_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    scheduled_start: Mapped[datetime]
    scheduled_end: Mapped[datetime]
    state: Mapped[SessionState] = mapped_column(
        _enum(SessionState, "session_state"), default=SessionState.SCHEDULED
    )
    video_codec: Mapped[VideoCodec] = mapped_column(
        _enum(VideoCodec, "video_codec"), default=VideoCodec.H264
    )
    recording_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # e.g. {"min_share": 0.8, "min_presence_passed": 1}; interpreted by the attendance rules.
    attendance_rule: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime]

    venues: Mapped[list[Venue]] = relationship(secondary="session_venues", order_by=Venue.id)
    expected_units: Mapped[list[OrgUnit]] = relationship(
        secondary="session_expected_units", order_by=OrgUnit.path
    )

    __table_args__ = (CheckConstraint("scheduled_end > scheduled_start", name="ends_after_start"),)


class SessionVenue(Base):
    __tablename__ = "session_venues"

    session_id: Mapped[int] = mapped_column(
        ForeignKey("study_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    venue_id: Mapped[int] = mapped_column(ForeignKey("venues.id"), primary_key=True)


class SessionExpectedUnit(Base):
    """The expected roster by unit: every active member in the unit's subtree is expected."""

    __tablename__ = "session_expected_units"

    session_id: Mapped[int] = mapped_column(
        ForeignKey("study_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    unit_id: Mapped[int] = mapped_column(ForeignKey("org_units.id"), primary_key=True)


class SessionExpectedMember(Base):
    """Members expected individually, beyond the expected units."""

    __tablename__ = "session_expected_members"

    session_id: Mapped[int] = mapped_column(
        ForeignKey("study_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), primary_key=True)


class AttendanceEvent(Base):
    """Append-only record of everything a client reported, hash-chained per store.

    ``event_uuid`` is generated by the client and unique per session, which makes ingestion
    idempotent. ``prev_hash``/``hash`` form the audit chain (see ``attendance.chain``).
    """

    __tablename__ = "attendance_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("study_sessions.id"))
    event_uuid: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(32))
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"), index=True)
    venue_id: Mapped[int | None] = mapped_column(ForeignKey("venues.id"))
    # Who sent it: "member:1001", "venue:room-2", "user:alice".
    source: Mapped[str] = mapped_column(String(100))
    client_time: Mapped[datetime]
    server_time: Mapped[datetime]
    late: Mapped[bool] = mapped_column(Boolean, default=False)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Retention removed the raw content (payload emptied): the row stays as a link of the chain,
    # whose hash can no longer be recomputed, only followed.
    pruned_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("session_id", "event_uuid"),
        Index("ix_attendance_events_session_kind", "session_id", "kind"),
    )


class PresenceCheck(Base):
    """A short single-use challenge; its code is shown on the stream screens."""

    __tablename__ = "presence_checks"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("study_sessions.id"), index=True)
    code: Mapped[str] = mapped_column(String(16))
    opened_at: Mapped[datetime]
    closes_at: Mapped[datetime]
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    # Scheduled checks open later: set when the check was announced to the screens.
    announced_at: Mapped[datetime | None]


class PresenceResponse(Base):
    """One answer to a presence check; replays, wrong codes and late answers are kept too."""

    __tablename__ = "presence_responses"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    check_id: Mapped[int] = mapped_column(ForeignKey("presence_checks.id"), index=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)
    answered_at: Mapped[datetime]
    code_given: Mapped[str] = mapped_column(String(16))
    # passed | wrong_code | late | replay | not_open | too_many
    outcome: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[int | None] = mapped_column(ForeignKey("attendance_events.id"))


class QuizQuestion(Base):
    __tablename__ = "quiz_questions"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("study_sessions.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16), default="single")  # single|multiple|true_false
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"choices": [...]}
    correct: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"choices": [0, 2]}
    points: Mapped[int] = mapped_column(Integer, default=10)
    time_limit_s: Mapped[int] = mapped_column(Integer, default=30)
    opened_at: Mapped[datetime | None]
    closes_at: Mapped[datetime | None]
    # When it actually closed (the timer ran out or the organiser closed it early).
    closed_at: Mapped[datetime | None]
    revealed_at: Mapped[datetime | None]
    created_at: Mapped[datetime | None]

    __table_args__ = (UniqueConstraint("session_id", "position"),)


class QuizAnswer(Base):
    """The answer that counts of one answerer (a member, or a venue answering as a team) to a
    question: the last one before the question closed. Every attempt stays in the event log."""

    __tablename__ = "quiz_answers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    question_id: Mapped[int] = mapped_column(ForeignKey("quiz_questions.id"), index=True)
    # "member:1001" or "venue:bj-1" (team answer)
    answerer: Mapped[str] = mapped_column(String(100))
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"), index=True)
    venue_id: Mapped[int | None] = mapped_column(ForeignKey("venues.id"))
    answer: Mapped[dict[str, Any]] = mapped_column(default=dict)
    answered_at: Mapped[datetime]
    correct: Mapped[bool | None] = mapped_column(Boolean)
    points_awarded: Mapped[int] = mapped_column(Integer, default=0)
    speed_bonus: Mapped[int] = mapped_column(Integer, default=0)
    event_id: Mapped[int | None] = mapped_column(ForeignKey("attendance_events.id"))

    __table_args__ = (UniqueConstraint("question_id", "answerer"),)


class StudyNote(Base):
    """A member's study note for a session: submitted, then accepted or returned by a reviewer.
    A returned note may be submitted again (a new row); the newest row is the current one."""

    __tablename__ = "study_notes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("study_sessions.id"), index=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    event_id: Mapped[int | None] = mapped_column(ForeignKey("attendance_events.id"))
    status: Mapped[str] = mapped_column(String(16), default="submitted")  # |accepted|returned
    reviewed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reviewed_at: Mapped[datetime | None]
    review_comment: Mapped[str | None] = mapped_column(Text)


class SessionCheckin(Base):
    """Where a member is checked in now (derived from the check-in events, for fast lookups)."""

    __tablename__ = "session_checkins"

    session_id: Mapped[int] = mapped_column(
        ForeignKey("study_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), primary_key=True)
    venue_id: Mapped[int | None] = mapped_column(ForeignKey("venues.id"))  # None: checked out
    since: Mapped[datetime]


class SessionResult(Base):
    """A member's evaluated attendance of an ended session (the rule applied at the end)."""

    __tablename__ = "session_results"

    session_id: Mapped[int] = mapped_column(
        ForeignKey("study_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), primary_key=True)
    expected: Mapped[bool] = mapped_column(Boolean)
    first_join: Mapped[datetime | None]
    last_leave: Mapped[datetime | None]
    watched_s: Mapped[float]
    live_s: Mapped[float]
    share: Mapped[float]
    venue_id: Mapped[int | None] = mapped_column(ForeignKey("venues.id"))
    presence_passed: Mapped[int] = mapped_column(Integer)
    presence_total: Mapped[int] = mapped_column(Integer)
    quiz_points: Mapped[int] = mapped_column(Integer)
    qualified: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    evaluated_at: Mapped[datetime]


class PointsEntry(Base):
    """The points ledger: append-only; ``ref`` makes each award happen once. Corrections are
    new entries with a reason."""

    __tablename__ = "points_ledger"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ref: Mapped[str] = mapped_column(String(120), unique=True)
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"), index=True)
    # A team award (venue quiz answer) has a venue and no member.
    venue_id: Mapped[int | None] = mapped_column(ForeignKey("venues.id"), index=True)
    unit_id: Mapped[int | None] = mapped_column(ForeignKey("org_units.id"))
    session_id: Mapped[int | None] = mapped_column(ForeignKey("study_sessions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # attendance | quiz | note | correction
    points: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime]


class Recording(Base):
    """One recorded segment (one broadcaster connection) of a session."""

    __tablename__ = "recordings"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("study_sessions.id"), index=True)
    segment_index: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(500))
    container: Mapped[str] = mapped_column(String(16))
    video_codec: Mapped[str | None] = mapped_column(String(16))
    audio_codec: Mapped[str | None] = mapped_column(String(16))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    duration_s: Mapped[float | None]
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    deleted_at: Mapped[datetime | None]
    deleted_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("session_id", "segment_index"),)


class Node(Base):
    """A server process serving viewers (the origin, an edge, or one of their workers), as it
    last reported itself: what ``GET /api/nodes`` lists. Rows are kept when a node stops; its
    ``seen_at`` tells how long ago."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # origin | edge
    url: Mapped[str] = mapped_column(String(300))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    seen_at: Mapped[datetime]
    # Sessions served, viewers by kind, CPU load, capacity: see ``server.nodes``.
    status: Mapped[dict[str, Any]]


class AdminEvent(Base):
    """The admin audit trail: who changed what (roster imports, logins, exports, sessions).

    Hash-chained like attendance events, so a removed or edited row shows.
    """

    __tablename__ = "admin_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime]
    # "user:alice", "cli", "system"
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
