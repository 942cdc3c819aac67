"""The app factory: lifespan, middleware, error handlers, routers."""

import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import FrameType
from typing import Any, Self

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.auth import accounts
from backend.auth.authcache import AuthCache, tracked_sessionmaker
from backend.auth.events import AuthEventWriter
from backend.auth.passwords import PasswordHasher
from backend.auth.providers import Providers
from backend.config import Settings, get_settings
from backend.db.engine import (
    DatabaseStartupError,
    create_engine,
    database_location,
    database_unavailable,
    explained_startup_failure,
)
from backend.db.migrate import (
    NOT_MIGRATED,
    database_revision,
    newest_revision,
    upgrade_to_head,
)
from backend.http.admin import NOT_BUILT, install_admin, install_root
from backend.http.docs import install_docs
from backend.http.middleware import (
    BodyReadTimeoutMiddleware,
    BodySizeLimitMiddleware,
    HeadAsGetMiddleware,
    LivenessMiddleware,
    ProblemCORSMiddleware,
    ResponseHeadersMiddleware,
    ShutdownCutoffMiddleware,
    TrailingSlashMiddleware,
    UnexpectedErrorMiddleware,
)
from backend.http.observability import (
    DatabaseOutage,
    Metrics,
    RequestLogMiddleware,
    configure_logging,
    install_metrics_endpoint,
)
from backend.http.problems import PROBLEM_JSON, install_error_handlers
from backend.http.ratelimit import RateLimiter
from backend.mail import Mailer
from backend.models import UserCreate, UserRole
from backend.routers import (
    api_keys,
    audit,
    auth,
    auth_events,
    health,
    mfa,
    passkeys,
    sessions,
    sso,
    users,
    webhooks,
)
from backend.rules import use_account_rules
from backend.runtime import Runtime
from backend.webhooks.dispatcher import Dispatcher

logger = logging.getLogger(__name__)

TAGS = [
    {
        "name": "auth",
        "description": "Register, log in, refresh (rotating refresh tokens) and log out; "
        "password reset, invitations and email verification by mailed link.",
    },
    {
        "name": "sso",
        "description": "Sign in with OpenID Connect providers and GitHub (OIDC_PROVIDERS), "
        "and the identities linked to an account.",
    },
    {"name": "users", "description": "User accounts: everyone reads, admins write."},
    {
        "name": "tokens",
        "description": "Personal API keys for scripts (`Authorization: Bearer uak_...`), "
        "managed with a login's access token.",
    },
    {
        "name": "mfa",
        "description": "Second factors: an authenticator app (TOTP) and recovery codes, "
        "with a login's access token; an admin's view and reset.",
    },
    {"name": "audit", "description": "The trail of changes to accounts (admin only)."},
    {
        "name": "webhooks",
        "description": "Endpoints that receive signed events about users and sessions "
        "(admin only); see docs/webhooks.md.",
    },
    {
        "name": "signins",
        "description": "The sign-in history: logins, failures, logouts, registrations and "
        "rate-limit refusals (everyone's for admins, one's own for each user).",
    },
    {"name": "health", "description": "Liveness and readiness probes, outside the API prefix."},
]


def start_runtime(settings: Settings, metrics: Metrics) -> Runtime:
    """Build every part of the runtime; none connects anywhere until first used."""
    engine = create_engine(settings)
    password_hasher = PasswordHasher(
        rounds=settings.BCRYPT_ROUNDS,
        concurrency=settings.HASH_CONCURRENCY,
        queue_limit=settings.HASH_QUEUE_LIMIT,
        max_wait_seconds=settings.LOGIN_MAX_WAIT_SECONDS,
        secret=settings.SECRET_KEY,
    )
    mailer = Mailer(settings)
    metrics.watch(engine, password_hasher, mailer)
    database_outage = DatabaseOutage(metrics)
    database_outage.watch(engine)
    auth_cache = AuthCache(settings, metrics)
    sessionmaker = tracked_sessionmaker(engine, settings, auth_cache=auth_cache)
    return Runtime(
        auth_events=AuthEventWriter(engine, metrics),
        settings=settings,
        metrics=metrics,
        engine=engine,
        database_outage=database_outage,
        sessionmaker=sessionmaker,
        read_sessionmaker=tracked_sessionmaker(
            engine, settings, auth_cache=auth_cache, read_only=True
        ),
        password_hasher=password_hasher,
        rate_limiter=RateLimiter(settings, metrics),
        mailer=mailer,
        auth_cache=auth_cache,
        sso=Providers(settings),
        webhooks=Dispatcher(settings, sessionmaker),
    )


