"""The async engine and session factory; plain URLs in, async drivers chosen here."""

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from asyncpg import (  # type: ignore[import-untyped]
    InsufficientResourcesError,
    InvalidAuthorizationSpecificationError,
    InvalidCatalogNameError,
    OperatorInterventionError,
    PostgresConnectionError,
)
from sqlalchemy import Connection, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.authcache import AUTH_CACHE, AuthCache, TrackedSession
from backend.config import Settings

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
# The client gives up this long after the server's statement_timeout should have fired.
COMMAND_TIMEOUT_MARGIN_SECONDS = 1.0

# What a database outage raises (tests/test_outage.py stops and starts a real PostgreSQL
# under load): each means "retry shortly", never a fault in the request, so 503.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    OperationalError,  # SQLAlchemy's category for a lost or refused connection
    InterfaceError,
    PoolTimeoutError,  # no pooled connection within DB_POOL_TIMEOUT_SECONDS
    # Connection refused or reset; TimeoutError (asyncio's too) is one: asyncpg's connect
    # timeout and command_timeout, and a spent DB_REQUEST_BUDGET_SECONDS (Session).
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


# Start-up cannot go on: a wrong password or database name, on top of an outage.
DRIVER_REFUSED: tuple[type[Exception], ...] = (
    InvalidAuthorizationSpecificationError,  # 28: bad user or password
    InvalidCatalogNameError,  # 3D000: no such database
)
# The default DATABASE_URL's folder, made on the first run; any other must exist.
DEFAULT_SQLITE_FOLDER = Path("data")


class DatabaseStartupError(Exception):
    """The configured database cannot be used at start-up. Its text is one line naming
    DATABASE_URL and where it points, which is all an operator needs; no traceback."""


