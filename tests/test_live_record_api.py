"""The live record's HTTP API over a real store (SQLite file and PostgreSQL): event ingestion,
who may send and read what, venue check-in, presence checks, the quiz, study notes, attendance
at the end of a session and the live event stream. Time moves only when the test moves it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import DummyCookieJar
from aiohttp.test_utils import TestClient, TestServer
from live_record_support import (
    MEMBERS,
    SECRET,
    VENUES,
    SseReader,
    World,
    event,
    log_in,
    seed,
)
from sqlalchemy import select, update
from support import FakeClock, make_settings

from attendance.journal import NewAttendanceEvent, append_attendance_events
from attendance.models import AttendanceEvent, Member, SessionResult
from attendance.store import Store
from server.app import create_app
from server.callers import MEMBER_TTL_S
from server.tokens import TokenRole, issue


@pytest.fixture
async def world(
    store: Store, clock: FakeClock, now: datetime, tmp_path: Path
) -> AsyncIterator[World]:
    session_id, other_id, member_ids, venue_ids = await seed(store, now)
    settings = make_settings(
        tmp_path, secret_key=SECRET, tick_interval_s=60, evidence_interval_s=300
    )
    app = create_app(settings, store, clock=clock)
    # No cookie jar: every request carries exactly the credentials the test gives it.
    async with TestClient(TestServer(app), cookie_jar=DummyCookieJar()) as client:
        w = World(client, clock, store, session_id, other_id, member_ids, venue_ids)
        w.organiser = await log_in(client, "org")
        w.auditor = await log_in(client, "aud")
        yield w


def error(code: str, detail: str) -> dict[str, str]:
    return {"code": code, "detail": detail}


async def status_of(r: Any) -> tuple[int, str]:
    return r.status, (await r.json())["error"]


async def add_question(w: World, **fields: Any) -> dict[str, Any]:
    question = {"prompt": "1+1=?", "kind": "single", "choices": ["1", "2", "3"], "correct": [1]}
    body = await w.post(f"{w.base}/questions", w.organiser, {**question, **fields}, status=201)
    created: dict[str, Any] = body["questions"][0]
    return created


# --- 1. ingestion -----------------------------------------------------------------------------


async def test_a_batch_of_every_type_is_judged_stored_once_and_retried_as_duplicates(
    world: World,
) -> None:
    w = world
    question = await add_question(w)
    await w.post(f"{w.base}/questions/{question['id']}/open", w.organiser, {})
    check = await w.post(f"{w.base}/presence-checks", w.organiser, status=201)
    code = await w.checkin_code("bj-a")
    now = w.clock()
    batch = [
        event("heartbeat", now, visible=True),
        event("check_in", now, venue="bj-a", code=code["short_code"]),
        event("check_out", now),
        event("presence_answer", now, check=check["id"], code=check["code"]),
        event("quiz_answer", now, question=question["id"], choices=[1]),
        event("study_note", now, text=" 安全第一 "),
    ]
    before = await w.event_count()

    first = await w.send(w.member("M1"), *batch)

    expected = [
        {"ok": True},
        {"ok": True, "venue": "bj-a"},
        {"ok": True, "venue": "bj-a"},
        {"ok": True, "outcome": "passed", "detail": "presence confirmed"},
        {"ok": True, "question": question["id"], "choices": [1]},
        {"ok": True, "status": "submitted", "characters": 4},
    ]
    assert first == {
        "results": [
            {"id": e["id"], "status": "accepted", "result": r}
            for e, r in zip(batch, expected, strict=True)
        ],
        "counts": {"accepted": 6},
    }
    assert await w.event_count() == before + 6

    w.clock.advance(seconds=2)
    again = await w.send(w.member("M1"), *batch)
    assert again == {
        "results": [
            {"id": e["id"], "status": "duplicate", "result": {**r, "first": "accepted"}}
            for e, r in zip(batch, expected, strict=True)
        ],
        "counts": {"duplicate": 6},
    }
    assert await w.event_count() == before + 6
    rows = [await w.stored(e["id"]) for e in batch]
    assert [(r.kind, r.source, r.member_id, r.late) for r in rows] == [
        (e["type"], "member:M1", w.member_ids["M1"], False) for e in batch
    ]


async def test_the_same_event_twice_in_one_batch_is_stored_once(world: World) -> None:
    w = world
    beat = event("heartbeat", w.clock())
    before = await w.event_count()
    report = await w.send(w.member("M1"), beat, beat)
    assert report == {
        "results": [
            {"id": beat["id"], "status": "accepted", "result": {"ok": True}},
            {"id": beat["id"], "status": "duplicate", "result": {"ok": True, "first": "accepted"}},
        ],
        "counts": {"accepted": 1, "duplicate": 1},
    }
    assert await w.event_count() == before + 1


async def test_bad_events_fail_one_by_one_and_late_ones_are_flagged(world: World) -> None:
    w = world
    now = w.clock()
    unknown_field = event("heartbeat", now, mood="sleepy")
    wrong_type = event("heartbeat", now, visible="yes")
    unknown_type = event("dance", now)
    future = event("heartbeat", now + timedelta(minutes=10))
    long_note = event("study_note", now, text="字" * 20_001)
    good = event("heartbeat", now)
    late = event("heartbeat", now - timedelta(minutes=5))
    before = await w.event_count()

    report = await w.send(
        w.member("M1"), unknown_field, wrong_type, unknown_type, future, long_note, good, late
    )

    results = report["results"]
    assert [(r["id"], r["status"], r["error"]["code"]) for r in results[:5]] == [
        (e["id"], "invalid", "invalid_input")
        for e in (unknown_field, wrong_type, unknown_type, future, long_note)
    ]
    details = [r["error"]["detail"] for r in results[:5]]
    assert details[0] == "heartbeat.mood: Extra inputs are not permitted"
    assert details[1] == "heartbeat.visible: Input should be a valid boolean"
    assert details[2] == (
        "type: must be one of heartbeat, check_in, check_out, presence_answer, quiz_answer, "
        "study_note, makeup_progress, makeup_presence_answer, broadcaster_status, not 'dance'"
    )
    assert details[3] == (
        f"at: {(now + timedelta(minutes=10)).isoformat()} is in the future "
        f"(server time {now.isoformat()})"
    )
    assert details[4] == "study_note.text: String should have at most 20000 characters"
    assert results[5:] == [
        {"id": good["id"], "status": "accepted", "result": {"ok": True}},
        {"id": late["id"], "status": "accepted", "result": {"ok": True}},
    ]
    assert report["counts"] == {"invalid": 5, "accepted": 2}
    assert await w.event_count() == before + 2
    stored_good, stored_late = await w.stored(good["id"]), await w.stored(late["id"])
    assert (stored_good.late, stored_late.late) == (False, True)
    assert stored_late.payload == {
        "visible": True,
        "happened_at": (now - timedelta(minutes=5)).isoformat(),
        "status": "accepted",
        "result": {"ok": True},
    }


async def test_a_batch_of_501_events_is_refused_whole(world: World) -> None:
    w = world
    events = [event("heartbeat", w.clock()) for _ in range(501)]
    r = await w.client.post(f"{w.base}/events", json={"events": events}, headers=w.member("M1"))
    assert await r.json() == {
        "error": "invalid_input",
        "detail": "events: List should have at most 500 items after validation, not 501",
    }
    assert r.status == 400
    assert await w.event_count() == 0


# --- 2. roles ---------------------------------------------------------------------------------


async def test_who_may_send_and_read_what(world: World) -> None:
    w = world
    c, base = w.client, w.base
    outcome = await w.send_one(w.member("M1"), event("heartbeat", w.clock(), member="M2"))
    assert outcome["status"] == "invalid"
    assert outcome["error"] == error(
        "forbidden", "member: a member sends events only for themselves"
    )

    other_venue = {
        "Authorization": f"Bearer {w.venue_token('sh-c', session_id=w.other_session_id)}"
    }
    stranger = {"Authorization": f"Bearer {w.venue_token('sh-c')}"}
    beat = {"events": [event("heartbeat", w.clock())]}
    answers = [
        await status_of(await c.post(f"{base}/events", json=beat, headers=other_venue)),
        await status_of(await c.post(f"{base}/events", json=beat, headers=stranger)),
        await status_of(await c.post(f"{base}/events", json=beat, headers=w.auditor)),
        await status_of(await c.post(f"{base}/questions", json={"prompt": "x"}, headers=w.auditor)),
        await status_of(await c.post(f"{base}/presence-checks", json={}, headers=w.auditor)),
        await status_of(
            await c.post(f"{base}/notes/1/review", json={"decision": "accept"}, headers=w.auditor)
        ),
        await status_of(await c.get(f"{base}/attendance", headers=w.member("M1"))),
        await status_of(await c.get(f"{base}/attendance")),
        await status_of(await c.post(f"{base}/events", json=beat)),
    ]
    assert answers == [
        (403, "wrong_session"),
        (403, "forbidden"),
        (403, "forbidden"),
        (403, "forbidden"),
        (403, "forbidden"),
        (403, "forbidden"),
        (403, "forbidden"),
        (401, "not_logged_in"),
        (401, "not_logged_in"),
    ]
    # The auditor may read.
    assert (await c.get(f"{base}/attendance", headers=w.auditor)).status == 200


async def test_a_publish_token_sends_only_its_own_status_reports(world: World) -> None:
    w = world
    c, base = w.client, w.base
    broadcaster = {
        "Authorization": "Bearer "
        + issue(
            SECRET,
            session_id=w.session_id,
            role=TokenRole.BROADCASTER,
            subject=f"session:{w.session_id}",
            now=w.clock(),
        )
    }
    status = event(
        "broadcaster_status",
        w.clock(),
        state="live",
        source="file clip.webm",
        bitrate_kbps=1800.5,
        fps=30.0,
        rtt_ms=12.0,
    )
    report = await w.send(
        broadcaster,
        status,
        event("heartbeat", w.clock()),
        event("broadcaster_status", w.clock(), state="live", source="x", member="M1"),
        event("broadcaster_status", w.clock(), state="dancing", source="x"),
    )
    assert [(o["status"], (o.get("error") or {}).get("code")) for o in report["results"]] == [
        ("accepted", None),
        ("invalid", "forbidden"),
        ("invalid", "forbidden"),
        ("invalid", "invalid_input"),
    ]
    stored = await w.stored(status["id"])
    assert (stored.kind, stored.source, stored.member_id) == (
        "broadcaster_status",
        "broadcaster",
        None,
    )
    assert stored.payload["bitrate_kbps"] == 1800.5 and stored.payload["state"] == "live"
    # Nobody else sends it; the publish token reads nothing.
    outcome = await w.send_one(
        w.member("M1"), event("broadcaster_status", w.clock(), state="live", source="x")
    )
    assert (outcome["status"], outcome["error"]["code"]) == ("invalid", "forbidden")
    for path in ("/me", "/attendance", "/events/stream"):
        r = await c.get(f"{base}{path}", headers=broadcaster)
        assert (r.status, (await r.json())["error"]) == (403, "forbidden"), path


async def test_a_replaced_personal_link_is_revoked(world: World) -> None:
    w = world
    links = await w.get(f"{w.base}/member-links", w.organiser)
    assert [m["member_no"] for m in links["members"]] == list(MEMBERS)
    assert [v["slug"] for v in links["venues"]] == list(VENUES)
    token = links["members"][3]["url"].rpartition("&t=")[2]
    assert links["members"][3]["url"].startswith("http://127.0.0.1:")
    me = await w.get(f"{w.base}/me", {"Authorization": f"Bearer {token}"})
    assert me["member_no"] == "M4"
    async with w.store.write() as db:
        await db.execute(update(Member).where(Member.member_no == "M4").values(link_version=2))
    # Roster entries are trusted for MEMBER_TTL_S: the old link stops working within that.
    assert (await w.get(f"{w.base}/me", {"Authorization": f"Bearer {token}"}))["member_no"] == "M4"
    w.clock.advance(seconds=MEMBER_TTL_S + 1)
    r = await w.client.get(f"{w.base}/me", headers={"Authorization": f"Bearer {token}"})
    assert (r.status, await r.json()) == (
        401,
        {"error": "revoked", "detail": "this personal link was replaced by a newer one"},
    )
    # The new link works.
    assert (await w.get(f"{w.base}/me?token={w.member_token('M4', version=2)}", {}))[
        "member_no"
    ] == "M4"


# --- 3. check-in ------------------------------------------------------------------------------


async def test_check_in_codes_are_judged_and_refusals_are_kept(world: World) -> None:
    w = world
    code = await w.checkin_code("bj-a")
    assert (code["venue"], code["venue_name"]) == ("bj-a", VENUES["bj-a"])
    assert code["url"].endswith(
        f"#checkin={w.session_id}.bj-a.{code['window']}.{code['signature']}"
    )
    now = w.clock()
    scanned = {"venue": "bj-a", "session": w.session_id, "window": code["window"]}
    signed = event("check_in", now, **scanned, sig=code["signature"])
    typed = event("check_in", now, venue="bj-a", code=code["short_code"])
    assert await w.send_one(w.member("M1"), signed) == {
        "id": signed["id"],
        "status": "accepted",
        "result": {"ok": True, "venue": "bj-a"},
    }
    assert (await w.send_one(w.member("M2"), typed))["result"] == {"ok": True, "venue": "bj-a"}

    w.clock.advance(seconds=91)
    fresh = await w.checkin_code("bj-a")
    tampered = fresh["signature"][:-1] + ("0" if fresh["signature"][-1] != "0" else "1")
    tries = [
        event("check_in", w.clock(), **scanned, sig=code["signature"]),
        event("check_in", w.clock(), **{**scanned, "window": fresh["window"]}, sig=tampered),
        event(
            "check_in",
            w.clock(),
            **{**scanned, "session": w.other_session_id, "window": fresh["window"]},
            sig=fresh["signature"],
        ),
        event("check_in", w.clock(), venue="bj-a", code=code["short_code"]),
    ]
    report = await w.send(w.member("M3"), *tries)
    assert [(r["status"], r["result"]["ok"], r["result"]["code"]) for r in report["results"]] == [
        ("refused", False, "expired"),
        ("refused", False, "forged"),
        ("refused", False, "other_session"),
        ("refused", False, "wrong_code"),
    ]
    rows = [await w.stored(t["id"]) for t in tries]
    assert [
        (r.kind, r.member_id, r.payload["status"], r.payload["result"]["code"]) for r in rows
    ] == [
        ("check_in", w.member_ids["M3"], "refused", code)
        for code in ("expired", "forged", "other_session", "wrong_code")
    ]
    me = await w.get(f"{w.base}/me", w.member("M3"))
    assert me["checked_in"] is None

    # Switching venue, then leaving.
    b = await w.checkin_code("bj-b")
    switch = event("check_in", w.clock(), venue="bj-b", window=b["window"], sig=b["signature"])
    leave = event("check_out", w.clock())
    report = await w.send(w.member("M1"), switch, leave)
    assert [r["result"] for r in report["results"]] == [
        {"ok": True, "venue": "bj-b", "switched_from": "bj-a"},
        {"ok": True, "venue": "bj-b"},
    ]
    states = [(await w.get(f"{w.base}/me", w.member(n)))["checked_in"] for n in ("M1", "M2", "M3")]
    assert states == [None, "bj-a", None]


# --- 4. presence checks -----------------------------------------------------------------------


async def test_presence_check_answers_are_judged_in_order(world: World) -> None:
    w = world
    t0 = w.clock()
    check = await w.post(f"{w.base}/presence-checks", w.organiser, status=201)
    assert check == {
        "id": check["id"],
        "state": "open",
        "opened_at": t0.isoformat(),
        "closes_at": (t0 + timedelta(seconds=60)).isoformat(),
        "window_s": 60,
        "code": check["code"],
    }
    right = check["code"]
    wrong = "0000"

    def answer(code: str) -> dict[str, Any]:
        return event("presence_answer", w.clock(), check=check["id"], code=code)

    outcomes = [
        await w.send_one(w.member("M1"), answer(right)),
        await w.send_one(w.member("M1"), answer(right)),
        *[await w.send_one(w.member("M2"), answer(wrong)) for _ in range(3)],
        await w.send_one(w.member("M2"), answer(right)),
    ]
    w.clock.advance(seconds=65)
    outcomes.append(await w.send_one(w.member("M3"), answer(right)))
    assert [(o["status"], o["result"].get("outcome") or o["result"]["code"]) for o in outcomes] == [
        ("accepted", "passed"),
        ("refused", "replay"),
        ("refused", "wrong_code"),
        ("refused", "wrong_code"),
        ("refused", "wrong_code"),
        ("refused", "too_many"),
        ("accepted", "late"),
    ]
    listed = await w.get(f"{w.base}/presence-checks", w.organiser)
    assert listed == {
        "checks": [
            {
                **check,
                "state": "closed",
                "answers": {"passed": 1, "replay": 1, "wrong_code": 1, "too_many": 1, "late": 1},
            }
        ]
    }
    me = await w.get(f"{w.base}/me", w.member("M2"))
    assert [p["outcome"] for p in me["presence"]] == ["wrong_code"] * 3 + ["too_many"]

    r = await w.client.get(
        f"{w.base}/presence-checks/{check['id']}/code.png?token={w.member_token('M1')}"
    )
    assert (r.status, r.content_type) == (200, "image/png")
    assert (await r.read()).startswith(b"\x89PNG")

    scheduled = await w.post(
        f"{w.base}/presence-checks/schedule", w.organiser, {"count": 3, "within_s": 900}, status=201
    )
    assert [(c["state"], "code" in c, c["window_s"]) for c in scheduled["scheduled"]] == [
        ("scheduled", False, 60)
    ] * 3


# --- 5. quiz ----------------------------------------------------------------------------------

BANK_CSV = (
    "题目,类型,选项A,选项B,选项C,答案,分值,时限\n"
    "1+1=?,单选,1,2,3,B,10,20\n"
    "地球是圆的,判断,,,,对,5,20\n"
).encode()


async def test_a_quiz_round_from_bank_to_leaderboard(world: World) -> None:
    w = world
    r = await w.client.post(
        f"{w.base}/questions",
        data=BANK_CSV,
        headers={**w.organiser, "Content-Type": "text/csv"},
    )
    assert r.status == 201, await r.text()
    bank = (await r.json())["questions"]
    live = await add_question(
        w, prompt="选出偶数", kind="multiple", choices=["1", "2", "4"], correct=[1, 2], points=20
    )
    assert [
        (q["position"], q["kind"], q["choices"], q["correct"], q["state"]) for q in [*bank, live]
    ] == [
        (1, "single", ["1", "2", "3"], [1], "ready"),
        (2, "true_false", ["对 / True", "错 / False"], [0], "ready"),
        (3, "multiple", ["1", "2", "4"], [1, 2], "ready"),
    ]
    q1 = bank[0]["id"]
    t0 = w.clock()
    opened = await w.post(f"{w.base}/questions/{q1}/open", w.organiser, {"time_limit_s": 30})
    assert (opened["state"], opened["time_limit_s"], opened["closes_at"]) == (
        "open",
        30,
        (t0 + timedelta(seconds=30)).isoformat(),
    )

    def answer(choices: list[int]) -> dict[str, Any]:
        return event("quiz_answer", w.clock(), question=q1, choices=choices)

    sent = [await w.send_one(w.member("M1"), answer([0]))]
    w.clock.advance(seconds=2)
    sent.append(await w.send_one(w.member("M1"), answer([1])))  # changed: the last one counts
    w.clock.advance(seconds=10)  # +12
    sent.append(await w.send_one(w.member("M2"), answer([1])))
    sent.append(await w.send_one(w.member("M3"), answer([2])))
    w.clock.advance(seconds=8)  # +20
    sent.append(await w.send_one(w.venue("bj-a"), answer([1])))
    assert [(s["status"], s["result"]["choices"]) for s in sent] == [
        ("accepted", [0]),
        ("accepted", [1]),
        ("accepted", [1]),
        ("accepted", [2]),
        ("accepted", [1]),
    ]

    results = await w.get(f"{w.base}/questions/{q1}/results", w.organiser)
    assert {k: v for k, v in results.items() if k != "question"} == {
        "answered": 3,
        "distribution": [0, 2, 1],
        "teams": [{"venue": "bj-a", "choices": [1], "correct": None, "points": None}],
        "team_distribution": [0, 1, 0],
        "not_answered": {"count": 1, "members": [{"member_no": "M4", "name": MEMBERS["M4"]}]},
    }

    w.clock.advance(seconds=14)  # +34: 4 s after the close, past the 3 s grace
    too_late = await w.send_one(w.member("M4"), answer([1]))
    assert (too_late["status"], too_late["result"]) == (
        "refused",
        {"ok": False, "code": "closed", "detail": "this question has closed"},
    )
    revealed = await w.post(f"{w.base}/questions/{q1}/reveal", w.organiser)
    assert (revealed["state"], revealed["closes_at"]) == (
        "revealed",
        (t0 + timedelta(seconds=30)).isoformat(),
    )

    shown = await w.get(f"{w.base}/questions", w.member("M1"))
    assert [(q["id"], q["state"], q["correct"]) for q in shown["questions"]] == [
        (q1, "revealed", [1])
    ]
    # 10 points plus floor(10 * 0.5 * remaining / 30): M1 at +2 s, M2 at +12 s, bj-a at +20 s.
    by_member = await w.get(f"/api/leaderboard?by=member&session={w.session_id}", w.organiser)
    assert by_member["entries"] == [
        {"rank": 1, "key": "M1", "name": MEMBERS["M1"], "points": 14},
        {"rank": 2, "key": "M2", "name": MEMBERS["M2"], "points": 13},
    ]
    by_venue = await w.get(f"/api/leaderboard?by=venue&session={w.session_id}", w.organiser)
    assert by_venue["entries"] == [{"rank": 1, "key": "bj-a", "name": VENUES["bj-a"], "points": 11}]
    me = await w.get(f"{w.base}/me", w.member("M1"))
    assert (me["quiz"], me["points"]) == (
        [{"question": q1, "choices": [1], "correct": True, "points": 14}],
        14,
    )


async def test_an_answer_accepted_in_the_grace_after_close_earns_its_points(world: World) -> None:
    """An answer arriving within QUIZ_ARRIVAL_GRACE_S of the close is accepted and scored, so
    its points must reach the ledger like the others'."""
    w = world
    question = await add_question(w)
    qid = question["id"]
    await w.post(f"{w.base}/questions/{qid}/open", w.organiser, {"time_limit_s": 30})
    w.clock.advance(seconds=1)
    early = event("quiz_answer", w.clock(), question=qid, choices=[1])
    assert (await w.send_one(w.member("M1"), early))["status"] == "accepted"
    w.clock.advance(seconds=9)  # +10: the organiser closes early
    await w.post(f"{w.base}/questions/{qid}/close", w.organiser)
    w.clock.advance(seconds=2)  # +12: sent before the close, arrived within the grace
    grace = event("quiz_answer", w.clock() - timedelta(seconds=3), question=qid, choices=[1])
    assert (await w.send_one(w.member("M2"), grace))["status"] == "accepted"
    await w.post(f"{w.base}/questions/{qid}/reveal", w.organiser)

    mine = [(await w.get(f"{w.base}/me", w.member(n))) for n in ("M1", "M2")]
    # M1: 10 + floor(10 * 0.5 * 29 / 30); M2 scored as of the close: 10 + floor(5 * 20 / 30).
    assert [(m["quiz"][0]["points"], m["points"]) for m in mine] == [(14, 14), (13, 13)]
    board = await w.get(f"/api/leaderboard?by=member&session={w.session_id}", w.organiser)
    assert board["entries"] == [
        {"rank": 1, "key": "M1", "name": MEMBERS["M1"], "points": 14},
        {"rank": 2, "key": "M2", "name": MEMBERS["M2"], "points": 13},
    ]


