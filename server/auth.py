"""Who is calling: password logins, cookie sessions, CSRF and role checks.

A login creates a ``LoginSession`` row holding only the SHA-256 of a random cookie token and a
random CSRF token. A request is authenticated lazily, the first time a handler asks for its user
(``require_role`` or ``current_user``); that is also where the CSRF token is checked for unsafe
methods, so no cookie-authenticated write can skip it.

Every route declares who may call it: ``@require_role(...)``, ``@self_service`` or ``@public``.
``create_app`` calls ``check_access_declared`` and refuses to build an app with an undeclared
route.

Handlers find the application's parts here as well (``STORE``, ``CLOCK``, ``SETTINGS``), because
every module that serves requests already depends on this one.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError
from sqlalchemy import select

from attendance.clock import Clock
from attendance.errors import AuthError, Forbidden, InvalidInput, invalid_input
from attendance.journal import record_admin_event
from attendance.models import LoginSession, Role, User
from attendance.store import Store
from attendance.users import MAX_PASSWORD, authenticate, login_refused
from server.http_errors import TooManyAttempts, read_json_object
from server.metrics import METRICS
from server.settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The application's parts, set by ``create_app``.
SETTINGS = web.AppKey("studycast.settings", Settings)
STORE = web.AppKey("studycast.store", Store)
CLOCK: web.AppKey[Clock] = web.AppKey("studycast.clock")

COOKIE = "studycast_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_TOKEN_BYTES = 32
MAX_USERNAME = 64  # the column's width (attendance.users.USERNAME)
_MAX_COOKIE = 128  # our tokens are 43 characters; anything much longer is not ours

routes = web.RouteTableDef()


@dataclass(frozen=True)
class CurrentUser:
    """The logged-in user of one request, with the login it came through."""

    id: int
    username: str
    role: Role
    display_name: str | None
    venue_id: int | None
    login_id: int
    csrf_token: str

    @property
    def actor(self) -> str:
        """How the audit trail names this user."""
        return f"user:{self.username}"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "role": self.role.value,
            "display_name": self.display_name,
            "venue_id": self.venue_id,
        }


def _current_user_from(user: User, login: LoginSession) -> CurrentUser:
    return CurrentUser(
        id=user.id,
        username=user.username,
        role=user.role,
        display_name=user.display_name,
        venue_id=user.venue_id,
        login_id=login.id,
        csrf_token=login.csrf_token,
    )


# The resolved login, cached per request: None means "looked, nobody logged in".
_RESOLVED = web.RequestKey("studycast.current_user", object)
_NOBODY = object()


def token_digest(token: str) -> str:
    """What the store keeps of a cookie token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


async def _lookup(request: web.Request) -> CurrentUser | None:
    token = request.cookies.get(COOKIE)
    if not token or len(token) > _MAX_COOKIE:
        return None
    now = request.config_dict[CLOCK]()
    async with request.config_dict[STORE].read() as db:
        row = (
            await db.execute(
                select(LoginSession, User)
                .join(User, LoginSession.user_id == User.id)
                .where(
                    LoginSession.token_hash == token_digest(token),
                    LoginSession.revoked_at.is_(None),
                    LoginSession.expires_at > now,
                    User.active.is_(True),
                )
            )
        ).first()
    if row is None:
        return None
    login, user = row
    return _current_user_from(user, login)


async def optional_user(request: web.Request) -> CurrentUser | None:
    """The logged-in user, or None; checks the CSRF token of unsafe methods."""
    cached = request.get(_RESOLVED)
    if cached is None:
        user = await _lookup(request)
        request[_RESOLVED] = user if user is not None else _NOBODY
    else:
        user = cached if isinstance(cached, CurrentUser) else None
    if user is not None and request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode("utf-8"), user.csrf_token.encode("utf-8")):
            raise Forbidden(
                f"missing or wrong {CSRF_HEADER} header; reload the page and try again",
                code="csrf",
            )
    return user


async def current_user(request: web.Request) -> CurrentUser:
    """The logged-in user (401 if none); checks the CSRF token of unsafe methods (403)."""
    user = await optional_user(request)
    if user is None:
        raise AuthError("not logged in, or the login has expired", code="not_logged_in")
    return user


# Route metadata: which roles may call a handler, or PUBLIC. Read by check_access_declared.
_ACCESS = "studycast_access"
PUBLIC = "public"
SELF_SERVICE = "self_service"
TOKEN_OR_LOGIN = "token_or_login"  # noqa: S105 (a marker, not a secret)


