"""WHIP (RFC 9725) and WHEP endpoints: SDP offers in, SDP answers out, one resource per peer.

``POST /whip/{session}`` publishes with a broadcaster token, ``POST /whep/{session}`` plays with
a viewer, venue or member token. Both answer ``201 Created`` with the SDP answer and a
``Location``; ``DELETE`` on it hangs up. CORS is open (tokens are bearer headers, not cookies),
so a page or tool on another origin can publish or play.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from sqlalchemy import select

from attendance.errors import Conflict, InvalidInput, NotFound
from attendance.models import SessionState, StudySession
from recordings import Recordings
from server.auth import CLOCK, SETTINGS, STORE, public
from server.http_errors import (
    BodyTooLarge,
    OriginUnreachable,
    Overloaded,
    UnsupportedMediaType,
)
from server.relay.codecs import MAX_SDP_BYTES
from server.relay.fanout import SessionRelay
from server.relay.relay import Relay
from server.relay.upstream import EdgeFeeds
from server.tokens import VIEWER_ROLES, TokenClaims, TokenRole, bearer, verify
from server.workers import PEER_HTTP, WORKER

log = logging.getLogger(__name__)

RELAY = web.AppKey("studycast.relay", Relay)
RECORDINGS = web.AppKey("studycast.recordings", Recordings)
# On an edge: the feeds pulled from the origin (absent on the origin).
EDGE_FEEDS = web.AppKey("studycast.edge_feeds", EdgeFeeds)
# One of several worker processes of this node (absent with one process).
PROXY_TIMEOUT_S = 15.0
SDP = "application/sdp"
RETRY_AFTER_FULL_S = 30
# A session behind live on this node catches up within seconds once nobody more joins.
RETRY_AFTER_BEHIND_S = 5
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Post",
    "Access-Control-Max-Age": "600",
}

# A broadcaster connection's resource id (``secrets.token_urlsafe(12)``, maybe a worker prefix).
_RESOURCE = re.compile(r"[A-Za-z0-9_-]{1,64}")

routes = web.RouteTableDef()


def _session_id(request: web.Request) -> int:
    raw = request.match_info["session_id"]
    if not raw.isdigit() or len(raw) > 12:
        raise NotFound(f"no study session {raw!r}")
    return int(raw)


def _claims(request: web.Request, session_id: int, roles: frozenset[TokenRole]) -> TokenClaims:
    return verify(
        request.config_dict[SETTINGS].resolved_secret_key(),
        bearer(request.headers.get("Authorization")),
        session_id=session_id,
        roles=roles,
        now=request.config_dict[CLOCK](),
    )


async def _session_hub(request: web.Request, session_id: int) -> SessionRelay:
    async with request.config_dict[STORE].read() as db:
        row = (
            await db.execute(
                select(StudySession.state, StudySession.video_codec).where(
                    StudySession.id == session_id
                )
            )
        ).one_or_none()
    if row is None:
        raise NotFound(f"no study session {session_id}")
    state, codec = row
    if state == SessionState.ENDED:
        raise Conflict(f"study session {session_id} has ended", code="session_ended")
    return request.config_dict[RELAY].session(session_id, codec.value)


async def _read_offer(request: web.Request) -> str:
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != SDP:
        raise UnsupportedMediaType(
            f"the offer must be sent as {SDP}, not {content_type or 'no content type'}"
        )
    too_large = BodyTooLarge(f"the SDP offer is larger than {MAX_SDP_BYTES // 1024} KiB")
    if request.content_length is not None and request.content_length > MAX_SDP_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    # The whole body, however it is split on the wire, but never more than the limit.
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > MAX_SDP_BYTES:
            raise too_large
        chunks.append(chunk)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise UnsupportedMediaType("the SDP offer is not UTF-8 text") from None


def _created(location: str, answer: str) -> web.Response:
    return web.Response(
        status=201,
        body=answer.encode("utf-8"),
        content_type=SDP,
        headers={"Location": location, **CORS_HEADERS},
    )


def _reconnect(request: web.Request) -> str | None:
    """``?reconnect=RESOURCE``: the broadcaster connection this client had before (our pages
    and ``studycast publish`` say so when they reconnect; other WHIP clients do not)."""
    value = request.query.get("reconnect")
    if value is None:
        return None
    if not _RESOURCE.fullmatch(value):
        raise InvalidInput(
            "reconnect must be the resource id of this client's previous connection "
            "(the last part of its Location)"
        )
    return value


@routes.post("/whip/{session_id}")
@public  # authenticated by the broadcaster token
async def whip_publish(request: web.Request) -> web.Response:
    """Start (or take over) the broadcast of a session."""
    session_id = _session_id(request)
    _claims(request, session_id, frozenset({TokenRole.BROADCASTER}))
    if EDGE_FEEDS in request.config_dict:
        # The broadcaster belongs to the origin: an edge passes the offer on.
        return await _to_origin(request)
    reconnect = _reconnect(request)
    hub = await _session_hub(request, session_id)
    # Every broadcaster connection is recorded while the session's recording switch is on.
    await request.config_dict[RECORDINGS].attach(hub)
    try:
        offer = await _read_offer(request)
        resource, answer = await hub.add_broadcaster(offer, reconnect)
    finally:
        request.config_dict[RELAY].prune(session_id)
    log.info("session %s: broadcaster %s connected", session_id, resource)
    return _created(f"/whip/{session_id}/{resource}", answer)


@routes.post("/whep/{session_id}")
@public  # authenticated by the viewer token
async def whep_play(request: web.Request) -> web.Response:
    """Start playing a session (before its broadcast starts, too)."""
    session_id = _session_id(request)
    claims = _claims(request, session_id, VIEWER_ROLES | {TokenRole.NODE})
    relay = request.config_dict[RELAY]
    hub = await _session_hub(request, session_id)
    if hub.overload.behind:
        hub.overload.refuse()
        raise Overloaded(
            f"session {session_id} is behind live on this node "
            f"({(hub.overload.backlog or 0) // 1024} KB of its media queued unread, the oldest "
            f"for {hub.overload.waited_s or 0:.2f} s): "
            f"try again in {RETRY_AFTER_BEHIND_S} s",
            retry_after=RETRY_AFTER_BEHIND_S,
        )
    # An edge pulling the session is not a viewer seat: it is capped on the edge itself.
    seat = claims.role is not TokenRole.NODE
    # The place is taken before negotiating, so concurrent offers cannot pass the cap together.
    if seat and not relay.reserve_viewer():
        raise Overloaded(
            f"this node serves its maximum of {relay.max_viewers} viewers",
            retry_after=RETRY_AFTER_FULL_S,
        )
    try:
        offer = await _read_offer(request)
        kind = claims.role.value if seat else "edge"
        resource, answer = await hub.add_viewer(offer, kind, claims.subject)
    finally:
        if seat:
            relay.release_viewer()
        relay.prune(session_id)
    feeds = request.config_dict.get(EDGE_FEEDS)
    if feeds is not None:
        feeds.ensure(hub)  # this node's viewers are fed from the origin
    return _created(f"/whep/{session_id}/{resource}", answer)


async def _to_origin(request: web.Request) -> web.Response:
    """Pass a WHIP request on to the origin and its answer back (``Location`` stays a path,
    so the broadcaster's DELETE comes here and is passed on too)."""
    return await _pass_on(request, request.config_dict[EDGE_FEEDS].origin_url)


async def _pass_on(request: web.Request, base_url: str) -> web.Response:
    """The same request to ``base_url`` (another node or worker), its answer back."""
    headers = {
        name: value
        for name, value in request.headers.items()
        if name.lower() in ("authorization", "content-type", "if-match")
    }
    body = await request.read() if request.can_read_body else None
    try:
        async with request.config_dict[PEER_HTTP].request(
            request.method,
            base_url + request.rel_url.raw_path_qs,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=PROXY_TIMEOUT_S),
            allow_redirects=False,
        ) as answer:
            content = await answer.read()
            passed = {
                name: value
                for name, value in answer.headers.items()
                if name.lower() in ("location", "content-type", "etag", "retry-after")
            }
            return web.Response(status=answer.status, body=content, headers=passed)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise OriginUnreachable(f"{base_url} did not answer: {exc}") from exc