# --- 6. study notes ---------------------------------------------------------------------------


async def test_study_notes_are_reviewed_once(world: World) -> None:
    w = world
    await w.send_one(w.member("M1"), event("study_note", w.clock(), text="第一篇"))
    await w.send_one(w.member("M2"), event("study_note", w.clock(), text="第二篇"))
    notes = (await w.get(f"{w.base}/notes?status=submitted", w.organiser))["notes"]
    assert [(n["member_no"], n["text"], n["status"]) for n in notes] == [
        ("M1", "第一篇", "submitted"),
        ("M2", "第二篇", "submitted"),
    ]
    first, second = notes[0]["id"], notes[1]["id"]
    review = f"{w.base}/notes/{{}}/review"
    r = await w.client.post(review.format(first), json={"decision": "return"}, headers=w.organiser)
    assert (r.status, await r.json()) == (
        400,
        {"error": "invalid_input", "detail": "comment: say why the note is returned"},
    )
    returned = await w.post(
        review.format(first), w.organiser, {"decision": "return", "comment": "太短"}
    )
    accepted = await w.post(review.format(second), w.organiser, {"decision": "accept"})
    assert [(n["status"], n["comment"]) for n in (returned, accepted)] == [
        ("returned", "太短"),
        ("accepted", None),
    ]
    again = await w.client.post(
        review.format(second), json={"decision": "accept"}, headers=w.organiser
    )
    assert (again.status, (await again.json())["error"]) == (409, "already_reviewed")
    points = [(await w.get(f"{w.base}/me", w.member(n)))["points"] for n in ("M1", "M2")]
    assert points == [0, 5]
    m1 = await w.get(f"{w.base}/me", w.member("M1"))
    assert [(n["status"], n["comment"]) for n in m1["notes"]] == [("returned", "太短")]


