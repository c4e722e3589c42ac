"""The HTTP boundary: every failure leaves as ``{"error": code, "detail": text}``.

One middleware maps our ``StudycastError`` families, aiohttp's own HTTP exceptions (unknown route,
wrong method, oversized body) and unexpected exceptions to a status and a JSON body; nothing else
in the server builds error responses. ``read_json_object`` is the one way handlers read a JSON
body, so malformed input fails the same way everywhere.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any, NoReturn

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from attendance.errors import (
    AuthError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    StoreError,
    StudycastError,
)

log = logging.getLogger(__name__)


class TooManyAttempts(AuthError):
    """The caller must wait ``retry_after`` seconds before trying again (429)."""

    code = "too_many_attempts"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class UnsupportedMediaType(InvalidInput):
    """The body is not in a format the endpoint reads (415)."""

    code = "unsupported_media_type"


class BodyTooLarge(InvalidInput):
    """The body is larger than the endpoint accepts (413)."""

    code = "body_too_large"


class Overloaded(StudycastError):
    """This node is at capacity; the caller may retry after ``retry_after`` seconds (503)."""

    code = "overloaded"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class OriginUnreachable(StudycastError):
    """An edge could not pass a request on to its origin (502)."""

    code = "origin_unreachable"


# Looked up along the exception's MRO, so the most specific family wins.
STATUS_BY_FAMILY: dict[type, int] = {
    TooManyAttempts: 429,
    UnsupportedMediaType: 415,
    BodyTooLarge: 413,
    Overloaded: 503,
    OriginUnreachable: 502,
    Forbidden: 403,
    AuthError: 401,
    InvalidInput: 400,
    NotFound: 404,
    Conflict: 409,
    StoreError: 503,
    StudycastError: 500,
}

# Codes for aiohttp's own HTTP exceptions; other statuses use the reason phrase in snake_case.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}

STORE_UNAVAILABLE = "the record store is unavailable; try again shortly"


def status_for(exc: StudycastError) -> int:
    for cls in type(exc).__mro__:
        status = STATUS_BY_FAMILY.get(cls)
        if status is not None:
            return status
    return 500  # pragma: no cover (StudycastError is always in the MRO)


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": code, "detail": detail},
        status=status,
        headers=headers,
        dumps=lambda data: json.dumps(data, ensure_ascii=False),
    )


def _from_studycast_error(request: web.Request, exc: StudycastError) -> web.Response:
    status = status_for(exc)
    headers: dict[str, str] = {}
    detail = exc.detail
    if isinstance(exc, TooManyAttempts | Overloaded):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, StoreError):
        # The driver's message may name hosts and files: the log gets it, the client does not.
        log.warning("record store failure on %s %s: %s", request.method, request.path, detail)
        detail = STORE_UNAVAILABLE
    elif status == 500:
        log.error(
            "unmapped %s on %s %s: %s", type(exc).__name__, request.method, request.path, detail
        )
    return error_response(status, exc.code, detail, headers)


def _from_http_exception(
    request: web.Request, exc: web.HTTPException, max_body_bytes: int
) -> web.Response:
    status = exc.status
    code = _HTTP_CODES.get(status) or exc.reason.lower().replace(" ", "_").replace("-", "_")
    if status == 404:
        detail = f"nothing at {request.path}"
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        detail = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
    elif status == 413:
        detail = f"the request body is larger than the limit of {max_body_bytes} bytes"
    else:
        text = exc.text or ""
        detail = exc.reason if not text or text.startswith(f"{status}: ") else text
    # Keep meaningful headers (Allow, Retry-After, ...) but not the plain-text body's.
    headers = {
        k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")
    }
    return error_response(status, code, detail, headers)


def error_middleware(*, max_body_bytes: int) -> Middleware:
    """The one place where failures become HTTP responses."""

    @web.middleware
    async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except StudycastError as exc:
            return _from_studycast_error(request, exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # redirects and "not modified" are answers, not failures
            return _from_http_exception(request, exc, max_body_bytes)
        except Exception:
            reference = secrets.token_hex(4)
            log.exception(
                "unexpected error on %s %s (reference %s)", request.method, request.path, reference
            )
            return error_response(
                500,
                "internal_error",
                f"an unexpected error occurred; it has been logged (reference {reference})",
            )

    return errors_as_json


def _bad_json(detail: str) -> NoReturn:
    raise InvalidInput(detail, code="invalid_json")


def _refuse_constant(name: str) -> NoReturn:
    _bad_json(f"request body is not valid JSON: {name} is not a JSON number")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 415/400/413 that says what is wrong with it."""
    if request.content_type != "application/json":
        sent = request.headers.get("Content-Type") or "none"
        raise UnsupportedMediaType(
            f"this endpoint reads JSON: send Content-Type: application/json (got {sent})"
        )
    if request.charset not in (None, "utf-8", "utf8"):
        raise UnsupportedMediaType(f"JSON bodies must be UTF-8 (got charset {request.charset})")
    raw = await request.read()  # raises 413 beyond client_max_size
    if not raw.strip():
        _bad_json("request body is empty; expected a JSON object")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        _bad_json("request body is not valid UTF-8")
    except json.JSONDecodeError as exc:
        _bad_json(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        )
    except RecursionError:
        _bad_json("request body is not valid JSON: nested too deeply")
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(data), "a number"
        )
        raise InvalidInput(f"request body must be a JSON object, not {kind}")
    return data
