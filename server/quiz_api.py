"""The quiz API: the question bank (added live or imported as CSV or JSON), opening, closing
and revealing questions, and the live results for the organiser."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from attendance.errors import InvalidInput
from attendance.evaluation import expected_member_ids
from attendance.questions import (
    add_questions,
    close_question,
    describe_question,
    get_question,
    list_questions,
    open_question,
    question_results,
    reveal_question,
)
from attendance.quiz import parse_bank_json, parse_question
from attendance.quiz_csv import parse_bank_csv
from attendance.sessions import get_session
from server.api import id_param
from server.auth import CLOCK, STORE, token_or_login
from server.callers import ORGANISER
from server.http_errors import UnsupportedMediaType, read_json_object
from server.live_events import LIVE, publish_question
from server.record_api import ALL, STAFF, caller_for

routes = web.RouteTableDef()
ORGANISERS = frozenset({ORGANISER})


@routes.get("/api/sessions/{id}/questions")
@token_or_login
async def questions_index(request: web.Request) -> web.Response:
    """Staff see the whole bank with answers; members and venues the questions opened so
    far, with answers once revealed."""
    session_id, caller = await caller_for(request, ALL)
    now = request.config_dict[CLOCK]()
    staff = caller.audience in STAFF
    async with request.config_dict[STORE].read() as db:
        questions = await list_questions(db, session_id)
    shown = [
        describe_question(q, now, with_answer=staff)
        for q in questions
        if staff or q.opened_at is not None
    ]
    return web.json_response({"questions": shown})


@routes.post("/api/sessions/{id}/questions")
@token_or_login
async def questions_create(request: web.Request) -> web.Response:
    """Add questions: one JSON question, ``{"questions": [...]}`` or a bare JSON list, or a
    CSV bank (``Content-Type: text/csv``, ``?encoding=gb18030`` for GB18030 files)."""
    session_id, caller = await caller_for(request, ORGANISERS)
    if request.content_type == "text/csv":
        encoding = request.query.get("encoding")
        if encoding not in (None, "utf-8", "gb18030"):
            raise InvalidInput(f"encoding: must be utf-8 or gb18030, not {encoding!r}")
        drafts = parse_bank_csv(await request.read(), encoding=encoding)
        source = "csv"
    elif request.content_type == "application/json":
        raw = await request.read()
        try:
            body: Any = await read_json_object(request)
        except InvalidInput:
            body = None
        if isinstance(body, dict) and "questions" not in body:
            drafts = [parse_question(body)]
            source = "live"
        else:
            drafts = parse_bank_json(raw)
            source = "json"
    else:
        raise UnsupportedMediaType(
            "send one question or a bank as application/json, or a bank as text/csv"
        )
    now = request.config_dict[CLOCK]()
    async with request.config_dict[STORE].write() as db:
        rows = await add_questions(
            db, session_id, drafts, now=now, actor=caller.actor, source=source
        )
        body = {"questions": [describe_question(q, now, with_answer=True) for q in rows]}
    return web.json_response(body, status=201)


async def _action(request: web.Request, action: str) -> web.Response:
    session_id, caller = await caller_for(request, ORGANISERS)
    question_id = id_param(request, "question", "qid")
    now = request.config_dict[CLOCK]()
    time_limit: int | None = None
    if action == "open" and request.can_read_body:
        body = await read_json_object(request)
        unknown = set(body) - {"time_limit_s"}
        if unknown:
            raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}")
        raw = body.get("time_limit_s")
        if raw is not None and (not isinstance(raw, int) or isinstance(raw, bool)):
            raise InvalidInput("time_limit_s: must be a whole number of seconds")
        time_limit = raw
    async with request.config_dict[STORE].write() as db:
        if action == "open":
            question = await open_question(
                db, session_id, question_id, now=now, actor=caller.actor, time_limit_s=time_limit
            )
        elif action == "close":
            question = await close_question(
                db, session_id, question_id, now=now, actor=caller.actor
            )
        else:
            question = await reveal_question(
                db, session_id, question_id, now=now, actor=caller.actor
            )
    publish_question(request.config_dict[LIVE], question, now)
    return web.json_response(describe_question(question, now, with_answer=True))


@routes.post("/api/sessions/{id}/questions/{qid}/open")
@token_or_login
async def question_open(request: web.Request) -> web.Response:
    """Open a question; ``{"time_limit_s": N}`` overrides its timer."""
    return await _action(request, "open")


@routes.post("/api/sessions/{id}/questions/{qid}/close")
@token_or_login
async def question_close(request: web.Request) -> web.Response:
    return await _action(request, "close")


@routes.post("/api/sessions/{id}/questions/{qid}/reveal")
@token_or_login
async def question_reveal(request: web.Request) -> web.Response:
    return await _action(request, "reveal")


@routes.get("/api/sessions/{id}/questions/{qid}/results")
@token_or_login
async def question_results_show(request: web.Request) -> web.Response:
    """The answer distribution, team answers and who has not answered yet."""
    session_id, _ = await caller_for(request, STAFF)
    question_id = id_param(request, "question", "qid")
    async with request.config_dict[STORE].read() as db:
        question = await get_question(db, session_id, question_id)
        session = await get_session(db, session_id)
        expected = await expected_member_ids(db, session)
        body = await question_results(
            db, question, expected_member_ids=expected, now=request.config_dict[CLOCK]()
        )
    return web.json_response(body)