# --- 7. attendance and evaluation -------------------------------------------------------------


async def test_attendance_at_the_end_matches_the_figures_worked_by_hand(world: World) -> None:
    w = world
    t0 = w.clock()

    def at(s: float) -> datetime:
        return t0 + timedelta(seconds=s)

    async with w.store.write() as db:
        await append_attendance_events(
            db,
            [
                NewAttendanceEvent(
                    session_id=w.session_id,
                    event_uuid=uuid.uuid4(),
                    kind="broadcast",
                    source="relay",
                    client_time=t0,
                    payload={"state": "live", "at": t0.isoformat()},
                ),
                # The remote member's player received media for the first 5 minutes.
                NewAttendanceEvent(
                    session_id=w.session_id,
                    event_uuid=uuid.uuid4(),
                    kind="media",
                    source="relay",
                    client_time=at(300),
                    member_id=w.member_ids["M1"],
                    payload={"from": t0.isoformat(), "to": at(300).isoformat()},
                ),
                # The venue screen was connected all along.
                NewAttendanceEvent(
                    session_id=w.session_id,
                    event_uuid=uuid.uuid4(),
                    kind="media",
                    source="relay",
                    client_time=at(600),
                    venue_id=w.venue_ids["bj-a"],
                    payload={"from": t0.isoformat(), "to": at(600).isoformat()},
                ),
            ],
            now=t0,
        )
    # M2 checks in at bj-a one minute in.
    w.clock.advance(seconds=60)
    code = await w.checkin_code("bj-a")
    checked = await w.send_one(
        w.member("M2"), event("check_in", w.clock(), venue="bj-a", code=code["short_code"])
    )
    assert checked["status"] == "accepted"
    # M1's page beat every 15 s from 0 to 240 s (sent late, in one batch, at the end).
    w.clock.advance(seconds=540)
    beats = [event("heartbeat", at(s)) for s in range(0, 241, 15)]
    report = await w.send(w.member("M1"), *beats)
    assert report["counts"] == {"accepted": len(beats)}

    ended = await w.post(f"{w.base}/end", w.organiser)
    assert ended["state"] == "ended"

    attendance = await w.get(f"{w.base}/attendance", w.organiser)
    # Live 0..600 s. M1: media 0..300 ∩ beats covering 0..260 (last beat + 20 s) = 260 s.
    # M2: checked in 60..600 at bj-a, its screen on 0..600 = 540 s on-site.
    absent = {
        "expected": True,
        "mode": "absent",
        "venue": None,
        "first_join": None,
        "last_leave": None,
        "watched_s": 0.0,
        "live_s": 600.0,
        "share": 0.0,
        "onsite_s": 0.0,
        "remote_s": 0.0,
        "presence_passed": 0,
        "presence_total": 0,
        "quiz_points": 0,
        "qualified": False,
        "reason": "watched 0% of live time (needs 85%)",
    }
    assert attendance == {
        "session_id": w.session_id,
        "summary": {"members": 4, "expected": 4, "present": 2, "qualified": 1},
        "members": [
            {
                **absent,
                "member_no": "M1",
                "name": MEMBERS["M1"],
                "unit": "北京/朝阳",
                "mode": "remote",
                "first_join": t0.isoformat(),
                "last_leave": at(260).isoformat(),
                "watched_s": 260.0,
                "share": round(260 / 600, 4),
                "remote_s": 260.0,
                "reason": "watched 43% of live time (needs 85%)",
            },
            {
                **absent,
                "member_no": "M2",
                "name": MEMBERS["M2"],
                "unit": "北京/朝阳",
                "mode": "onsite",
                "venue": "bj-a",
                "first_join": at(60).isoformat(),
                "last_leave": at(600).isoformat(),
                "watched_s": 540.0,
                "share": 0.9,
                "onsite_s": 540.0,
                "qualified": True,
                "reason": "watched 90% of live time; passed 0 of 0 presence checks",
            },
            *[
                {**absent, "member_no": n, "name": MEMBERS[n], "unit": "北京/朝阳"}
                for n in ("M3", "M4")
            ],
        ],
    }
    async with w.store.read() as db:
        results = (
            await db.execute(
                select(Member.member_no, SessionResult.watched_s, SessionResult.qualified)
                .join(Member, Member.id == SessionResult.member_id)
                .where(SessionResult.session_id == w.session_id)
                .order_by(Member.member_no)
            )
        ).all()
    assert [tuple(r) for r in results] == [
        ("M1", 260.0, False),
        ("M2", 540.0, True),
        ("M3", 0.0, False),
        ("M4", 0.0, False),
    ]
    board = await w.get(f"/api/leaderboard?by=member&session={w.session_id}", w.organiser)
    assert board["entries"] == [{"rank": 1, "key": "M2", "name": MEMBERS["M2"], "points": 10}]
    venues = await w.get(f"/api/leaderboard?by=venue&session={w.session_id}", w.organiser)
    assert venues["entries"] == [{"rank": 1, "key": "bj-a", "name": VENUES["bj-a"], "points": 10}]