def database_location(database_url: str) -> str:
    """Where DATABASE_URL points, without its password: a file, or host:port/database."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        in_memory = url.database in (None, "", ":memory:")
        return ":memory:" if in_memory else str(Path(str(url.database)).resolve())
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


@contextmanager
def explained_startup_failure(settings: Settings) -> Iterator[None]:
    """Turn "the database cannot be reached or refuses us" into a DatabaseStartupError;
    anything else (a bug in a migration, say) keeps its traceback."""
    try:
        yield
    except DatabaseStartupError:
        raise
    except Exception as error:
        cause = error.driver_exception if isinstance(error, DBAPIError) else error
        if not (database_unavailable(error) or isinstance(cause, DRIVER_REFUSED)):
            raise
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise DatabaseStartupError(
            f"DATABASE_URL: cannot use the database at "
            f"{database_location(settings.DATABASE_URL)}: {reason or type(cause).__name__}"
        ) from error


def async_url(database_url: str) -> URL:
    url = make_url(database_url)
    backend = "postgresql" if url.get_backend_name() == "postgres" else url.get_backend_name()
    url = url.set(drivername=ASYNC_DRIVERS[backend])
    if backend == "postgresql" and "sslmode" in url.query:
        # asyncpg spells libpq's sslmode as ssl.
        query = dict(url.query)
        query["ssl"] = query.pop("sslmode")
        url = url.set(query=query)
    return url


def _enable_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def create_engine(settings: Settings) -> AsyncEngine:
    url = async_url(settings.DATABASE_URL)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            _ensure_sqlite_folder(Path(url.database))
        engine = create_async_engine(url, echo=settings.DB_ECHO, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _enable_sqlite_pragmas)
        return engine
    engine = create_async_engine(
        url,
        echo=settings.DB_ECHO,
        # Errors and logs never show bound values: emails, password hashes.
        hide_parameters=True,
        pool_size=settings.DB_POOL_SIZE,
        max_overflow=settings.DB_MAX_OVERFLOW,
        pool_timeout=settings.pool_timeout_seconds,
        pool_recycle=settings.DB_POOL_RECYCLE_SECONDS,
        pool_pre_ping=settings.DB_POOL_PRE_PING,
        connect_args=_asyncpg_timeouts(settings),
    )
    event.listen(engine.sync_engine, "invalidate", _abort_if_cancelled)
    return engine


def _abort_if_cancelled(dbapi_connection: Any, _record: Any, error: BaseException | None) -> None:
    """Drop a connection whose statement the request budget cancelled without a goodbye.

    SQLAlchemy invalidates it (never pools it mid-statement) and closes it gracefully,
    waiting up to 2 s for an answer to its Terminate that a frozen server never sends:
    503s took 5.0 s instead of 3.1 s under SIGSTOP. Aborting the socket first makes
    that close return at once; the server ends the backend when it sees the reset.
    """
    if isinstance(error, asyncio.CancelledError):
        dbapi_connection.driver_connection.terminate()


def _ensure_sqlite_folder(database: Path) -> None:
    """SQLite creates a missing file, which is how a first run starts; a missing folder
    is a mistyped path far more often, so only the default one is made."""
    folder = database.parent
    if folder.is_dir():
        return
    if folder.resolve() == DEFAULT_SQLITE_FOLDER.resolve():
        folder.mkdir(parents=True, exist_ok=True)
        return
    raise DatabaseStartupError(
        f"DATABASE_URL: the folder {folder.resolve()} of the SQLite file does not exist "
        "(create it, or correct the path)"
    )


def _asyncpg_timeouts(settings: Settings) -> dict[str, Any]:
    """Time limits that turn a PostgreSQL outage into a prompt 503, not a hung request.

    asyncpg waits 60 s to connect and forever for an answer unless told otherwise; the
    server cancels statements past statement_timeout, and command_timeout (a little
    longer) covers a server that has stopped answering altogether, where no session's
    budget applies (closing a session).
    """
    timeouts: dict[str, Any] = {"timeout": settings.connect_timeout_seconds}
    statement_timeout = settings.statement_timeout_seconds
    if statement_timeout > 0:
        timeouts["command_timeout"] = statement_timeout + COMMAND_TIMEOUT_MARGIN_SECONDS
        timeouts["server_settings"] = {"statement_timeout": str(round(statement_timeout * 1000))}
    return timeouts


Method = TypeVar("Method", bound=Callable[..., Awaitable[Any]])


def _within_budget(method: Method) -> Method:
    """The session method, waiting for the database no longer than the session has left."""

    @functools.wraps(method)
    async def bounded(session: "Session", *args: Any, **kwargs: Any) -> Any:
        async with session.database_wait():
            return await method(session, *args, **kwargs)

    return cast(Method, bounded)


class Session(AsyncSession):
    """A session whose database waits add up to at most one budget, and whose close
    survives a database that went away after the answer was sent.

    The budget (DB_REQUEST_BUDGET_SECONDS, PostgreSQL only) bounds all of a request's
    waits together, the pool, connecting and each statement, where their own limits
    used to add up (issue 16: 5-12 s to a 503 from a frozen server). Only time inside
    the methods below counts, not a password hash between them. SQLAlchemy runs the
    driver's awaits in the calling task, so the timeout cancels them where they wait;
    a connection cancelled mid-statement is invalidated (terminated), never pooled.

    Closing rolls back whatever is still open. When PostgreSQL has just dropped the
    connection (a stop or restart), that rollback fails although there is nothing left to
    undo: the pool has discarded the connection, so the error is only logged, instead of
    surfacing after a response that already went out. Closing is outside the budget: it
    runs after the response, and must return the connection even when the budget is spent.
    """

    def __init__(
        self, *args: Any, database_budget_seconds: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._database_seconds_left = database_budget_seconds
        self._waiting_for_database = False

    @asynccontextmanager
    async def database_wait(self) -> AsyncIterator[None]:
        """Count the time inside against the budget; TimeoutError (503) once it is spent."""
        seconds_left = self._database_seconds_left
        if seconds_left is None or self._waiting_for_database:  # no budget, or counted outside
            yield
            return
        if seconds_left <= 0:
            raise TimeoutError("the request's database budget is spent")
        started = time.monotonic()
        self._waiting_for_database = True
        try:
            async with asyncio.timeout(seconds_left):
                yield
        finally:
            self._waiting_for_database = False
            self._database_seconds_left = seconds_left - (time.monotonic() - started)

    exec = _within_budget(AsyncSession.exec)
    execute = _within_budget(AsyncSession.execute)
    scalars = _within_budget(AsyncSession.scalars)
    get = _within_budget(AsyncSession.get)
    get_one = _within_budget(AsyncSession.get_one)
    merge = _within_budget(AsyncSession.merge)
    delete = _within_budget(AsyncSession.delete)
    refresh = _within_budget(AsyncSession.refresh)
    flush = _within_budget(AsyncSession.flush)
    commit = _within_budget(AsyncSession.commit)
    rollback = _within_budget(AsyncSession.rollback)

    # Not by _within_budget: mypy cannot match scalar's overloads (one returns Never).
    async def scalar(self, *args: Any, **kwargs: Any) -> Any:
        async with self.database_wait():
            return await super().scalar(*args, **kwargs)

    async def close(self) -> None:
        try:
            await super().close()
        except Exception as error:
            if not database_unavailable(error):
                raise
            cause = error.orig if isinstance(error, DBAPIError) else error
            logger.warning("database connection lost while closing a session: %r", cause)


def create_sessionmaker(
    engine: AsyncEngine, settings: Settings, auth_cache: AuthCache | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions whose writes to users and sessions reach the auth cache, when given
    one (see backend/authcache.py)."""
    # expire_on_commit=False: returning a committed row must not trigger a reload query.
    return async_sessionmaker(
        engine,
        class_=Session,
        sync_session_class=TrackedSession,
        info={AUTH_CACHE: auth_cache} if auth_cache is not None else None,
        expire_on_commit=False,
        database_budget_seconds=settings.request_database_budget_seconds,
    )


