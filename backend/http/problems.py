"""One error format for every error: RFC 9457 problem+json, and the handlers that
render domain errors, validation errors, HTTP errors and database outages in it.

Every problem carries a stable `code` (backend.errors.ProblemCode) and a `type` URI
made from it; `detail` is for people and may be reworded."""

import json
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from backend.db.engine import DATABASE_UNAVAILABLE, database_unavailable, schema_missing
from backend.db.migrate import NOT_MIGRATED
from backend.errors import (
    DomainError,
    FieldInvalidError,
    ProblemCode,
    RetryLaterError,
    TooManyRequestsError,
    UnauthorizedError,
)
from backend.http.ratelimit import client_ip
from backend.models import AuthEventKind
from backend.runtime import runtime_of

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
DB_RETRY_AFTER_SECONDS = 2
# A URN, not a URL: it names the problem type wherever the API is deployed (RFC 9457
# allows a type URI that does not resolve; docs/api.md describes each code).
PROBLEM_TYPE_PREFIX = "urn:problem-type:users-api:"
# The framework's own refusals, by status; anything else it answers is HTTP_ERROR.
HTTP_STATUS_CODES = {
    HTTPStatus.NOT_FOUND: ProblemCode.NOT_FOUND,
    HTTPStatus.METHOD_NOT_ALLOWED: ProblemCode.METHOD_NOT_ALLOWED,
}


class FieldError(BaseModel):
    field: str
    message: str
    code: str = Field(
        description="Why, for programs: pydantic's error type (missing, string_too_long, "
        "...) or the API's own (password_too_common, ...)"
    )


class Problem(BaseModel):
    type: str = Field(description=f"{PROBLEM_TYPE_PREFIX} and the code")
    title: str
    status: int
    code: ProblemCode = Field(description="Stable: what a client switches on")
    detail: str
    # The same sentence: react-admin and Refine show an error body's `message`.
    message: str
    request_id: str | None = None
    errors: list[FieldError] | None = None
    banned_until: datetime | None = Field(
        default=None,
        description="With code `banned`: when the ban ends; present and null for a permanent one",
    )


class ProblemJSONResponse(JSONResponse):
    media_type = PROBLEM_JSON

    def render(self, content: Any) -> bytes:
        # ASCII with \u escapes: a problem may quote what the client sent, and a lone
        # surrogate from its JSON ("\ud800") has no UTF-8 encoding, but it has an escape.
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


