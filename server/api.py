"""The JSON API over the record store's domain functions: units, venues, study sessions.

Handlers only translate: read and validate the request, call ``attendance.*`` inside
``store.read()`` or ``store.write()``, and shape the answer. Errors are raised, never built here.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from attendance.errors import InvalidInput, NotFound, invalid_input
from attendance.evaluation import finalize_session
from attendance.models import Role, SessionState
from attendance.sessions import (
    create_session,
    describe,
    end_session,
    get_session,
    list_sessions,
    parse_draft,
    update_session,
)
from attendance.units import list_units
from attendance.venues import EDGE_URL_MAX, SLUG, add_venue, list_venues, set_venue_edge
from server.auth import CLOCK, SETTINGS, STORE, current_user, require_role
from server.http_errors import read_json_object
from server.late_evidence import LATE_EVIDENCE
from server.links import session_links
from server.live_events import LIVE, publish_session_state
from server.whip import RELAY

routes = web.RouteTableDef()

_ID = re.compile(r"^[0-9]{1,18}$")
_MAX_ID = 2**31 - 1  # ids are INTEGER columns


def id_param(request: web.Request, what: str, name: str = "id") -> int:
    """A positive integer from the path: 400 if it is not one, 404 beyond any stored id."""
    raw = request.match_info[name]
    if not _ID.match(raw):
        raise InvalidInput(f"{name} must be a positive integer, not {raw[:40]!r}")
    value = int(raw)
    if not 0 < value <= _MAX_ID:
        raise NotFound(f"no {what} {value}")
    return value


def _created(body: dict[str, Any], location: str | None = None) -> web.Response:
    headers = {"Location": location} if location else None
    return web.json_response(body, status=201, headers=headers)


@routes.get("/api/units")
@require_role(Role.ORGANISER, Role.AUDITOR)
async def units_index(request: web.Request) -> web.Response:
    async with request.config_dict[STORE].read() as db:
        units = await list_units(db)
    return web.json_response({"units": [asdict(u) for u in units]})


@routes.get("/api/venues")
@require_role(Role.ORGANISER, Role.AUDITOR, Role.VENUE_OPERATOR)
async def venues_index(request: web.Request) -> web.Response:
    async with request.config_dict[STORE].read() as db:
        venues = await list_venues(db)
    return web.json_response({"venues": [asdict(v) for v in venues]})


class VenueDraft(BaseModel):
    """The body of ``POST /api/venues``; ``attendance.venues`` checks the values."""

    model_config = ConfigDict(extra="forbid")

    slug: StrictStr
    name: StrictStr
    unit_path: StrictStr
    capacity: StrictInt | None = None


@routes.post("/api/venues")
@require_role(Role.ORGANISER)
async def venues_create(request: web.Request) -> web.Response:
    user = await current_user(request)
    try:
        draft = VenueDraft.model_validate(await read_json_object(request))
    except ValidationError as exc:
        raise invalid_input(exc) from exc
    async with request.config_dict[STORE].write() as db:
        venue = await add_venue(
            db,
            slug=draft.slug,
            name=draft.name,
            unit_path=draft.unit_path,
            capacity=draft.capacity,
            now=request.config_dict[CLOCK](),
            actor=user.actor,
        )
    return _created(asdict(venue))


class VenueChanges(BaseModel):
    """The body of ``PATCH /api/venues/{slug}``: the edge its screen plays from (null: the
    origin); ``attendance.venues`` checks the URL."""

    model_config = ConfigDict(extra="forbid")

    edge_url: StrictStr | None = Field(max_length=EDGE_URL_MAX)


@routes.patch("/api/venues/{slug}")
@require_role(Role.ORGANISER)
async def venues_update(request: web.Request) -> web.Response:
    """Assign the venue an edge, or clear it; venue links made afterwards point there."""
    user = await current_user(request)
    slug = request.match_info["slug"]
    if not SLUG.match(slug):
        raise NotFound(f"no venue {slug[:40]!r}")
    try:
        changes = VenueChanges.model_validate(await read_json_object(request))
    except ValidationError as exc:
        raise invalid_input(exc) from exc
    async with request.config_dict[STORE].write() as db:
        venue = await set_venue_edge(
            db,
            slug,
            changes.edge_url,
            now=request.config_dict[CLOCK](),
            actor=user.actor,
        )
    return web.json_response(asdict(venue))


@routes.get("/api/sessions")
@require_role(Role.ORGANISER, Role.AUDITOR)
async def sessions_index(request: web.Request) -> web.Response:
    """Sessions, newest first; ``?state=live`` narrows the list."""
    raw_state = request.query.get("state")
    state: SessionState | None = None
    if raw_state is not None:
        try:
            state = SessionState(raw_state)
        except ValueError:
            allowed = ", ".join(s.value for s in SessionState)
            raise InvalidInput(f"state must be one of {allowed}, not {raw_state!r}") from None
    async with request.config_dict[STORE].read() as db:
        sessions = await list_sessions(db, state=state)
        body = {"sessions": [describe(s) for s in sessions]}
    return web.json_response(body)


@routes.post("/api/sessions")
@require_role(Role.ORGANISER)
async def sessions_create(request: web.Request) -> web.Response:
    """Schedule a session from a ``SessionDraft`` body."""
    user = await current_user(request)
    draft = parse_draft(await read_json_object(request))
    store = request.config_dict[STORE]
    async with store.write() as db:
        created = await create_session(
            db, draft, now=request.config_dict[CLOCK](), actor=user.actor, user_id=user.id
        )
    # Read back what was stored, so the answer equals GET's (times in UTC, not as sent).
    async with store.read() as db:
        body = describe(await get_session(db, created.id))
    return _created(body, f"/api/sessions/{body['id']}")


@routes.get("/api/sessions/{id}")
@require_role(Role.ORGANISER, Role.AUDITOR)
async def sessions_show(request: web.Request) -> web.Response:
    session_id = id_param(request, "study session")
    async with request.config_dict[STORE].read() as db:
        body = describe(await get_session(db, session_id))
    return web.json_response(body)


@routes.patch("/api/sessions/{id}")
@require_role(Role.ORGANISER)
async def sessions_update(request: web.Request) -> web.Response:
    """Edit a session not yet ended: any ``SessionDraft`` fields, the others stay as they are."""
    user = await current_user(request)
    session_id = id_param(request, "study session")
    data = await read_json_object(request)
    store = request.config_dict[STORE]
    async with store.write() as db:
        changes = await update_session(
            db, session_id, data, now=request.config_dict[CLOCK](), actor=user.actor
        )
    async with store.read() as db:
        body = describe(await get_session(db, session_id))
    return web.json_response({**body, "changed": sorted(changes)})


@routes.get("/api/sessions/{id}/stats")
@require_role(Role.ORGANISER, Role.AUDITOR)
async def sessions_stats(request: web.Request) -> web.Response:
    """Live media statistics: broadcaster, viewers by kind, packets, NACKs, PLIs, loss."""
    session_id = id_param(request, "study session")
    async with request.config_dict[STORE].read() as db:
        session = await get_session(db, session_id)
        state = session.state.value
        codec = session.video_codec.value
    hub = request.config_dict[RELAY].sessions.get(session_id)
    if hub is None:
        body: dict[str, Any] = {
            "session_id": session_id,
            "state": state,
            "video_codec": codec,
            "broadcaster": None,
            "viewers": {"total": 0, "by_kind": {}},
        }
    else:
        body = hub.stats()
        body["state"] = state
    return web.json_response(body)


@routes.get("/api/sessions/{id}/links")
@require_role(Role.ORGANISER)
async def sessions_links(request: web.Request) -> web.Response:
    """The WHIP settings for OBS or the browser and the session's viewer link."""
    session_id = id_param(request, "study session")
    async with request.config_dict[STORE].read() as db:
        await get_session(db, session_id)
    return web.json_response(
        session_links(
            request.config_dict[SETTINGS],
            session_id,
            now=request.config_dict[CLOCK](),
            base_url=public_base(request),
        )
    )


@routes.post("/api/sessions/{id}/end")
@require_role(Role.ORGANISER)
async def sessions_end(request: web.Request) -> web.Response:
    """End a session: the broadcast and every viewer are disconnected, nobody may rejoin."""
    user = await current_user(request)
    session_id = id_param(request, "study session")
    store = request.config_dict[STORE]
    now = request.config_dict[CLOCK]()
    async with store.write() as db:
        await end_session(db, session_id, now=now, actor=user.actor)
        # Every member evaluated by the attendance rule; attendance points awarded.
        await finalize_session(db, session_id, now=now)
    await request.config_dict[RELAY].end_session(session_id)
    publish_session_state(request.config_dict[LIVE], session_id, "ended")
    # The last seconds of viewers on every node are written at their next evidence round.
    request.config_dict[LATE_EVIDENCE].after_end(session_id)
    async with store.read() as db:
        body = describe(await get_session(db, session_id))
    return web.json_response(body)


def public_base(request: web.Request) -> str:
    settings = request.config_dict[SETTINGS]
    if settings.public_base_url:
        return settings.public_base_url
    return f"{request.scheme}://{request.host}"
