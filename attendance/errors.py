"""The one exception tree of studycast.

Every failure a user can cause or meet is a ``StudycastError`` of one family; the HTTP layer maps
the family to a status code and the CLI to an exit message, each in one place.
"""

from __future__ import annotations

from pydantic import ValidationError


class StudycastError(Exception):
    """Root of every studycast error. ``code`` is a stable machine-readable name."""

    code = "error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class InvalidInput(StudycastError):
    """Input from outside (HTTP body, CSV, form field, option) is malformed or out of range."""

    code = "invalid_input"


class AuthError(StudycastError):
    """The caller is not who it must be (401) ..."""

    code = "unauthorized"


class Forbidden(AuthError):
    """... or is known but lacks the right (403)."""

    code = "forbidden"


class NotFound(StudycastError):
    code = "not_found"


class Conflict(StudycastError):
    """The request contradicts stored state (duplicate name, ended session, ...)."""

    code = "conflict"


class StoreError(StudycastError):
    """The record store failed or is unreachable."""

    code = "store_error"


def invalid_input(exc: ValidationError) -> InvalidInput:
    """An ``InvalidInput`` naming every bad field of a pydantic validation failure."""
    parts = []
    for e in exc.errors():
        message = str(e["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in e["loc"])
        parts.append(f"{where}: {message}" if where else message)
    return InvalidInput("; ".join(parts))