def _lifespan(
    settings: Settings, metrics: Metrics
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = start_runtime(settings, metrics)
        app.state.runtime = runtime
        stop_signal = StopSignal()
        try:
            stop_signal.listen()
            if settings.AUTO_MIGRATE:
                await upgrade_to_head(settings)
            with explained_startup_failure(settings):
                await _check_schema(runtime)
                await _ensure_first_admin(runtime)
            mailer = runtime.mailer
            logger.log(logging.INFO if mailer.sends else logging.WARNING, mailer.describe())
            admin_dir = settings.admin_dir
            if admin_dir is not None and not (admin_dir / "index.html").is_file():
                logger.info("no dashboard build in %s yet. %s", admin_dir, NOT_BUILT)
            runtime.auth_cache.start()
            # Deliveries left by a previous run (a crash, a kill) go out now.
            runtime.webhooks.start()
            runtime.auth_events.start()
            await runtime.password_hasher.calibrate()
            yield
        finally:
            stop_signal.close()
            # What is left (mail) shares the grace period with the requests that were in
            # flight at the signal, rather than getting one of its own after theirs.
            await runtime.close(
                within=max(0.0, settings.SHUTDOWN_GRACE_SECONDS - stop_signal.elapsed)
            )

    return lifespan


class StopSignal:
    """When the server was told to stop (SIGTERM or SIGINT).

    uvicorn handles both with signal.signal, installs its handlers before the lifespan
    starts and restores the previous ones after it ends; these note the time and pass the
    signal on to uvicorn's. Outside the main thread (an app driven by a test client) no
    signal reaches the app, and nothing is installed.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.at: float | None = None  # monotonic
        self._replaced: dict[int, Callable[[int, FrameType | None], Any]] = {}

    @property
    def elapsed(self) -> float:
        return 0.0 if self.at is None else time.monotonic() - self.at

    def listen(self) -> Self:
        if threading.current_thread() is not threading.main_thread():
            return self
        for number in self.SIGNALS:
            handler = signal.getsignal(number)
            if callable(handler):
                self._replaced[number] = handler
                signal.signal(number, self._noting(handler))
        return self

    def close(self) -> None:
        for number, handler in self._replaced.items():
            signal.signal(number, handler)
        self._replaced.clear()

    def _noting(
        self, handler: Callable[[int, FrameType | None], Any]
    ) -> Callable[[int, FrameType | None], Any]:
        def noting(number: int, frame: FrameType | None) -> Any:
            if self.at is None:
                self.at = time.monotonic()
            return handler(number, frame)

        return noting


class OneLineStartupFailure:
    """A DatabaseStartupError at start-up reaches the server as its one line.

    Starlette reports a failed lifespan start-up with the whole traceback as the message,
    which uvicorn prints (a hundred lines and more for a refused connection); the error's
    own text already says which setting is wrong and where it points.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_one_line(message: Message) -> None:
            # Starlette sends the failure while handling the exception, so it is current.
            failure = sys.exception()
            if message["type"] == "lifespan.startup.failed" and isinstance(
                failure, DatabaseStartupError
            ):
                message = {**message, "message": str(failure)}
            await send(message)

        await self.app(scope, receive, send_one_line)


async def _check_schema(runtime: Runtime) -> None:
    """A database behind the migrations: start-up stops where it would have to write
    (the first admin), and warns otherwise, /health/ready saying 503 until it is done."""
    settings = runtime.settings
    first_admin = settings.FIRST_ADMIN_EMAIL and settings.FIRST_ADMIN_PASSWORD
    try:
        async with runtime.engine.connect() as connection:
            revision = await database_revision(connection)
    except Exception as error:
        # Down for now: the app starts all the same and readiness says 503 meanwhile,
        # unless it has to write at once (the first admin), which stops it in one line.
        if database_unavailable(error) and not first_admin:
            return
        raise
    if revision == newest_revision():
        return
    where = database_location(settings.DATABASE_URL)
    if first_admin:
        raise DatabaseStartupError(
            f"FIRST_ADMIN_EMAIL: cannot create the first admin: the database at {where} is "
            f"at revision {revision or 'none'}, not the newest ({newest_revision()}). "
            f"{NOT_MIGRATED}"
        )
    logger.warning(
        "the database at %s is at revision %s, not the newest (%s): /health/ready answers "
        "503 until `backend migrate` runs",
        where,
        revision or "none",
        newest_revision(),
    )


async def _ensure_first_admin(runtime: Runtime) -> None:
    settings = runtime.settings
    if not (settings.FIRST_ADMIN_EMAIL and settings.FIRST_ADMIN_PASSWORD):
        return
    admin = UserCreate(
        email=settings.FIRST_ADMIN_EMAIL,
        password=settings.FIRST_ADMIN_PASSWORD,
        name="Admin",
        role=UserRole.ADMIN,
    )
    async with runtime.sessionmaker() as db:
        created = await accounts.ensure_user(db, data=admin, hasher=runtime.password_hasher)
    if created:
        logger.info("created the first admin %s", admin.email)
    else:
        logger.info("first admin %s already exists; left unchanged", admin.email)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; settings from the environment unless given. Nothing runs until served."""
    settings = settings or get_settings()
    use_account_rules(settings.account_rules)
    # Always counted (cheap); exposed, and requests timed, only with METRICS_ENABLED.
    metrics = Metrics()
    app = FastAPI(
        title=settings.PROJECT_NAME,
        description="Users and JWT authentication. Errors are RFC 9457 problem+json.",
        version="1.0.0",
        # Off by default outside local and test: the whole surface, mapped for a stranger.
        openapi_url=f"{settings.API_V1_PREFIX}/openapi.json" if settings.DOCS_ENABLED else None,
        openapi_tags=TAGS,
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan(settings, metrics),
        redirect_slashes=False,
        generate_unique_id_function=lambda route: route.name,
        # The app's observability is its request log and Prometheus metrics. FastAPI's
        # OpenTelemetry bridge, on by default, looks up the global providers on every
        # request and finds none: no OpenTelemetry SDK is installed (bench/README.md).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    app.include_router(auth.router, prefix=settings.API_V1_PREFIX)
    app.include_router(sso.router, prefix=settings.API_V1_PREFIX)
    app.include_router(users.router, prefix=settings.API_V1_PREFIX)
    app.include_router(sessions.router, prefix=settings.API_V1_PREFIX)
    app.include_router(mfa.router, prefix=settings.API_V1_PREFIX)
    app.include_router(api_keys.router, prefix=settings.API_V1_PREFIX)
    app.include_router(passkeys.router, prefix=settings.API_V1_PREFIX)
    app.include_router(passkeys.auth_router, prefix=settings.API_V1_PREFIX)
    app.include_router(audit.router, prefix=settings.API_V1_PREFIX)
    app.include_router(webhooks.router, prefix=settings.API_V1_PREFIX)
    app.include_router(auth_events.router, prefix=settings.API_V1_PREFIX)
    app.include_router(health.router)
    if settings.DOCS_ENABLED:
        install_docs(app, settings)
    if settings.METRICS_ENABLED:
        token = settings.METRICS_TOKEN
        install_metrics_endpoint(
            app, metrics, token=token.get_secret_value() if token is not None else None
        )
    dashboard = install_admin(app, settings.admin_dir) if settings.admin_dir else None
    install_root(app, dashboard, docs=bool(settings.DOCS_ENABLED))

    # Added innermost first: the headers wrap everything, CORS sees normalised paths and
    # adds its headers to 413s and 500s too.
    app.add_middleware(UnexpectedErrorMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.MAX_BODY_BYTES)
    # Outside the size limit, which reads chunked bodies itself.
    app.add_middleware(BodyReadTimeoutMiddleware, seconds=settings.BODY_READ_TIMEOUT_SECONDS)
    routes = {route.name: route for route in health.router.routes if isinstance(route, APIRoute)}
    app.add_middleware(
        LivenessMiddleware,
        path=app.url_path_for(health.LIVE_ROUTE_NAME),
        route=routes[health.LIVE_ROUTE_NAME],
        body=health.LIVE.model_dump_json(exclude_none=True).encode(),
    )
    app.add_middleware(
        ProblemCORSMiddleware,
        allow_origins=settings.CORS_ORIGINS,
        # Credentials only ever go to listed origins, never to a wildcard.
        allow_credentials="*" not in settings.CORS_ORIGINS,
        allow_methods=["*"],
        allow_headers=["*"],
        # Dashboards read the paging headers; browsers hide them unless listed here.
        expose_headers=[
            "X-Request-ID",
            "Location",
            "Retry-After",
            "X-Total-Count",
            "Content-Range",
            "Link",
            "ETag",
        ],
    )
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(TrailingSlashMiddleware)
    # Just inside the headers, so the 503s it sends for cut requests get them too.
    app.add_middleware(ShutdownCutoffMiddleware)
    app.add_middleware(
        ResponseHeadersMiddleware,
        api_prefix=settings.API_V1_PREFIX,
        https=settings.public_url.startswith("https://"),
    )
    app.add_middleware(RequestLogMiddleware, metrics=metrics if settings.METRICS_ENABLED else None)
    app.add_middleware(OneLineStartupFailure)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _adapt_openapi(FastAPI.openapi(app), settings)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _adapt_openapi(schema: dict[str, Any], settings: Settings) -> None:
    """Point Swagger's Authorize at the configured prefix; errors are problem+json; list
    pages and id lists are bounded by the configured MAX_PER_PAGE."""
    prefix = settings.API_V1_PREFIX
    for scheme in schema.get("components", {}).get("securitySchemes", {}).values():
        if "password" in scheme.get("flows", {}):
            scheme["flows"]["password"]["tokenUrl"] = f"{prefix}/auth/login"
    for path in schema["paths"].values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                parameter_schema = parameter.get("schema", {})
                if parameter["name"] == "per_page":
                    parameter_schema["maximum"] = settings.MAX_PER_PAGE
                elif "maxItems" in parameter_schema:
                    parameter_schema["maxItems"] = settings.MAX_PER_PAGE
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if int(status) >= 400 and "application/json" in content:
                    content[PROBLEM_JSON] = content.pop("application/json")


GC_THRESHOLDS = (50_000, 20, 100)


def served_app() -> FastAPI:
    """The app as served (`uvicorn --factory backend.main:served_app`, or `backend serve`):
    settings from the environment, logging set up for a server."""
    settings = get_settings()
    configure_logging(settings)
    if settings.secret_key_generated:
        logger.warning(
            "SECRET_KEY is not set: using a random key for this process. Tokens stop "
            "working when it restarts and are not shared between workers."
        )
    app = create_app(settings)
    # What start-up made (modules, routes, schemas) lives as long as the process; frozen,
    # the collector stops walking it in every full collection (bench/README.md).
    gc.collect()
    gc.freeze()
    # Python's default (700, 10, 10) collects the young generation every 700 allocations,
    # which under load spends a share of the worker's CPU freeing almost nothing: what a
    # request allocates is mostly freed by reference counting (bench/README.md).
    gc.set_threshold(*GC_THRESHOLDS)
    return app
