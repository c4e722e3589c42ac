"""Who calls a session's live-record endpoints: a member or venue holding a session token, or a
logged-in organiser, auditor or venue operator.

Tokens come in ``Authorization: Bearer`` or, where a browser cannot set headers (EventSource,
``<img>``), a ``token`` query parameter. A member token names the member and the version of
their personal link; a venue token names the venue, which must be one of the session's.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from sqlalchemy import select

from attendance.errors import AuthError, Forbidden
from attendance.ingest import Sender
from attendance.models import Member, Role, SessionVenue, Venue
from server.auth import CLOCK, SAFE_METHODS, SETTINGS, STORE, optional_user
from server.tokens import TokenRole, bearer, verify

MEMBER = "member"
VENUE = "venue"
ORGANISER = "organiser"
AUDITOR = "auditor"
BROADCASTER = "broadcaster"  # a publish token: its own status reports only

_ROLE_AUDIENCE = {
    Role.ORGANISER: ORGANISER,
    Role.AUDITOR: AUDITOR,
    Role.VENUE_OPERATOR: VENUE,
}


# How long a member's roster entry (id, active, link version) is trusted without a new read:
# a revoked link or a deactivated member is refused at most this much later.
MEMBER_TTL_S = 10.0
_MEMBER_CACHE_SIZE = 50_000


@dataclass(frozen=True)
class _MemberEntry:
    id: int
    active: bool
    link_version: int
    read_at: float


class MemberCache:
    """Recently read roster entries, so a busy session does not read one per request."""

    def __init__(self) -> None:
        self._entries: dict[str, _MemberEntry] = {}

    def get(self, number: str, now: float) -> _MemberEntry | None:
        entry = self._entries.get(number)
        if entry is None or now - entry.read_at > MEMBER_TTL_S:
            return None
        return entry

    def put(self, number: str, entry: _MemberEntry) -> None:
        if len(self._entries) >= _MEMBER_CACHE_SIZE:
            self._entries.clear()
        self._entries[number] = entry


MEMBERS = web.AppKey("studycast.member_cache", MemberCache)


@dataclass(frozen=True)
class Caller:
    """An authenticated caller of one session's endpoints."""

    audience: str  # member | venue | organiser | auditor | broadcaster
    actor: str  # member:1001 | venue:bj-1 | user:alice
    session_id: int
    member_id: int | None = None
    member_no: str | None = None
    venue_id: int | None = None
    venue_slug: str | None = None
    user_id: int | None = None

    def sender(self) -> Sender:
        if self.audience == AUDITOR:
            raise Forbidden("auditors have read-only access")
        # A venue operator's login acts as the venue (team answers are the venue's).
        source = f"venue:{self.venue_slug}" if self.audience == VENUE else self.actor
        return Sender(
            kind=self.audience,
            source=source,
            member_id=self.member_id,
            venue_id=self.venue_id,
        )


def request_token(request: web.Request) -> str:
    return bearer(request.headers.get("Authorization")) or request.query.get("token", "")


async def session_caller(
    request: web.Request,
    session_id: int,
    *,
    audiences: frozenset[str],
) -> Caller:
    """Authenticate the caller for ``session_id``; 401 without credentials, 403 when the
    caller's kind is not among ``audiences``."""
    token = request_token(request)
    caller = (
        await _token_caller(request, session_id, token)
        if token
        else await _user_caller(request, session_id)
    )
    if caller.audience not in audiences:
        raise Forbidden(
            f"a {caller.audience} may not {request.method} {request.path}", code="forbidden"
        )
    return caller


async def _token_caller(request: web.Request, session_id: int, token: str) -> Caller:
    claims = verify(
        request.config_dict[SETTINGS].resolved_secret_key(),
        token,
        session_id=session_id,
        roles=frozenset({TokenRole.MEMBER, TokenRole.VENUE, TokenRole.BROADCASTER}),
        now=request.config_dict[CLOCK](),
    )
    kind, _, name = claims.subject.partition(":")
    if claims.role is TokenRole.BROADCASTER:
        return Caller(BROADCASTER, "broadcaster", session_id)
    if claims.role is TokenRole.MEMBER and kind == "member":
        member = await _member(request, name)
        if member is None or not member.active:
            raise AuthError("this personal link's member is not on the roster", code="revoked")
        if claims.version is not None and claims.version != member.link_version:
            raise AuthError("this personal link was replaced by a newer one", code="revoked")
        return Caller(MEMBER, f"member:{name}", session_id, member.id, name)
    async with request.config_dict[STORE].read() as db:
        if claims.role is TokenRole.VENUE and kind == "venue":
            venue_id = await db.scalar(
                select(Venue.id)
                .join(SessionVenue, SessionVenue.venue_id == Venue.id)
                .where(Venue.slug == name, SessionVenue.session_id == session_id)
            )
            if venue_id is None:
                raise Forbidden(f"venue {name!r} is not a venue of this session")
            return Caller(VENUE, f"venue:{name}", session_id, venue_id=venue_id, venue_slug=name)
    raise AuthError("the token's subject is malformed", code="invalid_token")


async def _member(request: web.Request, number: str) -> _MemberEntry | None:
    cache = request.config_dict[MEMBERS]
    now = request.config_dict[CLOCK]().timestamp()
    entry = cache.get(number, now)
    if entry is not None:
        return entry
    async with request.config_dict[STORE].read() as db:
        row = (
            await db.execute(
                select(Member.id, Member.active, Member.link_version).where(
                    Member.member_no == number
                )
            )
        ).one_or_none()
    if row is None:
        return None
    entry = _MemberEntry(row[0], row[1], row[2], now)
    cache.put(number, entry)
    return entry


async def _user_caller(request: web.Request, session_id: int) -> Caller:
    user = await optional_user(request)
    if user is None:
        raise AuthError("a member or venue token, or a login, is required", code="not_logged_in")
    audience = _ROLE_AUDIENCE[user.role]
    if audience == AUDITOR and request.method not in SAFE_METHODS:
        raise Forbidden("auditors have read-only access")
    if audience == VENUE:
        async with request.config_dict[STORE].read() as db:
            row = (
                await db.execute(
                    select(Venue.id, Venue.slug)
                    .join(SessionVenue, SessionVenue.venue_id == Venue.id)
                    .where(Venue.id == user.venue_id, SessionVenue.session_id == session_id)
                )
            ).one_or_none()
        if row is None:
            raise Forbidden("your venue is not a venue of this session")
        return Caller(
            VENUE, user.actor, session_id, venue_id=row[0], venue_slug=row[1], user_id=user.id
        )
    return Caller(audience, user.actor, session_id, user_id=user.id)