def problem_response(
    status: int,
    detail: str,
    *,
    code: ProblemCode,
    errors: Sequence[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
    request_id: str | None = None,
    extensions: Mapping[str, object] | None = None,
) -> JSONResponse:
    problem = Problem(
        type=f"{PROBLEM_TYPE_PREFIX}{code}",
        title=HTTPStatus(status).phrase,
        status=status,
        code=code,
        detail=detail,
        message=detail,
        request_id=request_id,
        errors=list(errors) if errors is not None else None,
    )
    return ProblemJSONResponse(
        {**problem.model_dump(exclude_none=True), **(extensions or {})},
        status_code=status,
        headers=dict(headers or {}),
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error statuses, all with the Problem schema."""
    return {
        status: {"model": Problem, "description": HTTPStatus(status).phrase} for status in statuses
    }


def request_id_of(request: Request) -> str | None:
    request_id: str | None = request.scope.get("state", {}).get("request_id")
    return request_id


# How pydantic names the members of a union in an error's location: an optional field
# (`Email | None`) fails as "email.function-after[_normalise_email(), str]" and again
# as "email.none". Clients want the field's name, once.
_UNION_MEMBER = re.compile(r"[a-z][a-z0-9-]*\[.*\]|none|bool|int|float|str|datetime")


def _field_name(location: Sequence[Any]) -> str:
    # ("body", "email") -> "email"; a body that is not JSON at all -> "body".
    parts = [str(part) for part in location[1:]] if len(location) > 1 else []
    if len(parts) > 1:
        parts = parts[:1] + [
            part
            for part in parts[1:]
            if not isinstance(part, str) or not _UNION_MEMBER.fullmatch(part)
        ]
    return ".".join(parts) or str(location[0] if location else "body")


def _field_errors(errors: Sequence[Mapping[str, Any]]) -> list[FieldError]:
    """One entry per field and message; a union's "should be None" branch is dropped
    where the field failed another way, since it only says that null was also refused."""
    failed_otherwise = {
        _field_name(error["loc"]) for error in errors if error["type"] != "none_required"
    }
    field_errors: dict[tuple[str, str], FieldError] = {}
    for error in errors:
        field = _field_name(error["loc"])
        if error["type"] == "none_required" and field in failed_otherwise:
            continue
        message = _validation_message(error)
        field_errors.setdefault(
            (field, message), FieldError(field=field, message=message, code=error["type"])
        )
    return list(field_errors.values())


def _validation_message(error: Mapping[str, Any]) -> str:
    if error["type"] == "json_invalid":
        return "Request body is not valid JSON."
    return str(error["msg"]).removeprefix("Value error, ")


def _domain_error_headers(exc: DomainError) -> dict[str, str]:
    if isinstance(exc, UnauthorizedError):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, RetryLaterError):
        return {"Retry-After": str(exc.retry_after_seconds)}
    return {}


async def _handle_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    if isinstance(exc, TooManyRequestsError):
        _record_rate_limited(request, exc)
    errors = (
        [FieldError(field=exc.field, message=exc.message, code=exc.field_code)]
        if isinstance(exc, FieldInvalidError)
        else None
    )
    return problem_response(
        exc.status_code,
        exc.detail,
        code=exc.code,
        errors=errors,
        headers=_domain_error_headers(exc),
        request_id=request_id_of(request),
        extensions=exc.extensions,
    )


def _record_rate_limited(request: Request, exc: TooManyRequestsError) -> None:
    """A 429 of an auth route (login, register, refresh, mail) in the sign-in history;
    the limiter itself knows neither the route nor the history."""
    route = request.scope.get("route")
    if "auth" not in getattr(route, "tags", ()):
        return
    runtime = runtime_of(request.scope)
    runtime.auth_events.record(
        AuthEventKind.RATE_LIMITED,
        ip_address=client_ip(request, runtime.settings.TRUSTED_PROXIES),
        user_agent=request.headers.get("user-agent"),
        reason=exc.limit,
    )


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).description
    if status == HTTPStatus.NOT_FOUND and detail == "Not Found":
        detail = f"No route matches {request.url.path}."
    headers = dict(exc.headers or {})
    if status == HTTPStatus.METHOD_NOT_ALLOWED:
        detail = f"{request.method} is not allowed on {request.url.path}."
        # Starlette names only the first matching route's methods; each route has one.
        headers["Allow"] = ", ".join(_allowed_methods(request))
    code = HTTP_STATUS_CODES.get(HTTPStatus(status), ProblemCode.HTTP_ERROR)
    return problem_response(
        status, detail, code=code, headers=headers, request_id=request_id_of(request)
    )


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> list[str]:
    # Ask the router which methods would match this path; routes nest in FastAPI.
    return [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    ]


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _field_errors(exc.errors())
    fields = ", ".join(dict.fromkeys(error.field for error in errors))
    return problem_response(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        f"Invalid input: {fields}.",
        code=ProblemCode.VALIDATION_FAILED,
        errors=errors,
        request_id=request_id_of(request),
    )


async def _handle_database_error(request: Request, exc: Exception) -> JSONResponse:
    # Before the outage test: SQLite's "no such table" is an OperationalError too.
    if schema_missing(exc):
        return problem_response(
            HTTPStatus.SERVICE_UNAVAILABLE,
            NOT_MIGRATED,
            code=ProblemCode.DATABASE_NOT_MIGRATED,
            headers={"Retry-After": str(DB_RETRY_AFTER_SECONDS)},
            request_id=request_id_of(request),
        )
    if not database_unavailable(exc):
        return unexpected_error_response(exc, request_id=request_id_of(request))
    cause = exc.driver_exception if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    # Logged once per outage there; each request is a line of the access log.
    runtime_of(request.scope).database_outage.refused_request(cause.__class__.__name__)
    return problem_response(
        HTTPStatus.SERVICE_UNAVAILABLE,
        "The database is unavailable or busy; retry shortly.",
        code=ProblemCode.DATABASE_UNAVAILABLE,
        headers={"Retry-After": str(DB_RETRY_AFTER_SECONDS)},
        request_id=request_id_of(request),
    )


def unexpected_error_response(exc: Exception, *, request_id: str | None) -> JSONResponse:
    """A bug: its traceback logged once, and an opaque 500 with the id to quote."""
    logger.error("unhandled error (request %s)", request_id, exc_info=exc)
    return problem_response(
        HTTPStatus.INTERNAL_SERVER_ERROR,
        "An unexpected error occurred. Quote the request id when reporting it.",
        code=ProblemCode.INTERNAL_ERROR,
        request_id=request_id,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _handle_domain_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    # Every database error is looked at; those meaning an outage are 503, the rest 500.
    database_errors: tuple[type[Exception], ...] = (DBAPIError, *DATABASE_UNAVAILABLE)
    for database_error in database_errors:
        app.add_exception_handler(database_error, _handle_database_error)
    # Any other exception is answered by UnexpectedErrorMiddleware, inside the middleware
    # that adds the common headers. An `Exception` handler here would run in Starlette's
    # outermost ServerErrorMiddleware, bypassing them, which then re-raises it to the
    # server to log a second time.
