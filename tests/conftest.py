"""Every test that takes `client` runs twice: on a SQLite file and on a real PostgreSQL.

PostgreSQL is the server tests/postgres.py picks (TEST_POSTGRES_URL, the default address,
or an embedded server started for the session), in a database made for this session.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
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
from tests.postgres import Server, postgres_server, session_database
from tests.services import EMBEDDED_POSTGRES, require, summary_lines
from tests.smtp import Mailbox, smtp_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


SERVICE_NOTES: list[str] = []  # what the closing summary says about the runtime used


@pytest.fixture(scope="session")
def postgres() -> Iterator[Server]:
    """The PostgreSQL server of this session; started here when it is the embedded one."""
    try:
        with postgres_server() as server:
            started = f", started in {server.start_seconds:.1f} s" if server.start_seconds else ""
            SERVICE_NOTES.append(f"PostgreSQL tests ran on {server.description}{started}")
            yield server
    except ImportError as error:
        require(EMBEDDED_POSTGRES, f"no server at the default address and {error}")


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


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
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
    lines = SERVICE_NOTES + summary_lines(terminalreporter.stats.get("skipped", []))
    if lines:
        terminalreporter.write_sep("=", "runtime")
        for line in lines:
            terminalreporter.write_line(line)
