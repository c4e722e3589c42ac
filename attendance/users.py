"""People who log in with a password (organiser, venue operator, auditor), argon2-hashed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from argon2 import Parameters, PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.errors import AuthError, Conflict, InvalidInput
from attendance.journal import record_admin_event
from attendance.models import Role, User

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,63}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024

_hasher = PasswordHasher()
# Verified against when the username is unknown, so timing does not reveal which names exist.
_DUMMY_HASH = _hasher.hash("studycast-timing-equaliser")


def configure_password_hashing(parameters: Parameters) -> None:
    """Use other argon2 parameters for new hashes (e.g. the test suite's cheap profile).
    Existing hashes still verify: each carries its own parameters."""
    global _hasher, _DUMMY_HASH
    _hasher = PasswordHasher.from_parameters(parameters)
    _DUMMY_HASH = _hasher.hash("studycast-timing-equaliser")


def check_username(username: str) -> str:
    if not USERNAME.match(username or ""):
        raise InvalidInput(
            "username must be 2-64 characters: letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return username


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidInput(f"password must be at most {MAX_PASSWORD} characters")
    return password


def parse_role(raw: str) -> Role:
    try:
        return Role(raw.strip().lower().replace("-", "_"))
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise InvalidInput(f"unknown role {raw!r}; choose one of {allowed}") from None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def add_user(
    db: AsyncSession,
    *,
    username: str,
    role: Role,
    password: str,
    now: datetime,
    actor: str,
    display_name: str | None = None,
    venue_id: int | None = None,
) -> User:
    """Create a login. Usernames are unique; the password is only stored as an argon2 hash."""
    check_username(username)
    check_password(password)
    if await db.scalar(select(User.id).where(User.username == username)) is not None:
        raise Conflict(f"user {username!r} exists already")
    user = User(
        username=username,
        role=role,
        password_hash=hash_password(password),
        display_name=display_name,
        venue_id=venue_id,
        active=True,
        failed_logins=0,
        created_at=now,
    )
    db.add(user)
    await db.flush()
    await record_admin_event(
        db,
        now=now,
        actor=actor,
        action="user_added",
        target=f"user:{username}",
        detail={"role": role.value},
    )
    return user


@dataclass(frozen=True)
class LoginOutcome:
    user: User | None
    reason: str  # "ok", "unknown_user", "wrong_password", "inactive"


async def authenticate(
    db: AsyncSession, username: str, password: str, *, now: datetime, source: str
) -> LoginOutcome:
    """Check a username and password inside a write transaction.

    Success stamps ``last_login_at``; every failure counts against the user (if it exists) and is
    written to the admin trail with its reason. The caller commits, then raises ``login_refused()``
    for a failure: one message whatever the reason, so the answer does not reveal which usernames
    exist.
    """
    user = await db.scalar(select(User).where(User.username == username))
    if user is None:
        password_matches(_DUMMY_HASH, password)
        reason = "unknown_user"
    elif not password_matches(user.password_hash, password):
        user.failed_logins += 1
        reason = "wrong_password"
    elif not user.active:
        reason = "inactive"
    else:
        user.last_login_at = now
        if _hasher.check_needs_rehash(user.password_hash):
            user.password_hash = hash_password(password)
        await record_admin_event(
            db,
            now=now,
            actor=f"user:{username}",
            action="login",
            target=f"user:{username}",
            detail={"role": user.role.value, "source": source},
        )
        return LoginOutcome(user, "ok")
    await record_admin_event(
        db,
        now=now,
        actor=source,
        action="login_failed",
        target=f"user:{username[:64]}",
        detail={"reason": reason},
    )
    return LoginOutcome(None, reason)


def login_refused() -> AuthError:
    return AuthError("wrong username or password", code="bad_credentials")
