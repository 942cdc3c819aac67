"""Every test that takes `client` runs twice: on a SQLite file and on a real PostgreSQL.

PostgreSQL comes from TEST_POSTGRES_URL (default: the role and database that .ci/run
creates). Outside CI an unreachable server skips those tests; in CI it fails them.
"""

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlmodel import SQLModel

from backend.config import Settings
from backend.db import create_engine, upgrade_to_head
from backend.main import create_app
from backend.models import Clock
from backend.models import clock as app_clock

DEFAULT_POSTGRES_URL = "postgresql://backend_test:backend_test@127.0.0.1:5432/backend_test"
TEST_SECRET_KEY = "test-secret-key-that-is-long-enough-for-hs256"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "Admin-Password-1"
USER_PASSWORD = "User-Password-1"

API = "/api/v1"
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "DATABASE_URL": database_url,
        "SECRET_KEY": TEST_SECRET_KEY,
        "STAGE": "test",
        "BCRYPT_ROUNDS": 4,
        "AUTO_MIGRATE": False,
        "FIRST_ADMIN_EMAIL": ADMIN_EMAIL,
        "FIRST_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "CORS_ORIGINS": ["https://dashboard.example.com"],
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


async def _reset_postgres_schema(url: str) -> None:
    engine = create_engine(make_settings(url))
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DROP SCHEMA public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()
    await upgrade_to_head(make_settings(url))


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A freshly migrated database for this test session."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        asyncio.run(upgrade_to_head(make_settings(url)))
        return url
    url = os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    try:
        asyncio.run(_reset_postgres_schema(url))
    except OSError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL at {url} is not reachable: {error}")
    return url


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
        async with application.state.services.engine.begin() as connection:
            for table in reversed(SQLModel.metadata.sorted_tables):
                await connection.execute(table.delete())


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def login(client: httpx.AsyncClient, email: str, password: str) -> dict[str, Any]:
    response = await client.post(
        f"{API}/auth/login", data={"username": email, "password": password}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def admin_headers(client: httpx.AsyncClient) -> dict[str, str]:
    return bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])


RegisterUser = Callable[..., Awaitable[dict[str, Any]]]


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
