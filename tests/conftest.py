"""Every test that takes `client` runs twice: on a SQLite file and on a real PostgreSQL.

PostgreSQL is the server tests/postgres.py picks (TEST_POSTGRES_URL, the default address,
or an embedded server started for the session), in a database made for this session.
"""

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import asdict
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import SQLModel

from backend.clock import Clock
from backend.clock import clock as app_clock
from backend.config import Settings
from backend.db.migrate import upgrade_to_head
from backend.main import create_app
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    CHECKED,
    USER_PASSWORD,
    RegisterUser,
    bearer,
    login,
    make_settings,
)
from tests.postgres import (
    Choice,
    ConfiguredServerError,
    Server,
    choose_server,
    embedded_server,
    embedded_unavailable,
    session_database,
    without_postgres,
)
from tests.services import EMBEDDED_POSTGRES, require, summary_lines
from tests.smtp import Mailbox, smtp_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` (pyproject's addopts): one worker per core, but none for a single file,
    where starting workers (each imports the app) costs more than it saves."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    files = {arg.split("::")[0] for arg in config.args}
    if len(files) == 1 and files.pop().endswith(".py"):
        return 0
    return os.cpu_count() or 1


CHOICE = pytest.StashKey[Choice]()
SERVER = pytest.StashKey[Server | None]()
STOPS = pytest.StashKey[ExitStack]()
USED = pytest.StashKey[bool]()  # whether any test used the PostgreSQL server


def _worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)  # before the header is written and xdist starts its workers
def pytest_sessionstart(session: pytest.Session) -> None:
    """Decide once per run which PostgreSQL the second half runs on; start the embedded
    server here when it is the one, shared by every xdist worker, stopped at the run's end.
    A TEST_POSTGRES_URL that does not work stops the run with one line, before any test."""
    config = session.config
    if _worker(config):  # the controller decided: workers take its server
        shared = config.workerinput["postgres"]  # type: ignore[attr-defined]
        config.stash[CHOICE] = Choice(**shared["choice"])
        config.stash[SERVER] = Server(**shared["server"]) if shared["server"] else None
        return
    configured = os.environ.get("TEST_POSTGRES_URL")
    try:
        choice = choose_server(configured, embedded_ready=embedded_unavailable())
    except ConfiguredServerError as error:
        raise pytest.UsageError(str(error)) from None
    server: Server | None = None
    if choice.url:
        server = Server(choice.url, choice.description)
    elif choice.embedded:
        config.stash[STOPS] = stops = ExitStack()
        try:
            server = stops.enter_context(embedded_server())
        except Exception as error:
            stops.close()
            problem = f"the embedded server did not start: {type(error).__name__}: {error}"
            if configured is not None:
                raise pytest.UsageError(f"TEST_POSTGRES_URL is set but empty: {problem}") from None
            passed_over = choice.passed_over
            problem = f"the default address is not usable ({passed_over}) and {problem}"
            choice = without_postgres(problem, passed_over)
    if choice.problem and os.environ.get("CI"):  # CI runs every test: one line, no test
        raise pytest.UsageError(choice.note)
    config.stash[CHOICE] = choice
    config.stash[SERVER] = server


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook
def pytest_configure_node(node: Any) -> None:
    server = node.config.stash.get(SERVER, None)
    node.workerinput["postgres"] = {
        "choice": asdict(node.config.stash[CHOICE]),
        "server": asdict(server) if server else None,
    }


def pytest_unconfigure(config: pytest.Config) -> None:
    stops = config.stash.get(STOPS, None)
    if stops is not None:
        stops.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    choice = config.stash.get(CHOICE, None)
    return [choice.note] if choice and choice.note else []


@pytest.fixture(scope="session")
def postgres(pytestconfig: pytest.Config) -> Server:
    """The PostgreSQL server of this run, decided at its start (see pytest_sessionstart)."""
    server = pytestconfig.stash[SERVER]
    if server is None:
        require(EMBEDDED_POSTGRES, pytestconfig.stash[CHOICE].problem)
    pytestconfig.stash[USED] = True
    if _worker(pytestconfig):  # for the controller's closing summary
        pytestconfig.workeroutput["postgres_used"] = True  # type: ignore[attr-defined]
    return server


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook, in the controller
def pytest_testnodedown(node: Any, error: object) -> None:
    if getattr(node, "workeroutput", {}).get("postgres_used"):
        node.config.stash[USED] = True


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A freshly migrated database for this test session, dropped at its end."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        asyncio.run(upgrade_to_head(make_settings(url)))
        yield url
        return
    server: Server = request.getfixturevalue("postgres")
    with session_database(server) as url:
        asyncio.run(upgrade_to_head(make_settings(url)))
        yield url


@pytest.fixture
def clock() -> Iterator[Clock]:
    """The app's clock, for a test to move forward (`clock.offset += timedelta(days=1)`):
    token expiry, session lifetimes and every timestamp follow it."""
    yield app_clock
    app_clock.offset = timedelta(0)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


# The OpenAPI document of an app made with these settings (the database aside), shared by
# the apps of later tests: building it took 0.13 s of CPU per test (the request log's
# first request asks for it), about a fifth of the run. Same settings, same routes, same
# document; tests that build their own apps still build their own.
OPENAPI: dict[str, dict[str, Any]] = {}


def _share_openapi(application: FastAPI, settings: Settings) -> None:
    key = repr(sorted(settings.model_dump(exclude={"DATABASE_URL"}).items()))
    if key in OPENAPI:
        application.openapi_schema = OPENAPI[key]
    else:
        OPENAPI[key] = application.openapi()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    _share_openapi(application, settings)
    async with application.router.lifespan_context(application):
        yield application
        async with application.state.runtime.engine.begin() as connection:
            for table in reversed(SQLModel.metadata.sorted_tables):
                await connection.execute(table.delete())


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", event_hooks=CHECKED
    ) as client:
        yield client


@pytest.fixture
async def admin_headers(client: httpx.AsyncClient) -> dict[str, str]:
    return bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])


@pytest.fixture
def register(client: httpx.AsyncClient) -> RegisterUser:
    """Register a user; returns the LoginResponse body."""

    async def register_user(
        email: str = "user@example.com", name: str = "Plain User", password: str = USER_PASSWORD
    ) -> dict[str, Any]:
        response = await client.post(
            f"{API}/auth/register", json={"email": email, "name": name, "password": password}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    return register_user


@pytest.fixture
async def user_headers(register: RegisterUser) -> dict[str, str]:
    return bearer((await register())["access_token"])


@pytest.fixture
def smtp() -> Iterator[Mailbox]:
    """A real SMTP server (aiosmtpd) for this test; its mailbox lists what it received."""
    with smtp_server() as mailbox:
        yield mailbox


@pytest.hookimpl(trylast=True)  # after the coverage report: the closing lines
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    lines = []
    server = config.stash.get(SERVER, None)
    if server is not None and config.stash.get(USED, False):
        started = f", started in {server.start_seconds:.1f} s" if server.start_seconds else ""
        passed_over = config.stash[CHOICE].passed_over
        why = f"; the default address was not usable: {passed_over}" if passed_over else ""
        lines.append(f"PostgreSQL tests ran on {server.description}{started}{why}")
    lines += summary_lines(terminalreporter.stats.get("skipped", []))
    if lines:
        terminalreporter.write_sep("=", "runtime")
        for line in lines:
            terminalreporter.write_line(line)