def _resource_handler(
    roles: frozenset[TokenRole],
    remove: Callable[[SessionRelay, str], Awaitable[bool]],
) -> Handler:
    @public  # authenticated by the same token that created the resource
    async def delete(request: web.Request) -> web.Response:
        session_id = _session_id(request)
        _claims(request, session_id, roles)
        if TokenRole.BROADCASTER in roles and EDGE_FEEDS in request.config_dict:
            return await _to_origin(request)
        resource = request.match_info["resource"]
        worker = request.config_dict.get(WORKER)
        owner = worker.owner_of(resource) if worker is not None else None
        if worker is not None and owner is not None and owner != worker.index:
            # Another worker of this node serves that viewer.
            return await _pass_on(request, worker.private_url(owner))
        hub = request.config_dict[RELAY].sessions.get(session_id)
        resource = request.match_info["resource"]
        if hub is None or not await remove(hub, resource):
            raise NotFound(f"no resource {resource!r} in session {session_id}")
        return web.Response(status=200, headers=CORS_HEADERS)

    return delete


@public
async def preflight(request: web.Request) -> web.Response:
    """CORS preflight, and what WHIP clients read from OPTIONS (Accept-Post)."""
    return web.Response(status=204, headers={**CORS_HEADERS, "Accept-Post": SDP})


@public
async def not_allowed(request: web.Request) -> web.Response:
    raise web.HTTPMethodNotAllowed(request.method, ["DELETE", "OPTIONS"], headers=CORS_HEADERS)


async def _remove_broadcaster(hub: SessionRelay, resource: str) -> bool:
    return await hub.remove_broadcaster(resource)


async def _remove_viewer(hub: SessionRelay, resource: str) -> bool:
    return await hub.remove_viewer(resource)


def add_routes(app: web.Application) -> None:
    app.add_routes(routes)
    for prefix, roles, remove in (
        ("/whip", frozenset({TokenRole.BROADCASTER}), _remove_broadcaster),
        ("/whep", VIEWER_ROLES | {TokenRole.NODE}, _remove_viewer),
    ):
        app.router.add_route("OPTIONS", prefix + "/{session_id}", preflight)
        resource = prefix + "/{session_id}/{resource}"
        app.router.add_route("DELETE", resource, _resource_handler(roles, remove))
        app.router.add_route("OPTIONS", resource, preflight)
        for method in ("GET", "PATCH", "PUT", "POST"):
            app.router.add_route(method, resource, not_allowed)
