"""Make-up viewing: the pure count of watched recording time, the judging of ``makeup_progress``
events through ``ingest_batch``, and the make-up figures of the session report and its exports
(SQLite file and PostgreSQL).

The recorded world (seconds after T0 = 08:00 UTC): segment 0 recorded 0-300, segment 1 360-600
(the broadcaster reconnected after a 60 s gap), segment 2 deleted; 540 s of recording. Live from
0 to 600, when the session ends; nobody watched live.
"""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from attendance.evaluation import finalize_session
from attendance.events import parse_batch
from attendance.exports import members_table, to_csv
from attendance.ingest import Sender, ingest_batch
from attendance.journal import NewAttendanceEvent, append_attendance_events
from attendance.makeup import (
    MAX_RATE,
    Progress,
    Segment,
    TimelineCheck,
    checks_in_recording,
    makeup_answer_outcome,
    makeup_attendance,
    makeup_code,
    makeup_verdict,
    progress_problem,
    session_makeup,
)
from attendance.models import (
    Member,
    PresenceCheck,
    Recording,
    SessionState,
    StudySession,
)
from attendance.reports import session_report
from attendance.rules import Verdict
from attendance.sessions import AttendanceRule, create_session, end_session, parse_draft
from attendance.store import Store
from attendance.units import UnitTree, parse_unit_path

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
END = T0 + timedelta(seconds=600)
LATER = END + timedelta(hours=2)

SEGMENTS = [Segment(0, 0.0, 300.0), Segment(1, 360.0, 240.0), Segment(2, 700.0, 50.0, True)]


def p(
    segment: int, start: float, end: float, *, visible: bool = True, rate: float = 1.0
) -> Progress:
    return Progress(segment, start, end, visible, rate)


# --- the pure count ---------------------------------------------------------------------------


def test_overlapping_and_repeated_viewing_counts_each_media_second_once() -> None:
    watched = [p(0, 0, 60), p(0, 50, 110), p(0, 0, 30), p(0, 0, 60)]
    got = makeup_attendance(watched, SEGMENTS)
    assert (got.seconds, got.recorded_s, got.spans) == (110.0, 540.0, ((0.0, 110.0),))
    assert got.share == pytest.approx(110 / 540)


def test_segments_are_placed_by_their_offsets_and_gaps_stay_gaps() -> None:
    # The end of segment 0 and the start of segment 1 are 60 s apart on the timeline.
    got = makeup_attendance([p(0, 280, 300), p(1, 0, 20), p(1, 10, 40)], SEGMENTS)
    assert got.spans == ((280.0, 300.0), (360.0, 400.0))
    assert got.seconds == 60.0


def test_hidden_time_too_fast_viewing_and_deleted_or_unknown_segments_do_not_count() -> None:
    watched = [
        p(0, 0, 60, visible=False),
        p(0, 60, 120, rate=2.5),
        p(0, 120, 180, rate=MAX_RATE),  # double speed still counts
        p(2, 0, 50),  # deleted segment
        p(9, 0, 50),  # no such segment
    ]
    got = makeup_attendance(watched, SEGMENTS)
    assert got.spans == ((120.0, 180.0),)


def test_viewing_is_cut_to_each_segment_and_capped_by_the_recording() -> None:
    # A player's last position may pass the catalogued duration a little: cut to the segment.
    watched = [p(0, i, i + 60) for i in range(0, 300, 60)] + [p(0, 290, 300.8)]
    watched += [p(1, i, i + 60) for i in range(0, 240, 60)] + [p(1, 239, 241)]
    got = makeup_attendance(watched, SEGMENTS)
    assert got.spans == ((0.0, 300.0), (360.0, 600.0))
    assert (got.seconds, got.share) == (540.0, 1.0)
    assert makeup_attendance([], []).share == 0.0  # no recording, no share


def test_presence_checks_in_the_watched_media_are_named() -> None:
    checks = [TimelineCheck(1, 30.0), TimelineCheck(2, 330.0), TimelineCheck(3, 400.0)]
    got = makeup_attendance([p(0, 0, 60), p(1, 30, 60)], SEGMENTS, checks=checks)
    assert got.checks_in_view == (1, 3)  # 330 s fell in the gap between the segments