# --- 8. the live event stream -----------------------------------------------------------------


async def test_the_stream_tells_each_audience_what_it_may_know(world: World) -> None:
    w = world
    question = await add_question(w)
    member = await w.client.get(f"{w.base}/events/stream?token={w.member_token('M1')}")
    organiser = await w.client.get(f"{w.base}/events/stream", headers=w.organiser)
    try:
        assert (member.status, organiser.status) == (200, 200)
        member_sse, organiser_sse = SseReader(member), SseReader(organiser)
        skipped, snap = await member_sse.until("snapshot")
        assert skipped == []
        assert (snap.data["session"]["id"], snap.data["question"], "counts" in snap.data) == (
            w.session_id,
            None,
            False,
        )
        _, staff_snap = await organiser_sse.until("snapshot")
        assert staff_snap.data["counts"]["checkins_total"] == 0

        await w.post(f"{w.base}/questions/{question['id']}/open", w.organiser, {})

        seen_by_member = await member_sse.next()
        seen_by_organiser = await organiser_sse.next()
        assert (seen_by_member.event, seen_by_organiser.event) == ("quiz_opened", "quiz_opened")
        assert seen_by_member.data == {
            k: v for k, v in seen_by_organiser.data.items() if k != "correct"
        }
        assert (seen_by_member.data["id"], seen_by_organiser.data["correct"]) == (
            question["id"],
            [1],
        )
    finally:
        member.close()
        organiser.close()


