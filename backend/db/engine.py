"""The async engine: plain URLs in, async drivers chosen here; what an outage raises, and
the one-line errors that stop start-up."""

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from asyncpg import (  # type: ignore[import-untyped]
    InsufficientResourcesError,
    InvalidAuthorizationSpecificationError,
    InvalidCatalogNameError,
    OperatorInterventionError,
    PostgresConnectionError,
    UndefinedColumnError,
    UndefinedTableError,
)
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from backend.config import Settings
from backend.db.pool import FirstComeFirstServedPool

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
    # timeout and command_timeout, and a spent DB_REQUEST_BUDGET_SECONDS (BudgetedSession).
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


def schema_missing(exc: Exception) -> bool:
    """Whether a statement failed for want of a table or column: a database that
    `backend migrate` has not brought to the newest revision, not a bug in the request."""
    if not isinstance(exc, DBAPIError) or exc.orig is None:
        return False
    if isinstance(exc.driver_exception, UndefinedTableError | UndefinedColumnError):
        return True  # PostgreSQL's 42P01 and 42703
    message = str(exc.orig)
    return isinstance(exc, OperationalError) and message.startswith(
        ("no such table", "no such column")  # SQLite's words; it has no codes for them
    )


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
        poolclass=FirstComeFirstServedPool,
        pool_size=settings.DB_POOL_SIZE,
        max_overflow=settings.DB_MAX_OVERFLOW,
        pool_timeout=settings.pool_timeout_seconds,
        pool_recycle=settings.DB_POOL_RECYCLE_SECONDS,
        pool_pre_ping=settings.DB_POOL_PRE_PING,
        connect_args=_asyncpg_options(settings),
    )
    event.listen(engine.sync_engine, "invalidate", _abort_if_cancelled)
    return engine


def _abort_if_cancelled(dbapi_connection: Any, _record: Any, error: BaseException | None) -> None:
    """Drop a connection whose statement the request budget cancelled without a goodbye.

    SQLAlchemy invalidates it (never pools it mid-statement) and closes it gracefully,
    waiting up to 2 s for an answer to its Terminate that a frozen server never sends,
    which a 503 would wait out. Aborting the socket first makes that close return at
    once; the server ends the backend when it sees the reset.
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


def _asyncpg_options(settings: Settings) -> dict[str, Any]:
    """Time limits that turn a PostgreSQL outage into a prompt 503, not a hung request,
    and a plan for each statement made with its values.

    asyncpg waits 60 s to connect and forever for an answer unless told otherwise; the
    server cancels statements past statement_timeout, and command_timeout (a little
    longer) covers a server that has stopped answering altogether, where no session's
    budget applies (closing a session).

    asyncpg prepares every statement, and after five executions PostgreSQL may switch a
    prepared statement to a generic plan, made without the values. For a search it then
    cannot see the pattern, so it walks the primary key and filters every row instead of
    using the trigram indexes: 1,263 ms instead of 0.07 ms for a no-match `q` at
    1,000,000 users (EXPLAIN ANALYZE in bench/README.md), growing with the table. Every
    list filter has the same exposure, so custom plans are forced for the connection
    rather than for one statement; planning the app's statements costs about 0.1 ms.
    """
    server_settings = {"plan_cache_mode": "force_custom_plan"}
    options: dict[str, Any] = {
        "timeout": settings.connect_timeout_seconds,
        "server_settings": server_settings,
    }
    statement_timeout = settings.statement_timeout_seconds
    if statement_timeout > 0:
        options["command_timeout"] = statement_timeout + COMMAND_TIMEOUT_MARGIN_SECONDS
        server_settings["statement_timeout"] = str(round(statement_timeout * 1000))
    return options
