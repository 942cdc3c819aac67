"""The db session of a request: its database waits bounded by one budget, a close that
survives a lost connection, and the two transaction moves every workflow shares."""

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

from sqlalchemy import Select, false, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.config import Settings
from backend.db.engine import database_unavailable

logger = logging.getLogger(__name__)

Method = TypeVar("Method", bound=Callable[..., Awaitable[Any]])


def _within_budget(method: Method) -> Method:
    """The session method, waiting for the database no longer than the session has left."""

    @functools.wraps(method)
    async def bounded(db: "BudgetedSession", *args: Any, **kwargs: Any) -> Any:
        async with db.database_wait():
            return await method(db, *args, **kwargs)

    return cast(Method, bounded)


class BudgetedSession(AsyncSession):
    """A session whose database waits add up to at most one budget, and whose close
    survives a database that went away after the answer was sent.

    The budget (DB_REQUEST_BUDGET_SECONDS, PostgreSQL only) bounds all of a request's
    waits together, the pool, connecting and each statement, where their own limits
    would add up (5-12 s to a 503 from a frozen server). Only time inside
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
    engine: AsyncEngine,
    settings: Settings,
    *,
    read_only: bool = False,
    sync_session_class: type[OrmSession] | None = None,
    info: dict[Any, Any] | None = None,
) -> async_sessionmaker[AsyncSession]:
    """Budgeted sessions on the engine; `sync_session_class` and `info` let a caller
    watch their writes (the auth cache does: backend/auth/authcache.py).

    read_only ones run each statement in a transaction of its own on PostgreSQL
    (AUTOCOMMIT), without the BEGIN and ROLLBACK round trips around every GET. They share
    the engine's pool: AUTOCOMMIT is a flag in asyncpg's adapter, set at checkout and
    reset at check-in, no round trip either way. A read is as consistent as before: READ
    COMMITTED takes a snapshot per statement anyway."""
    if read_only and engine.dialect.name == "postgresql":
        engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    options: dict[str, Any] = {}
    if sync_session_class is not None:
        options["sync_session_class"] = sync_session_class
    # expire_on_commit=False: returning a committed row must not trigger a reload query.
    return async_sessionmaker(
        engine,
        class_=BudgetedSession,
        info=info,
        expire_on_commit=False,
        database_budget_seconds=settings.request_database_budget_seconds,
        **options,
    )


SelectT = TypeVar("SelectT", bound=Select[*tuple[Any, ...]])


async def lock_for_update(
    db: AsyncSession,
    statement: SelectT,
    *,
    table: type[SQLModel],
    key_share: bool = False,
) -> SelectT:
    """`statement`, made to lock the rows of `table` it reads until the transaction ends.

    PostgreSQL: FOR UPDATE of those rows (FOR KEY SHARE with `key_share`: enough to keep
    a row from being deleted, and no wait for another transaction's plain UPDATE of it).
    SQLite ignores FOR UPDATE and begins a transaction only at its first write: an
    UPDATE that matches no row takes its single write lock, for the whole database, at
    once, and the statement is read unchanged.
    """
    if db.get_bind().dialect.name == "sqlite":
        primary_key = table.__table__.c.id  # type: ignore[attr-defined]
        await db.exec(update(table).where(false()).values({primary_key: primary_key}))
        return statement
    of = table.__table__  # type: ignore[attr-defined]
    return statement.with_for_update(of=of, key_share=key_share)


async def release_connection(db: AsyncSession) -> None:
    """End the session's read-only transaction, returning its pooled connection, before
    a wait that does not need it (a password hash takes hundreds of milliseconds): a
    burst of logins holding connections "idle in transaction" would starve every other
    request of the pool. Rows already loaded stay usable (expire_on_commit is off); the
    next statement opens a new, short transaction."""
    await db.commit()
