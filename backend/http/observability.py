"""Logs (one line per request, JSON outside `local`) and Prometheus metrics."""

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

from fastapi import FastAPI, Request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from pythonjsonlogger.json import JsonFormatter
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.config import Settings
from backend.errors import ProblemCode, UnauthorizedError

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("backend.access")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def configure_logging(settings: Settings) -> None:
    """Route every logger, uvicorn's included, through one handler on stderr."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.LOG_LEVEL)
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
        # LOG_LEVEL decides, not `--log-level`: at uvicorn's "trace" it would log every
        # ASGI message, query strings and bodies included.
        uvicorn_logger.setLevel(logging.NOTSET)
    # RequestLogMiddleware is the access log. uvicorn's own line carries the full query
    # string (`?password=...`) and is written only while this logger has a handler, so
    # it gets none, whatever `--access-log` says.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers.clear()
    uvicorn_access.propagate = False
    # aiosqlite's DEBUG lines repeat every statement with its bound values: emails and
    # password hashes, which hide_parameters keeps out of SQLAlchemy's own messages.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    # Seven lines at every start that migrates, naming alembic's own autogenerate
    # plugins; the migrations it runs stay in the log (alembic.runtime.migration).
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


class HashQueue(Protocol):
    """What the metrics read of the password hasher (backend/auth/passwords.py)."""

    @property
    def queue_depth(self) -> int: ...

    @property
    def hash_seconds(self) -> float: ...

    @property
    def admission_limit(self) -> int: ...


class MailQueue(Protocol):
    """What the metrics read of the mailer (backend/mail.py)."""

    @property
    def queued(self) -> int: ...

    @property
    def queued_bytes(self) -> int: ...

    @property
    def dropped(self) -> int: ...


class Metrics:
    """This app's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests",
            "HTTP requests answered, by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from request to the end of the response, by route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.login_failures = Counter(
            "login_failures",
            "Logins refused for a wrong email or password.",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "rate_limit_rejections",
            "Requests refused with 429, by limit.",
            ["limit"],
            registry=self.registry,
        )
        self.rate_limit_storage_errors = Counter(
            "rate_limit_storage_errors",
            "Rate-limit checks skipped (failed open) because the storage was unreachable.",
            registry=self.registry,
        )
        self.rate_limit_storage_down = Gauge(
            "rate_limit_storage_down",
            "1 while the rate-limit storage is unavailable and checks fail open, else 0.",
            registry=self.registry,
        )
        self.database_unavailable = Counter(
            "database_unavailable",
            "Requests answered 503 because the database was down or overloaded.",
            registry=self.registry,
        )
        self.database_down = Gauge(
            "database_down",
            "1 from a request answered 503 for the database until it answers again, else 0.",
            registry=self.registry,
        )
        self.auth_events_written = Counter(
            "auth_events_written",
            "Sign-in events written to the auth_events table.",
            registry=self.registry,
        )
        self.auth_events_dropped = Counter(
            "auth_events_dropped",
            "Sign-in events dropped, not written: the writer's queue was full, or the "
            "database refused or did not answer their batch.",
            registry=self.registry,
        )
        self.auth_checks = Counter(
            "auth_checks",
            "Access tokens checked, by where their user and session rows came from.",
            ["source"],  # cache or database
            registry=self.registry,
        )
        self.auth_cache_listening = Gauge(
            "auth_cache_listening",
            "1 while this worker hears of changes (LISTEN) and may answer from its auth cache.",
            registry=self.registry,
        )

    def watch(self, engine: AsyncEngine, hasher: HashQueue, mailer: MailQueue) -> None:
        self.registry.register(_StateCollector(engine, hasher, mailer))


class _StateCollector(Collector):
    """Read at scrape time: the connection pool, the password-hash queue, the mail queue."""

    def __init__(self, engine: AsyncEngine, hasher: HashQueue, mailer: MailQueue) -> None:
        self.engine = engine
        self.hasher = hasher
        self.mailer = mailer

    def collect(self) -> Iterator[Metric]:
        pool: Any = self.engine.pool
        connections = GaugeMetricFamily(
            "db_pool_connections", "Pooled database connections, by state.", labels=["state"]
        )
        connections.add_metric(["in_use"], pool.checkedout())
        connections.add_metric(["idle"], pool.checkedin())
        yield connections
        yield GaugeMetricFamily(
            "password_hash_queue_depth",
            "Password hashes waiting for a worker thread.",
            value=self.hasher.queue_depth,
        )
        yield GaugeMetricFamily(
            "password_hash_seconds",
            "Mean wall time of a recent password hash in its thread (0 before the first).",
            value=self.hasher.hash_seconds,
        )
        yield GaugeMetricFamily(
            "password_hash_admission_limit",
            "Password hashes admitted at once: what the measured rate finishes within "
            "LOGIN_MAX_WAIT_SECONDS, at most HASH_CONCURRENCY + HASH_QUEUE_LIMIT.",
            value=self.hasher.admission_limit,
        )
        yield GaugeMetricFamily(
            "mail_queue_depth",
            "Mails waiting for a sender (not those being sent).",
            value=self.mailer.queued,
        )
        yield GaugeMetricFamily(
            "mail_queue_bytes",
            "Bytes the mails waiting for a sender hold (MAIL_QUEUE_MAX_BYTES at most).",
            value=self.mailer.queued_bytes,
        )
        yield CounterMetricFamily(
            "mail_dropped",
            "Mails dropped, not sent, because the mail queue was full.",
            value=self.mailer.dropped,
        )