def test_the_verdict_uses_the_rules_min_share() -> None:
    rule = AttendanceRule(min_share=0.5)
    half = makeup_attendance([p(0, 0, 60 * 4), p(0, 240, 270)], SEGMENTS)  # 270 of 540
    less = makeup_attendance([p(0, 0, 269)], SEGMENTS)
    none = makeup_attendance([], SEGMENTS)
    assert [makeup_verdict(rule, m) for m in (half, less, none)] == [
        Verdict(True, "watched 50% of the recording"),
        Verdict(False, "watched 50% of the recording (needs 50%)"),
        Verdict(False, "no make-up viewing"),
    ]


def test_progress_reports_out_of_range_are_named() -> None:
    seg = SEGMENTS[0]
    cases = [
        (None, 0, 10, 1.0),
        (SEGMENTS[2], 0, 10, 1.0),
        (seg, 0, 10, 2.01),
        (seg, 10, 10, 1.0),
        (seg, 290, 301.5, 1.0),
        (seg, 0, 60.5, 1.0),
        (seg, 290, 301, 2.0),
    ]
    problems = [progress_problem(s, from_s=a, to_s=b, rate=r) for s, a, b, r in cases]
    got = [problem[0] if problem else None for problem in problems]
    assert got == [
        "no_segment",
        "segment_deleted",
        "too_fast",
        "out_of_range",
        "out_of_range",
        "out_of_range",
        None,
    ]


# --- the store: judging, make-up figures and the report -----------------------------------------


async def world(store: Store) -> tuple[int, dict[str, int]]:
    """A live session expecting 北京 (M1-M3), recorded as the module docstring says."""
    async with store.write() as db:
        unit = await UnitTree(db, T0).ensure(parse_unit_path("北京"))
        rows = [
            Member(
                member_no=no,
                name=no,
                unit_id=unit.id,
                active=True,
                link_version=1,
                created_at=T0,
                updated_at=T0,
            )
            for no in ("M1", "M2", "M3")
        ]
        db.add_all(rows)
        draft = parse_draft(
            {
                "title": "学习会",
                "scheduled_start": T0,
                "scheduled_end": T0 + timedelta(hours=1),
                "expected_units": ["北京"],
            }
        )
        session_id = int((await create_session(db, draft, now=T0, actor="test", user_id=None)).id)
        await db.execute(
            update(StudySession)
            .where(StudySession.id == session_id)
            .values(state=SessionState.LIVE, started_at=T0)
        )
        recorded = [(0, 0, 300, False), (1, 360, 240, False), (2, 700, 50, True)]
        for index, start, duration, deleted in recorded:
            began = T0 + timedelta(seconds=start)
            db.add(
                Recording(
                    session_id=session_id,
                    segment_index=index,
                    path=f"recordings/{session_id}/{index}.webm",
                    container="webm",
                    video_codec="vp8",
                    audio_codec="opus",
                    started_at=began,
                    ended_at=began + timedelta(seconds=duration),
                    duration_s=float(duration),
                    deleted_at=LATER if deleted else None,
                    deleted_reason="test" if deleted else None,
                )
            )
        db.add(
            PresenceCheck(
                session_id=session_id,
                code="1111",
                opened_at=T0 + timedelta(seconds=30),
                closes_at=T0 + timedelta(seconds=90),
                announced_at=T0 + timedelta(seconds=30),
            )
        )
        await db.flush()
        members = {r.member_no: r.id for r in rows}
    live = NewAttendanceEvent(
        session_id=session_id,
        event_uuid=uuid.uuid4(),
        kind="broadcast",
        source="test",
        client_time=T0,
        payload={"state": "live", "at": T0.isoformat()},
    )
    async with store.write() as db:
        await append_attendance_events(db, [live], now=T0)
    return session_id, members


def member(members: dict[str, int], number: str) -> Sender:
    return Sender(kind="member", source=f"member:{number}", member_id=members[number])


