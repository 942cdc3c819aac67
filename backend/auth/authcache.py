"""The per-request check without a query: each worker remembers the user's row and the
session's row that checking a token read, and forgets them as soon as either changes.

What a hit saves is the whole database round trip of an authenticated request that
needs nothing else (GET /users/me): the pool checkout, BEGIN, the query, ROLLBACK.

Forgetting, on PostgreSQL only (SQLite has no way to hear of another process's writes,
and the CLI writes from another process, so the cache is off there: see `AuthCache`):
- in the worker that writes: the sessions of the app note every user whose row, or one
  of whose sessions' rows, their transaction writes (`TrackedSession`, through SQLAlchemy's
  events, so no write path can forget it), and drop those users' entries when the
  transaction ends, before the response goes out;
- everywhere else: a trigger (migration a7c4e1f20b9d) notifies CHANNEL with the user's
  id in the writer's transaction, so on commit, whoever wrote (another worker or host,
  the CLI, psql), and each worker's listener drops that user's entries.

The listener runs in its own thread, on its own event loop: on the app's loop, a
saturated worker (32 clients) answered its pings so late that a third of the checks
went to the database (bench/README.md); a thread needs only the GIL, which the
interpreter hands over every 5 ms.

Failing safe. A hit is served only while the listener's connection answered a ping
sent at most FRESH_SECONDS ago. PostgreSQL delivers a notification committed before a
ping was read ahead of the ping's answer, so a cached row is never served more than
FRESH_SECONDS after a change committed elsewhere, even when the connection dies without
a word (a partition); while it is down nothing is served from the cache, and after
reconnecting the cache starts empty, since notifications sent meanwhile are lost.
Entries also expire after AUTH_CACHE_SECONDS, a backstop for a write no trigger sees
(a restore with triggers disabled, session_replication_role=replica).

A look-up that raced a change must not store what it read before the change: every
drop bumps `_epoch`, and a row read is stored only if no drop happened since its query
was sent.
"""

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import BinaryExpression, BindParameter, Column, event, inspect
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import ORMExecuteState, SessionTransaction, make_transient_to_detached
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BooleanClauseList, ColumnElement, TextClause
from sqlmodel import Session as SQLModelSession
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.auth.models import UserSession
from backend.config import Settings
from backend.db.session import create_sessionmaker
from backend.http.observability import Metrics
from backend.models import User

logger = logging.getLogger(__name__)

CHANNEL = "auth_cache"  # the migration's trigger notifies this
PING_SECONDS = 0.02
# No check for this long, and the pings pause until checks come in again (the first
# ones query): an idle worker does not ping PostgreSQL 50 times a second.
# Notifications still arrive.
IDLE_SECONDS = 1.0
IDLE_POLL_SECONDS = 0.05
# Revocation reaches every other worker within this (the bound is 100 ms): a hit needs
# a ping answered that was sent at most this long ago.
FRESH_SECONDS = 0.08
RECONNECT_SECONDS = 0.5
LISTENER_NAME = "auth-cache-listener"  # its application_name in pg_stat_activity
# Bounds memory (~2 KB each): past it, the user cached longest ago is dropped.
MAX_ENTRIES = 4096
EVERYONE = "*"  # a TRUNCATE's payload: drop everything

Model = TypeVar("Model", User, UserSession)


@dataclass(frozen=True, slots=True)
class _Entry:
    user: dict[str, Any]
    user_session: dict[str, Any]
    stored_at: float


