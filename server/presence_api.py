"""The presence-check API: trigger one now, schedule several at random times, list them with
their pass rates, and the code as an image for the remote player.

Members never receive a check's code as text: the remote player shows it as a picture, the
way a venue screen shows it to the room, so answering takes someone looking at the screen.
"""

from __future__ import annotations

import random
import secrets
from typing import Any

import cv2
import numpy as np
from aiohttp import web

from attendance.errors import InvalidInput, NotFound
from attendance.models import PresenceCheck
from attendance.presence import DEFAULT_WINDOW_S
from attendance.presence_checks import describe_check, list_checks, schedule_checks, trigger_check
from server.api import id_param
from server.auth import CLOCK, STORE, token_or_login
from server.callers import ORGANISER
from server.http_errors import read_json_object
from server.live_events import LIVE, publish_presence_check
from server.record_api import ALL, STAFF, caller_for

routes = web.RouteTableDef()
ORGANISERS = frozenset({ORGANISER})
# Codes come from the operating system's randomness: they must not be guessable.
_RNG = random.SystemRandom()


def _int_field(body: dict[str, Any], name: str, default: int | None) -> int:
    value = body.get(name, default)
    if value is None:
        raise InvalidInput(f"{name}: missing")
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"{name}: must be a whole number")
    return value


async def _body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    body = await read_json_object(request)
    unknown = set(body) - allowed
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}")
    return body


@routes.post("/api/sessions/{id}/presence-checks")
@token_or_login
async def checks_trigger(request: web.Request) -> web.Response:
    """Open a presence check now (``{"window_s": 60}`` by default)."""
    session_id, caller = await caller_for(request, ORGANISERS)
    body = await _body(request, {"window_s"})
    now = request.config_dict[CLOCK]()
    async with request.config_dict[STORE].write() as db:
        check = await trigger_check(
            db,
            session_id,
            now=now,
            rng=_RNG,
            window_s=_int_field(body, "window_s", DEFAULT_WINDOW_S),
            actor=caller.actor,
            user_id=caller.user_id,
        )
    publish_presence_check(request.config_dict[LIVE], check, now)
    return web.json_response(describe_check(check, now, with_code=True), status=201)


@routes.post("/api/sessions/{id}/presence-checks/schedule")
@token_or_login
async def checks_schedule(request: web.Request) -> web.Response:
    """Schedule ``count`` checks at random times within ``within_s`` seconds from now."""
    session_id, caller = await caller_for(request, ORGANISERS)
    body = await _body(request, {"count", "within_s", "window_s"})
    now = request.config_dict[CLOCK]()
    async with request.config_dict[STORE].write() as db:
        checks = await schedule_checks(
            db,
            session_id,
            count=_int_field(body, "count", None),
            within_s=_int_field(body, "within_s", None),
            window_s=_int_field(body, "window_s", DEFAULT_WINDOW_S),
            now=now,
            rng=_RNG,
            actor=caller.actor,
            user_id=caller.user_id,
        )
    return web.json_response(
        {"scheduled": [describe_check(c, now, with_code=False) for c in checks]}, status=201
    )


@routes.get("/api/sessions/{id}/presence-checks")
@token_or_login
async def checks_index(request: web.Request) -> web.Response:
    session_id, _ = await caller_for(request, STAFF)
    async with request.config_dict[STORE].read() as db:
        checks = await list_checks(db, session_id, now=request.config_dict[CLOCK]())
    return web.json_response({"checks": checks})


@routes.get("/api/sessions/{id}/presence-checks/{cid}/code.png")
@token_or_login
async def check_code_image(request: web.Request) -> web.Response:
    """The check's code drawn as a picture (for ``<img src=...&token=...>``)."""
    session_id, _ = await caller_for(request, ALL)
    check_id = id_param(request, "presence check", "cid")
    now = request.config_dict[CLOCK]()
    async with request.config_dict[STORE].read() as db:
        check = await db.get(PresenceCheck, check_id)
    if (
        check is None
        or check.session_id != session_id
        or check.announced_at is None
        or check.opened_at > now
    ):
        raise NotFound(f"no presence check {check_id} shown in session {session_id}")
    return web.Response(
        body=render_code(check.code),
        content_type="image/png",
        headers={"Cache-Control": "no-store"},
    )


def render_code(code: str) -> bytes:
    """A PNG of ``code`` with a little noise, so it is read by eye rather than copied."""
    height, width = 120, 60 + 70 * len(code)
    image = np.full((height, width, 3), 250, dtype=np.uint8)
    noise = secrets.token_bytes(height * width)
    mask = np.frombuffer(noise, dtype=np.uint8).reshape(height, width) > 235
    image[mask] = (200, 200, 200)
    for i, char in enumerate(code):
        x = 30 + 70 * i + secrets.randbelow(10)
        y = 85 + secrets.randbelow(12)
        cv2.putText(
            image, char, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 2.4, (20, 20, 20), 5, cv2.LINE_AA
        )
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("could not encode the presence code image")
    return bytes(png.tobytes())