def progress(segment: int, start: float, end: float, **extra: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": "makeup_progress",
        "segment": segment,
        "from_s": start,
        "to_s": end,
        "visible": True,
        "rate": 1.0,
        **extra,
    }


async def send(
    store: Store, session_id: int, sender: Sender, events: list[dict[str, Any]], now: datetime
) -> list[tuple[str, str | None]]:
    async with store.write() as db:
        report = await ingest_batch(
            db,
            session_id=session_id,
            sender=sender,
            batch=parse_batch({"events": [{"at": now.isoformat(), **e} for e in events]}),
            now=now,
            secret="secret",
        )
    return [
        (o.status, (o.result.get("code") if o.result else None) or (o.error or {}).get("code"))
        for o in report.outcomes
    ]


async def test_progress_is_judged_then_counted_in_the_report(store: Store) -> None:
    session_id, members = await world(store)
    m1 = member(members, "M1")
    # While the session is live there is no make-up viewing.
    assert await send(store, session_id, m1, [progress(0, 0, 60)], END) == [
        ("refused", "not_ended")
    ]
    async with store.write() as db:
        await end_session(db, session_id, now=END, actor="test")
        await finalize_session(db, session_id, now=END)

    full = [progress(0, s, s + 60) for s in range(0, 300, 60)] + [progress(0, 0, 60)]
    full += [progress(1, s, s + 60) for s in range(0, 240, 60)]
    full += [progress(1, 0, 60, visible=False), progress(0, 250, 300.5)]
    assert await send(store, session_id, m1, full, LATER) == [("accepted", None)] * len(full)

    m2 = [
        progress(0, 0, 60),
        progress(0, 60, 120, visible=False),  # accepted, never counted
        progress(0, 120, 180, rate=2.5),
        progress(2, 0, 10),
        progress(7, 0, 10),
        progress(0, 290, 302),
        progress(0, 0, 61),
        progress(0, 30, 30),
        progress(0, 0, 60, rate=0),
        progress(0, 0, 60, member="M1"),
    ]
    assert await send(store, session_id, member(members, "M2"), m2, LATER) == [
        ("accepted", None),
        ("accepted", None),
        ("refused", "too_fast"),
        ("refused", "segment_deleted"),
        ("refused", "no_segment"),
        ("refused", "out_of_range"),
        ("refused", "out_of_range"),
        ("refused", "out_of_range"),
        ("invalid", "invalid_input"),
        ("invalid", "forbidden"),
    ]
    # A venue or an organiser cannot report make-up viewing for a member.
    venue = Sender(kind="venue", source="venue:bj-1")
    assert await send(store, session_id, venue, [progress(0, 0, 60, member="M3")], LATER) == [
        ("invalid", "forbidden")
    ]

    async with store.read() as db:
        figures = await session_makeup(db, session_id)
        report = await session_report(db, session_id, now=LATER)
    assert {n: (f.attendance.seconds, f.qualified) for n, f in _by_number(figures, members)} == {
        "M1": (540.0, True),
        "M2": (60.0, False),
    }
    check = figures[members["M1"]].attendance.checks_in_view
    assert len(check) == 1 and figures[members["M2"]].attendance.checks_in_view == check
    assert report.final is True
    assert [
        (r.member_no, r.mode, r.qualified, r.as_json()["makeup_minutes"], r.makeup_share)
        for r in report.rows
    ] == [
        ("M1", "absent", False, 9.0, 1.0),
        ("M2", "absent", False, 1.0, pytest.approx(60 / 540)),
        ("M3", "absent", False, 0.0, 0.0),
    ]
    assert [r.makeup_qualified for r in report.rows] == [True, False, False]

    lines = list(csv.reader(io.StringIO(to_csv(members_table(report)).decode("utf-8-sig"))))
    heading = lines[4]
    at = heading.index("补看(分钟) / Make-up minutes")
    assert heading[at : at + 3] == [
        "补看(分钟) / Make-up minutes",
        "补看占比 / Make-up share",
        "补看合格 / Make-up qualified",
    ]
    assert [line[at : at + 3] for line in lines[5:]] == [
        ["9.0", "1.0", "yes"],
        ["1.0", "0.1111", "no"],
        ["0.0", "0.0", "no"],
    ]