def _find_alembic_dir() -> Path:
    """The migrations: inside the package when installed from the wheel (pyproject.toml
    puts them there), in the top-level alembic/ folder of a checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "alembic"
    return installed if (installed / "env.py").is_file() else package.parent / "alembic"


ALEMBIC_DIR = _find_alembic_dir()
# PostgreSQL-only indexes that the migrations create by hand (see their comments).
UNMODELLED_INDEXES = frozenset({"ix_users_email_trgm", "ix_users_name_trgm"})


def include_in_autogenerate(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Alembic's include_object hook: ignore the hand-made indexes when comparing."""
    return not (type_ == "index" and name in UNMODELLED_INDEXES)


def alembic_config() -> "Config":
    # Imported here: Alembic adds ~12 MB to every worker that never migrates.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    return config


def create_migration_engine(settings: Settings) -> AsyncEngine:
    """An engine for schema changes: without the request time limits, since a migration
    may rewrite a big table, and workers starting together wait on each other's lock."""
    if settings.is_sqlite:
        return create_engine(settings)
    url = async_url(settings.DATABASE_URL)
    return create_async_engine(url, poolclass=NullPool, hide_parameters=True)


async def upgrade_to_head(settings: Settings) -> None:
    """Migrate to the newest revision. A database that cannot be reached raises
    DatabaseStartupError; a migration that fails keeps its traceback."""
    engine = create_migration_engine(settings)
    try:
        with explained_startup_failure(settings):
            connection = await engine.connect()
        try:
            async with connection.begin():
                await connection.run_sync(_upgrade_to_head)
        finally:
            await connection.close()
    finally:
        await engine.dispose()


def _upgrade_to_head(connection: Connection) -> None:
    from alembic import command  # imported here: see alembic_config

    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