def require_role(*roles: Role) -> Callable[[Handler], Handler]:
    """Declare the roles that may call a handler: 401 without a login, 403 ``forbidden`` for
    another role. Auditors are read-only: any unsafe method is refused to them, whatever the
    roles listed. Inside the handler, ``await current_user(request)`` returns the user."""
    if not roles:
        raise ValueError("require_role needs at least one role")
    allowed = frozenset(roles)

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            user = await current_user(request)
            if user.role not in allowed:
                raise Forbidden(
                    f"the role {user.role.value} may not {request.method} {request.path}"
                )
            if user.role is Role.AUDITOR and request.method not in SAFE_METHODS:
                raise Forbidden("auditors have read-only access")
            return await handler(request)

        setattr(guarded, _ACCESS, allowed)
        return guarded

    return decorate


def public(handler: Handler) -> Handler:
    """Declare a handler open to anyone (it may still look at ``optional_user``)."""
    setattr(handler, _ACCESS, PUBLIC)
    return handler


def self_service(handler: Handler) -> Handler:
    """Declare a handler that acts only on the caller's own login (``/api/me``,
    ``/api/logout``): open to every role, and it calls ``current_user`` itself. Auditors may use
    unsafe methods here, so never use it for a handler that changes shared records."""
    setattr(handler, _ACCESS, SELF_SERVICE)
    return handler


def token_or_login(handler: Handler) -> Handler:
    """Declare a handler that authenticates its caller itself with ``server.callers``: a
    session token (member, venue) or a login of the roles it names there."""
    setattr(handler, _ACCESS, TOKEN_OR_LOGIN)
    return handler


def access_of(handler: Any) -> frozenset[Role] | str | None:
    access: frozenset[Role] | str | None = getattr(handler, _ACCESS, None)
    return access


def check_access_declared(app: web.Application) -> None:
    """Refuse to serve a route that did not say who may call it (deny by default)."""
    missing = sorted(
        f"{route.method} {route.resource.canonical}"
        for route in app.router.routes()
        if route.resource is not None and access_of(route.handler) is None
    )
    if missing:
        raise RuntimeError(
            "routes without @require_role(...), @self_service, @token_or_login or @public: "
            + ", ".join(missing)
        )


