"""Bearer tokens for media and members: JWTs scoped to one session and one role.

HS256 with the server's secret key, pinned on both sides; ``aud`` and ``exp`` are always
checked. A publish token lets OBS or a browser broadcast a session (WHIP); viewer tokens let a
venue screen, a member or anyone holding the session's viewer link watch it (WHEP).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

from attendance.errors import AuthError, Forbidden

ALGORITHM = "HS256"
AUDIENCE = "studycast"
# Long enough for a session scheduled well ahead plus its length; operators can reissue.
DEFAULT_TTL = timedelta(days=30)


class TokenRole(enum.StrEnum):
    BROADCASTER = "broadcaster"
    VIEWER = "viewer"  # the session's shared viewer link
    VENUE = "venue"
    MEMBER = "member"
    # An edge node (or another worker process) pulling a session's media from this node; not
    # scoped to one session (``sid`` 0), never a viewer seat, never attendance evidence.
    NODE = "node"


NODE_SESSION = 0  # the ``sid`` of node tokens: any session
VIEWER_ROLES = frozenset({TokenRole.VIEWER, TokenRole.VENUE, TokenRole.MEMBER})


@dataclass(frozen=True)
class TokenClaims:
    session_id: int
    role: TokenRole
    subject: str  # "session:12", "venue:bj-1", "member:1001"
    expires_at: datetime
    # A member link's version: raising the member's link_version revokes older links.
    version: int | None = None


def issue(
    secret: str,
    *,
    session_id: int,
    role: TokenRole,
    subject: str,
    now: datetime,
    ttl: timedelta = DEFAULT_TTL,
    version: int | None = None,
) -> str:
    """A signed token for ``role`` in one session."""
    claims: dict[str, object] = {
        "aud": AUDIENCE,
        "sid": session_id,
        "role": role.value,
        "sub": subject,
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
    }
    if version is not None:
        claims["ver"] = version
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(
    secret: str,
    token: str,
    *,
    session_id: int,
    roles: frozenset[TokenRole],
    now: datetime,
) -> TokenClaims:
    """Check a token for this session and one of ``roles``.

    ``AuthError`` (401) when it is missing, malformed, forged or expired; ``Forbidden`` (403)
    when it is genuine but for another session or role.
    """
    if not token:
        raise AuthError("a bearer token is required", code="missing_token")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            # Expiry is checked below against the injected clock, not PyJWT's own.
            options={
                "require": ["exp", "aud", "sid", "role", "sub"],
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.PyJWTError as exc:
        raise AuthError(f"the token is not valid: {exc}", code="invalid_token") from None
    try:
        role = TokenRole(claims["role"])
        sid = int(claims["sid"])
        expires = datetime.fromtimestamp(int(claims["exp"]), tz=now.tzinfo)
        subject = str(claims["sub"])
        version = int(claims["ver"]) if "ver" in claims else None
    except (TypeError, ValueError):
        raise AuthError("the token's claims are malformed", code="invalid_token") from None
    if expires <= now:
        raise AuthError("the token has expired", code="token_expired")
    if sid != session_id and not (role is TokenRole.NODE and sid == NODE_SESSION):
        raise Forbidden(f"this token is for session {sid}, not {session_id}", code="wrong_session")
    if role not in roles:
        # Node tokens are for operators' edges, not worth naming to a person holding a link.
        named = roles - {TokenRole.NODE} or roles
        allowed = ", ".join(sorted(r.value for r in named))
        raise Forbidden(
            f"a {role.value} token cannot do this (needs: {allowed})", code="wrong_role"
        )
    return TokenClaims(sid, role, subject, expires, version)


def issue_node_token(secret: str, name: str, *, now: datetime, ttl: timedelta) -> str:
    """A token for the node called ``name`` to pull any session's media from this one."""
    return issue(
        secret,
        session_id=NODE_SESSION,
        role=TokenRole.NODE,
        subject=f"node:{name}",
        now=now,
        ttl=ttl,
    )


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer ...`` header ('' when absent or another scheme)."""
    if not header:
        return ""
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""