# An outage ends at a statement that succeeds this long after the last 503: a database
# that refuses some requests and answers others (a full pool, one statement timeout
# among quick ones) is one outage, not a start and an end line per refused request.
OUTAGE_SETTLE_SECONDS = 1.0


class DatabaseOutage:
    """One warning when requests start getting 503 because of the database, one when it
    answers again with the outage's length and how many were refused meanwhile, as the
    rate-limit storage does (backend/http/ratelimit.py). Each request stays a line of
    the access log, with its 503."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.down_since: float | None = None  # monotonic time of the first 503
        self.refused = 0
        self._last_refused_at = 0.0

    def watch(self, engine: AsyncEngine) -> None:
        """Hear of every statement the database answers, the readiness probe's included."""
        event.listen(engine.sync_engine, "after_cursor_execute", self._statement_answered)

    def refused_request(self, cause: str) -> None:
        """A request is answered 503 because of the database; `cause` names the error."""
        self.metrics.database_unavailable.inc()
        self._last_refused_at = time.monotonic()
        if self.down_since is None:
            self.down_since = self._last_refused_at
            self.refused = 0
            self.metrics.database_down.set(1)
            logger.warning(
                "database unavailable (%s): requests that need it are answered 503 until "
                "it answers again",
                cause,
            )
        self.refused += 1

    def _statement_answered(self, *_: object) -> None:
        if self.down_since is not None:  # all that every statement costs while it is up
            self._answered()

    def _answered(self) -> None:
        assert self.down_since is not None
        now = time.monotonic()
        if now - self._last_refused_at < OUTAGE_SETTLE_SECONDS:
            return
        # At the level of the line that opened the outage, so whoever sees one sees both.
        logger.warning(
            "database available again after %.1f s; %d requests answered 503 meanwhile",
            now - self.down_since,
            self.refused,
        )
        self.down_since = None
        self.metrics.database_down.set(0)


def install_metrics_endpoint(app: FastAPI, metrics: Metrics, *, token: str | None) -> None:
    """/metrics; with a token, only for `Authorization: Bearer <token>`."""
    expected = token.encode() if token is not None else None

    # At the root like /health: scrapers and orchestrators look there, not under the API.
    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        if expected is not None:
            _check_scraper(request.headers.get("authorization"), expected)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _check_scraper(authorization: str | None, expected: bytes) -> None:
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise UnauthorizedError(
            "Metrics need `Authorization: Bearer` with the METRICS_TOKEN.",
            code=ProblemCode.NOT_AUTHENTICATED,
        )
    # In constant time: how much of a guess matched must not show in the answer's timing.
    # Header values arrive decoded as latin-1: encoded back, they are the bytes sent.
    if not hmac.compare_digest(credentials.strip().encode("latin-1"), expected):
        raise UnauthorizedError(
            "The bearer token is not the METRICS_TOKEN.", code=ProblemCode.METRICS_TOKEN_INVALID
        )


UNMATCHED = "unmatched"
MAX_LOGGED_PATH = 200
# In a request's state: coroutines a handler or dependency queued to run once the
# response is sent, whatever it was (an error's too, unlike a route's background tasks),
# given its status and route template. Here, with the log line: no middleware of its own.
AFTER_RESPONSE = "after_response"
AfterResponseHook = Callable[[int, str], Awaitable[None]]


class RequestLogMiddleware:
    """One log line (and metric sample) per request: method, route template, status,
    duration, request id and user id. Never the query string or a body."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics | None) -> None:
        self.app = app
        self.metrics = metrics
        self.templates: dict[str, str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            self._record(scope, status, time.perf_counter() - started)
        for hook in scope.get("state", {}).get(AFTER_RESPONSE, ()):
            await hook(status, self._template(scope))

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = self._template(scope)
        if self.metrics is not None:
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(seconds)
        if access_logger.isEnabledFor(logging.INFO):
            state = scope.get("state", {})
            # The metrics keep one label for every unmatched path; the log says which.
            path = _loggable_path(scope["path"]) if route == UNMATCHED else None
            access_logger.info(
                "%s %s %s %.1fms",
                scope["method"],
                path or route,
                status,
                seconds * 1000,
                extra={
                    "method": scope["method"],
                    "route": route,
                    **({"path": path} if path else {}),
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "request_id": state.get("request_id"),
                    "user_id": state.get("user_id"),
                },
            )

    def _template(self, scope: Scope) -> str:
        """The matched route's path template, e.g. /api/v1/users/{user_id}.

        Routes record only their path inside their router, so the full templates come
        from the OpenAPI document, by operation id (the route's name), once.
        """
        route = scope.get("route")
        if route is None:
            return UNMATCHED
        if self.templates is None:
            app: FastAPI = scope["app"]
            self.templates = {
                operation["operationId"]: path
                for path, operations in app.openapi()["paths"].items()
                for operation in operations.values()
            }
        template = self.templates.get(getattr(route, "name", ""))
        return template or str(getattr(route, "path", UNMATCHED))


def _loggable_path(path: str) -> str:
    """A client's path as one bounded log line: control and other unprintable
    characters escaped (a %0A would start a forged line), at most MAX_LOGGED_PATH long."""
    shown = path[:MAX_LOGGED_PATH]
    if not shown.isprintable():
        shown = "".join(
            c if c.isprintable() else c.encode("unicode_escape").decode() for c in shown
        )
    return shown + ("..." if len(path) > MAX_LOGGED_PATH else "")
