"""The events clients send, as validated data: what ``POST /api/sessions/{id}/events`` accepts.

Each event carries a client-generated UUID (``id``), its type and the client's time (``at``).
Unknown fields, wrong types and out-of-range values are refused per event, naming the field.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from attendance.clock import as_utc
from attendance.errors import InvalidInput, invalid_input

MAX_BATCH = 500
MAX_NOTE_CHARS = 20_000
# A client clock this far ahead of the server is wrong, not early.
MAX_FUTURE = timedelta(minutes=5)
# An outbox may hold events for a while (a phone offline), but not forever.
MAX_AGE = timedelta(days=7)
# Events that reach the server later than this after they happened are flagged late.
LATE_AFTER = timedelta(seconds=30)

MEMBER_NO = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"
SLUG = r"^[a-z0-9][a-z0-9-]{0,63}$"


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: uuid.UUID
    at: AwareDatetime
    # A venue or an organiser sends events on behalf of a member; a member never does.
    member: Annotated[StrictStr, Field(pattern=MEMBER_NO)] | None = None


class Heartbeat(_Event):
    """The member's page is open (and visible, or not) at ``at``."""

    type: Literal["heartbeat"]
    visible: StrictBool = True


class CheckIn(_Event):
    """A check-in at a venue: the scanned QR code (``window`` and ``sig``) or the typed
    six-digit ``code``. A venue or organiser checking a member in sends neither."""

    type: Literal["check_in"]
    venue: Annotated[StrictStr, Field(pattern=SLUG)]
    session: StrictInt | None = None  # the session named in the scanned URL
    window: StrictInt | None = Field(None, ge=0)
    sig: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{1,64}$")] | None = None
    code: Annotated[StrictStr, Field(pattern=r"^[0-9]{6}$")] | None = None


class CheckOut(_Event):
    type: Literal["check_out"]


class PresenceAnswer(_Event):
    type: Literal["presence_answer"]
    check: StrictInt = Field(ge=1)
    code: Annotated[StrictStr, Field(min_length=1, max_length=16)]


class QuizAnswerEvent(_Event):
    type: Literal["quiz_answer"]
    question: StrictInt = Field(ge=1)
    # Choice indexes; a true/false question also takes true or false.
    choices: list[StrictInt] | StrictBool


class StudyNoteEvent(_Event):
    type: Literal["study_note"]
    text: Annotated[StrictStr, Field(min_length=1, max_length=MAX_NOTE_CHARS)]


class MakeupProgress(_Event):
    """Make-up viewing of the recording: the member's player played ``[from_s, to_s)`` of
    segment ``segment``'s media at ``rate``, with the page ``visible`` (or not). Whether the
    span fits the segment, and the rate counts, is judged against the catalogue."""

    type: Literal["makeup_progress"]
    segment: StrictInt = Field(ge=0)
    from_s: StrictFloat = Field(ge=0, allow_inf_nan=False)
    to_s: StrictFloat = Field(ge=0, allow_inf_nan=False)
    visible: StrictBool
    rate: StrictFloat = Field(gt=0, le=16, allow_inf_nan=False)


class MakeupPresenceAnswer(_Event):
    """During make-up viewing: the member's answer to a presence check found in the recording,
    with the code shown to them (``attendance.makeup.makeup_code``)."""

    type: Literal["makeup_presence_answer"]
    check: StrictInt = Field(ge=1)
    code: Annotated[StrictStr, Field(min_length=1, max_length=16)]


class BroadcasterStatus(_Event):
    """The publishing client's own view of its broadcast (``studycast publish``): its state and,
    while live, what it sends. Stored as the broadcaster's side of the record."""

    type: Literal["broadcaster_status"]
    state: Literal["connecting", "live", "reconnecting", "ended"]
    source: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    bitrate_kbps: StrictFloat | None = Field(None, ge=0, le=1_000_000, allow_inf_nan=False)
    fps: StrictFloat | None = Field(None, ge=0, le=1000, allow_inf_nan=False)
    rtt_ms: StrictFloat | None = Field(None, ge=0, le=600_000, allow_inf_nan=False)
    detail: Annotated[StrictStr, Field(max_length=500)] | None = None


ClientEvent = Annotated[
    Heartbeat
    | CheckIn
    | CheckOut
    | PresenceAnswer
    | QuizAnswerEvent
    | StudyNoteEvent
    | MakeupProgress
    | MakeupPresenceAnswer
    | BroadcasterStatus,
    Field(discriminator="type"),
]
KINDS = (
    "heartbeat",
    "check_in",
    "check_out",
    "presence_answer",
    "quiz_answer",
    "study_note",
    "makeup_progress",
    "makeup_presence_answer",
    "broadcaster_status",
)
_ADAPTER: TypeAdapter[Any] = TypeAdapter(ClientEvent)


class Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH)
    # The client's clock when it sent the batch: corrects the skew of every ``at`` in it.
    sent_at: AwareDatetime | None = None


def parse_batch(data: Any) -> Batch:
    try:
        return Batch.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc) from exc


def parse_event(raw: Any) -> ClientEvent:
    """One event, or ``InvalidInput`` naming each bad field."""
    if isinstance(raw, dict) and raw.get("type") not in KINDS:
        given = raw.get("type")
        raise InvalidInput(
            f"type: must be one of {', '.join(KINDS)}, not {str(given)[:40]!r}"
            if given is not None
            else "type: missing"
        )
    try:
        event: ClientEvent = _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise invalid_input(exc) from exc
    return event


def event_id_of(raw: Any) -> str | None:
    """The ``id`` of an event as sent, for the answer to an event that failed validation."""
    if isinstance(raw, dict) and isinstance(raw.get("id"), str):
        return str(raw["id"])[:64]
    return None


def effective_time(at: datetime, *, sent_at: datetime | None, now: datetime) -> datetime:
    """When the event happened on the server's clock: the client's time corrected by the
    batch's clock skew, never later than its arrival. ``InvalidInput`` when impossible."""
    at = as_utc(at)
    if sent_at is not None:
        sent = as_utc(sent_at)
        if at > sent + timedelta(seconds=5):
            raise InvalidInput("at: is later than the batch's sent_at")
        at = at + (now - sent)
    elif at > now + MAX_FUTURE:
        raise InvalidInput(f"at: {at.isoformat()} is in the future (server time {now.isoformat()})")
    if at < now - MAX_AGE:
        raise InvalidInput(f"at: is more than {MAX_AGE.days} days old")
    return min(at, now)


def is_late(happened: datetime, now: datetime) -> bool:
    return now - happened > LATE_AFTER