class AuthCache:
    """Cached token checks of one worker; inert unless enabled (PostgreSQL, and
    AUTH_CACHE_SECONDS above 0)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._hits = metrics.auth_checks.labels(source="cache")
        self._misses = metrics.auth_checks.labels(source="database")
        self._listening = metrics.auth_cache_listening
        # Behind a transaction pooler LISTEN needs a connection of its own to PostgreSQL.
        self._dsn = settings.AUTH_CACHE_LISTEN_URL or settings.DATABASE_URL
        self.enabled = (
            not settings.is_sqlite
            and settings.AUTH_CACHE_SECONDS > 0
            and (settings.AUTH_CACHE_LISTEN_URL is not None or not settings.DB_TRANSACTION_POOLER)
        )
        self._ttl = settings.AUTH_CACHE_SECONDS
        self._connect_timeout = settings.connect_timeout_seconds
        self._entries: dict[int, dict[str, _Entry]] = {}  # user id -> session id -> rows
        self._count = 0
        self._epoch = 0
        # The listener's thread drops entries while the app's loop reads and stores them.
        self._lock = threading.Lock()
        self._confirmed_at = -math.inf  # when the last answered ping was sent
        self._checked_at = -math.inf  # the latest check, cached or not
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._listener: tuple[asyncio.AbstractEventLoop, asyncio.Task[None]] | None = None

    def start(self) -> None:
        """Start listening, in the background: until the listener is confirmed, every
        check queries the database, as without a cache."""
        if self.enabled:
            self._thread = threading.Thread(
                target=asyncio.run,
                args=(self._listen_until_closed(),),
                name=LISTENER_NAME,
                daemon=True,  # a worker that never ran its shutdown still exits
            )
            self._thread.start()

    async def close(self) -> None:
        if self._thread is not None:
            self._closing.set()
            if self._listener is not None:
                loop, task = self._listener
                loop.call_soon_threadsafe(task.cancel)
            await asyncio.to_thread(self._thread.join)
        self._drop_everything()

    async def read(
        self,
        user_id: int,
        session_id: str | None,
        load: Callable[[], Awaitable[tuple[User | None, UserSession | None]]],
    ) -> tuple[User | None, UserSession | None]:
        """The user's row and the session's, from the cache when it may answer, else
        from `load` (the query), stored for the next time. Each call gets its own
        detached instances: a handler may change them as it could a loaded row."""
        now = time.monotonic()
        self._checked_at = now
        fresh = self.enabled and now - self._confirmed_at <= FRESH_SECONDS
        if fresh and session_id is not None:
            entry = self._entries.get(user_id, {}).get(session_id)
            if entry is not None and now - entry.stored_at <= self._ttl:
                self._hits.inc()
                return _detached(User, entry.user), _detached(UserSession, entry.user_session)
        epoch = self._epoch
        self._misses.inc()
        user, user_session = await load()
        if fresh and user is not None and user_session is not None:
            entry = _Entry(_row(user), _row(user_session), time.monotonic())
            with self._lock:
                if epoch == self._epoch:
                    self._store(user_id, user_session.id, entry)
        return user, user_session

    def forget(self, user_ids: Iterable[int] | None) -> None:
        """Drop these users' entries; None: everyone's."""
        if user_ids is None:
            self._drop_everything()
            return
        with self._lock:
            self._epoch += 1
            for user_id in user_ids:
                self._count -= len(self._entries.pop(user_id, ()))

    def _drop_everything(self) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.clear()
            self._count = 0

    def _store(self, user_id: int, session_id: str, entry: _Entry) -> None:
        """Under the lock."""
        if self._count >= MAX_ENTRIES:  # an eviction, not a change: the epoch stays
            self._count -= len(self._entries.pop(next(iter(self._entries))))
        sessions = self._entries.setdefault(user_id, {})
        self._count += session_id not in sessions
        sessions[session_id] = entry

    async def _listen_until_closed(self) -> None:
        """The listener thread's whole life, on its own event loop."""
        task = asyncio.current_task()
        assert task is not None
        self._listener = (asyncio.get_running_loop(), task)
        if self._closing.is_set():  # closed before this thread got going
            return
        with contextlib.suppress(asyncio.CancelledError):  # closed: asyncio.run ends here
            await self._listen()

    async def _listen(self) -> None:
        """Hold the listening connection, reconnecting after a drop, and ping it."""
        lost_logged = False
        while True:
            try:
                connection = await asyncpg.connect(
                    _plain_dsn(self._dsn),
                    timeout=self._connect_timeout,
                    server_settings={"application_name": LISTENER_NAME},
                )
            except Exception as error:  # an outage, or a bug: off until the next attempt
                if not lost_logged:
                    logger.warning("auth cache off: cannot listen for changes: %r", error)
                    lost_logged = True
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            try:
                await connection.add_listener(CHANNEL, self._notified)
                self._drop_everything()  # what changed while nobody listened
                if lost_logged:
                    logger.warning("auth cache on again: listening for changes")
                    lost_logged = False
                self._listening.set(1)
                while True:
                    sent = time.monotonic()
                    # A slow answer (a busy loop) only pauses the cache; no answer drops it.
                    await connection.execute("SELECT 1", timeout=self._connect_timeout)
                    self._confirmed_at = sent
                    await asyncio.sleep(PING_SECONDS)
                    # Polled: the checks that end the pause run on the app's loop.
                    while time.monotonic() - self._checked_at > IDLE_SECONDS:  # noqa: ASYNC110
                        await asyncio.sleep(IDLE_POLL_SECONDS)
            except Exception as error:
                logger.warning("auth cache off: lost the listening connection: %r", error)
                lost_logged = True
            finally:
                self._listening.set(0)
                self._confirmed_at = -math.inf
                self._drop_everything()
                connection.terminate()
            await asyncio.sleep(RECONNECT_SECONDS)

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        self.forget(None if payload == EVERYONE else [int(payload)])