def _by_number(figures: dict[int, Any], members: dict[str, int]) -> list[tuple[str, Any]]:
    numbers = {v: k for k, v in members.items()}
    return sorted((numbers[i], f) for i, f in figures.items())


# --- presence checks during make-up viewing -----------------------------------------------------

CHECKS = [TimelineCheck(1, 30.0), TimelineCheck(2, 330.0), TimelineCheck(3, 400.0)]
WHOLE = [p(0, s, s + 60) for s in range(0, 300, 60)] + [p(1, s, s + 60) for s in range(0, 240, 60)]


def test_a_makeup_code_is_four_digits_of_its_own_per_member_and_check() -> None:
    code = makeup_code("secret", 7, 3, 11)
    assert code == makeup_code("secret", 7, 3, 11)  # the same every time it is shown
    assert len(code) == 4 and code.isdigit() and code[0] != "0"
    others = {makeup_code("secret", 7, 3, m) for m in range(12, 40)}
    others |= {makeup_code("secret", 7, c, 11) for c in range(4, 30)}
    others |= {makeup_code("other secret", 7, 3, 11), makeup_code("secret", 8, 3, 11)}
    # 56 other codes from 9,000: a handful may collide by chance, most must not.
    assert sum(1 for o in others if o == code) <= 2 and len(others) > 45


def test_makeup_answers_pass_once_and_fail_after_three_wrong_codes() -> None:
    steps: list[str] = []
    for given in ("1000", "2000", " 1234 ", "1234"):
        outcome, _ = makeup_answer_outcome(expected="1234", given=given, earlier_outcomes=steps)
        steps.append(outcome)
    assert steps == ["wrong_code", "wrong_code", "passed", "replay"]
    steps = []
    for given in ("1000", "2000", "3000", "1234"):
        outcome, _ = makeup_answer_outcome(expected="1234", given=given, earlier_outcomes=steps)
        steps.append(outcome)
    assert steps == ["wrong_code", "wrong_code", "wrong_code", "too_many"]


def test_checks_in_the_recording_pass_only_where_they_were_watched() -> None:
    # Check 2 opened in the gap between the segments: it is not in the recording.
    assert [c.check_id for c in checks_in_recording(CHECKS, SEGMENTS)] == [1, 3]
    everything = makeup_attendance(WHOLE, SEGMENTS, checks=CHECKS, answered={1, 2, 3})
    assert (everything.checks_total, everything.checks_passed) == (2, (1, 3))
    # Check 3 answered, but the media where it opened (segment 1 at 40 s) was never watched.
    skipped = [p(0, 0, 300), p(1, 0, 30), p(1, 50, 240)]
    got = makeup_attendance(skipped, SEGMENTS, checks=CHECKS, answered={1, 3})
    assert (got.checks_total, got.checks_passed) == (2, (1,))


def test_the_verdict_applies_presence_checks_only_where_the_rule_asks() -> None:
    asks = AttendanceRule(makeup_presence=True)  # 66%: 2 of 2 checks, 2 of 3
    one = makeup_attendance(WHOLE, SEGMENTS, checks=CHECKS, answered={1})
    both = makeup_attendance(WHOLE, SEGMENTS, checks=CHECKS, answered={1, 3})
    little = makeup_attendance([p(0, 0, 60)], SEGMENTS, checks=CHECKS, answered={1})
    assert [makeup_verdict(asks, m) for m in (one, both, little)] == [
        Verdict(
            False,
            "watched 100% of the recording; passed 1 of 2 presence checks (needs 2)",
        ),
        Verdict(True, "watched 100% of the recording; passed 2 of 2 presence checks"),
        Verdict(False, "watched 11% of the recording (needs 85%)"),
    ]
    assert makeup_verdict(AttendanceRule(), one) == Verdict(True, "watched 100% of the recording")
    half = AttendanceRule(makeup_presence=True, min_presence_share=0.5)
    assert makeup_verdict(half, one).qualified is True
    # A recording without checks asks for none.
    assert makeup_verdict(asks, makeup_attendance(WHOLE, SEGMENTS)).qualified is True


