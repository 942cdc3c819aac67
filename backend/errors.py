"""One error format for every error: RFC 9457 problem+json."""

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from asyncpg import (  # type: ignore[import-untyped]
    InsufficientResourcesError,
    OperatorInterventionError,
    PostgresConnectionError,
)
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
DB_RETRY_AFTER_SECONDS = 2

# What a database outage raises (tests/test_outage.py stops and starts a real PostgreSQL
# under load): each means "retry shortly", never a fault in the request, so 503.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    OperationalError,  # SQLAlchemy's category for a lost or refused connection
    InterfaceError,
    PoolTimeoutError,  # no pooled connection within DB_POOL_TIMEOUT_SECONDS
    # Connection refused or reset; TimeoutError (asyncio's too) is one: asyncpg's connect
    # timeout and command_timeout.
    OSError,
)
# asyncpg errors that SQLAlchemy wraps in a plain DBAPIError, by SQLSTATE class.
DRIVER_UNAVAILABLE: tuple[type[Exception], ...] = (
    PostgresConnectionError,  # 08: the connection died mid-request (ConnectionDoesNotExistError)
    # 57: the server is shutting down or starting up (AdminShutdownError,
    # CannotConnectNowError), or DB_STATEMENT_TIMEOUT_SECONDS ran out (QueryCanceledError).
    OperatorInterventionError,
    InsufficientResourcesError,  # 53: too many connections, disk full, out of memory
)


def database_unavailable(exc: Exception) -> bool:
    """Whether an exception means the database is down or overloaded, not a bug."""
    if isinstance(exc, DATABASE_UNAVAILABLE):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:  # SQLAlchemy saw the connection drop
            return True
        return exc.orig is not None and isinstance(exc.driver_exception, DRIVER_UNAVAILABLE)
    return False


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    # The same sentence: react-admin and Refine show an error body's `message`.
    message: str
    request_id: str | None = None
    errors: list[FieldError] | None = None


class DomainError(Exception):
    """An expected failure, mapped to its HTTP status by one handler."""

    status_code = HTTPStatus.BAD_REQUEST

    def __init__(self, detail: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})


class BadRequestError(DomainError):
    status_code = HTTPStatus.BAD_REQUEST


class NotFoundError(DomainError):
    status_code = HTTPStatus.NOT_FOUND


class ConflictError(DomainError):
    status_code = HTTPStatus.CONFLICT


class UserGoneError(NotFoundError):
    def __init__(self) -> None:
        super().__init__("The user was deleted meanwhile.")


class PreconditionFailedError(DomainError):
    status_code = HTTPStatus.PRECONDITION_FAILED

    def __init__(self) -> None:
        super().__init__(
            "The user changed since the ETag you sent (If-Match): fetch it again and retry."
        )


class EmailTakenError(ConflictError):
    def __init__(self) -> None:
        super().__init__("A user with this email already exists.")


class UnauthorizedError(DomainError):
    status_code = HTTPStatus.UNAUTHORIZED

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class ForbiddenError(DomainError):
    status_code = HTTPStatus.FORBIDDEN


class ServiceUnavailableError(DomainError):
    status_code = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, detail: str, *, retry_after_seconds: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_seconds)})


class TooManyRequestsError(DomainError):
    status_code = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, detail: str, *, retry_after_seconds: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_seconds)})


def problem_response(
    status: int,
    detail: str,
    *,
    errors: Sequence[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
    request_id: str | None = None,
) -> JSONResponse:
    problem = Problem(
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        message=detail,
        request_id=request_id,
        errors=list(errors) if errors is not None else None,
    )
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_JSON,
    )


def request_id_of(request: Request) -> str | None:
    request_id: str | None = request.scope.get("state", {}).get("request_id")
    return request_id


def _field_name(location: Sequence[Any]) -> str:
    # ("body", "email") -> "email"; a body that is not JSON at all -> "body".
    parts = [str(part) for part in location[1:]] if len(location) > 1 else []
    return ".".join(parts) or str(location[0] if location else "body")


def _validation_message(error: Mapping[str, Any]) -> str:
    if error["type"] == "json_invalid":
        return "Request body is not valid JSON."
    return str(error["msg"]).removeprefix("Value error, ")


async def _handle_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return problem_response(
        exc.status_code, exc.detail, headers=exc.headers, request_id=request_id_of(request)
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
    return problem_response(status, detail, headers=headers, request_id=request_id_of(request))


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
    errors = [
        FieldError(field=_field_name(error["loc"]), message=_validation_message(error))
        for error in exc.errors()
    ]
    fields = ", ".join(dict.fromkeys(error.field for error in errors))
    return problem_response(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        f"Invalid input: {fields}.",
        errors=errors,
        request_id=request_id_of(request),
    )


async def _handle_database_error(request: Request, exc: Exception) -> JSONResponse:
    if not database_unavailable(exc):
        return await _handle_unexpected_error(request, exc)
    cause = exc.driver_exception if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    request.app.state.metrics.database_unavailable.inc()
    logger.warning("database unavailable: %s", cause.__class__.__name__)
    return problem_response(
        HTTPStatus.SERVICE_UNAVAILABLE,
        "The database is unavailable or busy; retry shortly.",
        headers={"Retry-After": str(DB_RETRY_AFTER_SECONDS)},
        request_id=request_id_of(request),
    )


async def _handle_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    request_id = request_id_of(request)
    response = problem_response(
        HTTPStatus.INTERNAL_SERVER_ERROR,
        "An unexpected error occurred. Quote the request id when reporting it.",
        request_id=request_id,
    )
    # This handler runs outside the request-id middleware, so it sets the header itself.
    if request_id:
        response.headers["X-Request-ID"] = request_id
    return response


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _handle_domain_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    # Every database error is looked at; those meaning an outage are 503, the rest 500.
    database_errors: tuple[type[Exception], ...] = (DBAPIError, *DATABASE_UNAVAILABLE)
    for database_error in database_errors:
        app.add_exception_handler(database_error, _handle_database_error)
    app.add_exception_handler(Exception, _handle_unexpected_error)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error statuses, all with the Problem schema."""
    return {
        status: {"model": Problem, "description": HTTPStatus(status).phrase} for status in statuses
    }