async def test_stored_events_form_one_hash_chain(world: World) -> None:
    """Everything the API stored is in the hash chain, in order."""
    w = world
    await w.send(w.member("M1"), event("heartbeat", w.clock()), event("heartbeat", w.clock()))
    async with w.store.read() as db:
        rows = list(await db.scalars(select(AttendanceEvent).order_by(AttendanceEvent.id)))
    assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]


async def test_personal_and_venue_links_as_qr_codes(world: World) -> None:
    w = world
    url = f"{w.base}/link-qr.svg"
    for query in ("member=M1", "venue=bj-a"):
        r = await w.client.get(f"{url}?{query}", headers=w.organiser)
        assert (r.status, r.content_type) == (200, "image/svg+xml"), await r.text()
        assert "<svg" in await r.text()
    for query, status in [
        ("", 400),
        ("member=M1&venue=bj-a", 400),
        ("member=nobody", 404),
        ("venue=elsewhere", 404),
    ]:
        r = await w.client.get(f"{url}?{query}", headers=w.organiser)
        assert r.status == status, (query, await r.text())
    r = await w.client.get(f"{url}?member=M1", headers=w.auditor)
    assert r.status == 403
    r = await w.client.get(f"{url}?member=M1", headers=w.member("M1"))
    assert r.status == 403