def _plain_dsn(database_url: str) -> str:
    """asyncpg takes libpq's URL (sslmode included) but not SQLAlchemy's driver names."""
    scheme, rest = database_url.split("://", 1)
    return f"postgresql://{rest}" if scheme.startswith("postgres") else database_url


def _row(instance: User | UserSession) -> dict[str, Any]:
    return {
        attribute.key: getattr(instance, attribute.key) for attribute in _columns(type(instance))
    }


def _columns(model: type[User] | type[UserSession]) -> Any:
    return inspect(model).column_attrs


def _detached(model: type[Model], values: dict[str, Any]) -> Model:
    """An instance as the ORM loads one (15 µs, where the constructor takes 43), made
    detached: a session it is added to updates the row, never inserts it again."""
    instance: Model = inspect(model).class_manager.new_instance()
    instance.__dict__.update(values)
    make_transient_to_detached(instance)
    return instance


# --- the writer's own worker: which users a transaction's writes touch -----------------

AUTH_CACHE = "auth_cache"  # in the session's info: the AuthCache to tell
WRITTEN = "auth_cache_written"  # in the session's info: user ids, or None for everyone
USER_COLUMN = {"users": "id", "sessions": "user_id"}


class TrackedSession(SQLModelSession):
    """The app's sessions: each notes whose auth rows its transaction writes and tells
    the AuthCache in its info when the transaction ends, committed or not (forgetting
    too much costs a query; too little would serve a revoked token)."""


def _note(db: OrmSession, user_ids: set[int] | None) -> None:
    if AUTH_CACHE not in db.info:
        return
    written = db.info.get(WRITTEN, set())
    db.info[WRITTEN] = None if written is None or user_ids is None else written | user_ids


def _note_flush(db: OrmSession, _context: Any) -> None:
    """Rows the unit of work changed or deleted (inserts change no cached row)."""
    user_ids = {
        instance.id if isinstance(instance, User) else instance.user_id
        for instance in (*db.dirty, *db.deleted)
        if isinstance(instance, (User, UserSession))
    }
    if user_ids:
        _note(db, {user_id for user_id in user_ids if user_id is not None})


def _note_statement(state: ORMExecuteState) -> None:
    """UPDATE and DELETE statements on users or sessions; SQL text, unless a SELECT."""
    if isinstance(state.statement, TextClause):
        if not state.statement.text.lstrip().upper().startswith("SELECT"):
            _note(state.session, None)
        return
    if not (state.is_update or state.is_delete):
        return
    table = getattr(getattr(state.statement, "table", None), "name", "")
    if table in USER_COLUMN:
        where = state.statement.whereclause  # type: ignore[attr-defined]
        _note(state.session, _user_ids_in(where, table, USER_COLUMN[table]))


def _user_ids_in(where: ColumnElement[bool] | None, table: str, column: str) -> set[int] | None:
    """The user id an `AND` of conditions pins down (`users.id = 7`), or None when it
    does not pin one down (then everyone's entries are dropped)."""
    conditions = (
        where.clauses
        if isinstance(where, BooleanClauseList) and where.operator is operators.and_
        else [where]
    )
    for condition in conditions:
        if (
            isinstance(condition, BinaryExpression)
            and condition.operator is operators.eq
            and isinstance(condition.left, Column)
            and condition.left.name == column
            and getattr(condition.left.table, "name", None) == table
            and isinstance(condition.right, BindParameter)
        ):
            return {int(condition.right.effective_value)}  # type: ignore[arg-type]
    return None


def _tell(db: OrmSession, transaction: SessionTransaction) -> None:
    if transaction.parent is not None or WRITTEN not in db.info:
        return
    written = db.info.pop(WRITTEN)
    db.info[AUTH_CACHE].forget(written)


def tracked_sessionmaker(
    engine: AsyncEngine, settings: Settings, *, auth_cache: AuthCache, read_only: bool = False
) -> async_sessionmaker[AsyncSession]:
    """The app's sessionmakers: budgeted db sessions whose writes reach `auth_cache`."""
    return create_sessionmaker(
        engine,
        settings,
        read_only=read_only,
        sync_session_class=TrackedSession,
        info={AUTH_CACHE: auth_cache},
    )


event.listen(TrackedSession, "after_flush", _note_flush)
event.listen(TrackedSession, "do_orm_execute", _note_statement)
event.listen(TrackedSession, "after_transaction_end", _tell)