def answer(check: int, code: str) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "type": "makeup_presence_answer", "check": check, "code": code}


async def test_makeup_answers_are_judged_and_decide_the_makeup_verdict(store: Store) -> None:
    session_id, members = await world(store)
    m1, m2, m3 = (member(members, n) for n in ("M1", "M2", "M3"))
    async with store.read() as db:
        check = int(
            await db.scalar(select(PresenceCheck.id).where(PresenceCheck.session_id == session_id))
        )
    code_of = {n: makeup_code("secret", session_id, check, members[n]) for n in members}
    assert await send(store, session_id, m1, [answer(check, code_of["M1"])], END) == [
        ("refused", "not_ended")
    ]
    async with store.write() as db:
        await end_session(db, session_id, now=END, actor="test")
        await finalize_session(db, session_id, now=END)
    # The session's rule does not ask for checks yet.
    assert await send(store, session_id, m1, [answer(check, code_of["M1"])], LATER) == [
        ("refused", "not_required")
    ]
    async with store.write() as db:
        session = await db.get(StudySession, session_id)
        assert session is not None
        session.attendance_rule = {**session.attendance_rule, "makeup_presence": True}

    def whole() -> list[dict[str, Any]]:
        first = [progress(0, s, s + 60) for s in range(0, 300, 60)]
        return first + [progress(1, s, s + 60) for s in range(0, 240, 60)]

    watched = [("accepted", None)] * len(whole())
    wrong = "1000" if code_of["M1"] != "1000" else "2000"
    m1_events = [answer(check, wrong), answer(check, code_of["M1"]), answer(check, code_of["M1"])]
    assert await send(store, session_id, m1, whole() + m1_events, LATER) == [
        ("accepted", None)
    ] * len(watched) + [("refused", "wrong_code"), ("accepted", None), ("refused", "replay")]
    # M2 watches it all but types M1's code (shared with them): it is not M2's code.
    assert code_of["M1"] != code_of["M2"]
    assert await send(store, session_id, m2, [*whole(), answer(check, code_of["M1"])], LATER) == [
        ("accepted", None)
    ] * len(watched) + [("refused", "wrong_code")]
    # M3 tries three wrong codes over two batches, then the right one is too late.
    wrongs = [c for c in ("1000", "2000", "3000", "4000") if c != code_of["M3"]][:3]
    assert await send(store, session_id, m3, [answer(check, wrongs[0])], LATER) == [
        ("refused", "wrong_code")
    ]
    tail = [answer(check, wrongs[1]), answer(check, wrongs[2]), answer(check, code_of["M3"])]
    tail_outcomes = [("refused", "wrong_code"), ("refused", "wrong_code"), ("refused", "too_many")]
    assert await send(store, session_id, m3, whole() + tail, LATER) == watched + tail_outcomes
    # Checks outside the recording, and organisers, are refused.
    assert await send(store, session_id, m1, [answer(check + 50, "1234")], LATER) == [
        ("refused", "not_in_recording")
    ]
    organiser = Sender(kind="organiser", source="user:1")
    assert await send(
        store, session_id, organiser, [{**answer(check, "1234"), "member": "M1"}], LATER
    ) == [("invalid", "forbidden")]

    async with store.read() as db:
        report = await session_report(db, session_id, now=LATER)
    assert [
        (
            r.member_no,
            r.makeup_qualified,
            r.makeup_presence_passed,
            r.makeup_presence_total,
            r.makeup_reason,
        )
        for r in report.rows
    ] == [
        ("M1", True, 1, 1, "watched 100% of the recording; passed 1 of 1 presence checks"),
        (
            "M2",
            False,
            0,
            1,
            "watched 100% of the recording; passed 0 of 1 presence checks (needs 1)",
        ),
        (
            "M3",
            False,
            0,
            1,
            "watched 100% of the recording; passed 0 of 1 presence checks (needs 1)",
        ),
    ]