class LoginBrake:
    """Brute-force brake: at most ``limit`` failed logins per username within ``window``.

    An attempt is counted when it starts (and forgotten on success), so parallel guesses cannot
    slip past the limit while the password hash is being checked. Kept in memory per process.
    """

    def __init__(
        self,
        *,
        limit: int = 10,
        window: timedelta = timedelta(minutes=15),
        max_names: int = 100_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_names = max_names
        self._attempts: dict[str, deque[datetime]] = {}

    @staticmethod
    def key(username: str) -> str:
        return username.strip().lower()[:64]

    def _recent(self, key: str, now: datetime) -> deque[datetime]:
        stamps = self._attempts.get(key, deque())
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        return stamps

    def retry_after(self, username: str, now: datetime) -> int | None:
        """Seconds until another attempt is allowed, or None if one is allowed now."""
        stamps = self._recent(self.key(username), now)
        if len(stamps) < self.limit:
            return None
        wait = (stamps[0] + self.window - now).total_seconds()
        return max(1, math.ceil(wait))

    def admit(self, username: str, now: datetime) -> None:
        """Count an attempt, or raise ``TooManyAttempts`` if the limit is reached."""
        wait = self.retry_after(username, now)
        if wait is not None:
            raise TooManyAttempts(
                f"too many failed logins for this username; try again in {wait} seconds",
                retry_after=wait,
            )
        if len(self._attempts) >= self.max_names:
            self._sweep(now)
        self._attempts.setdefault(self.key(username), deque()).append(now)

    def succeeded(self, username: str) -> None:
        self._attempts.pop(self.key(username), None)

    def withdraw(self, username: str, now: datetime) -> None:
        """Un-count an attempt that ended neither in success nor in a refusal (store down)."""
        stamps = self._attempts.get(self.key(username))
        if stamps and now in stamps:
            stamps.remove(now)

    def _sweep(self, now: datetime) -> None:
        """Forget names without recent attempts; if a spray of names still fills the table,
        forget the longest-known ones, so memory stays bounded."""
        for key in list(self._attempts):
            if not self._recent(key, now):
                del self._attempts[key]
        excess = len(self._attempts) - self.max_names * 9 // 10
        for key in list(self._attempts)[: max(0, excess)]:
            del self._attempts[key]


LOGIN_BRAKE = web.AppKey("studycast.login_brake", LoginBrake)


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: StrictStr
    password: StrictStr


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_same_origin(request: web.Request) -> None:
    """Refuse a browser request sent from another site's page (login CSRF)."""
    settings = request.config_dict[SETTINGS]
    expected = (
        _origin(settings.public_base_url)
        if settings.public_base_url
        else f"{request.scheme}://{request.host}".lower()
    )
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() != expected:
        raise Forbidden(f"cross-origin request from {origin} refused", code="cross_origin")
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise Forbidden("cross-site request refused", code="cross_origin")


def _cookie_is_secure(settings: Settings) -> bool:
    return settings.base_url().startswith("https://")


def _me_body(user: CurrentUser) -> dict[str, Any]:
    return {"user": user.as_json(), "csrf_token": user.csrf_token}


@routes.post("/api/login")
@public
async def login(request: web.Request) -> web.Response:
    """Check a username and password; on success set the session cookie."""
    check_same_origin(request)
    try:
        body = LoginRequest.model_validate(await read_json_object(request))
    except ValidationError as exc:
        raise invalid_input(exc) from exc
    if not body.username.strip():
        raise InvalidInput("username: is empty")
    if not body.password:
        raise InvalidInput("password: is empty")
    if len(body.username) > MAX_USERNAME or len(body.password) > MAX_PASSWORD:
        raise login_refused()  # cannot be anyone's; not worth a lookup or a hash

    settings = request.config_dict[SETTINGS]
    brake = request.config_dict[LOGIN_BRAKE]
    metrics = request.config_dict[METRICS]
    now = request.config_dict[CLOCK]()
    try:
        brake.admit(body.username, now)
    except TooManyAttempts:
        metrics.login_throttled.inc()
        log.warning("login brake engaged for %r from %s", body.username[:64], request.remote)
        raise

    token = secrets.token_urlsafe(_TOKEN_BYTES)
    old_token = request.cookies.get(COOKIE)
    try:
        async with request.config_dict[STORE].write() as db:
            outcome = await authenticate(
                db,
                body.username,
                body.password,
                now=now,
                source=f"http:{request.remote or 'unknown'}",
            )
            if outcome.user is not None:
                if old_token and len(old_token) <= _MAX_COOKIE:
                    # A fresh login replaces whatever login this browser had (no fixation).
                    previous = await db.scalar(
                        select(LoginSession).where(
                            LoginSession.token_hash == token_digest(old_token),
                            LoginSession.revoked_at.is_(None),
                        )
                    )
                    if previous is not None:
                        previous.revoked_at = now
                row = LoginSession(
                    token_hash=token_digest(token),
                    csrf_token=secrets.token_urlsafe(_TOKEN_BYTES),
                    user_id=outcome.user.id,
                    created_at=now,
                    expires_at=now + timedelta(hours=settings.login_ttl_hours),
                    revoked_at=None,
                )
                db.add(row)
                await db.flush()
    except BaseException:
        brake.withdraw(body.username, now)
        raise
    # The failure is committed (counted, in the admin trail) before we refuse.
    if outcome.user is None:
        metrics.login_failures.labels(outcome.reason).inc()
        log.info("login refused for %r: %s", body.username[:64], outcome.reason)
        raise login_refused()

    brake.succeeded(body.username)
    user = _current_user_from(outcome.user, row)
    log.info("login of %s (%s)", user.username, user.role.value)
    response = web.json_response(_me_body(user))
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(settings.login_ttl_hours * 3600),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=_cookie_is_secure(settings),
    )
    return response


@routes.post("/api/logout")
@self_service
async def logout(request: web.Request) -> web.Response:
    """Revoke this browser's login and clear its cookie."""
    user = await current_user(request)
    now = request.config_dict[CLOCK]()
    async with request.config_dict[STORE].write() as db:
        row = await db.get(LoginSession, user.login_id)
        if row is not None and row.revoked_at is None:
            row.revoked_at = now
        await record_admin_event(
            db,
            now=now,
            actor=user.actor,
            action="logout",
            target=user.actor,
        )
    response = web.json_response({"logged_out": True})
    response.del_cookie(
        COOKIE,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=_cookie_is_secure(request.config_dict[SETTINGS]),
    )
    return response


@routes.get("/api/me")
@self_service
async def me(request: web.Request) -> web.Response:
    """The logged-in user and the CSRF token a page sends with its writes."""
    return web.json_response(_me_body(await current_user(request)))
