"""A database behind the migrations: not ready, a 503 problem where a request would
touch what is missing (never a 500), and start-up stops in one line where it must write."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from backend.db.engine import DatabaseStartupError, create_engine
from backend.db.migrate import alembic_config, newest_revision, upgrade_to_head
from backend.main import create_app
from tests.helpers import ADMIN_EMAIL, API, USER_PASSWORD, make_settings, running
from tests.postgres import Server, session_database

REGISTER = {"email": "new@example.com", "name": "New", "password": USER_PASSWORD}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database no migration has touched."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server: Server = request.getfixturevalue("postgres")
    with session_database(server) as url:
        yield url


def test_the_newest_revision_is_alembics_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert heads == [newest_revision()]


async def test_an_empty_database_is_not_ready_and_requests_get_503s(empty_database: str) -> None:
    settings = make_settings(empty_database, FIRST_ADMIN_EMAIL=None, FIRST_ADMIN_PASSWORD=None)
    async with running(create_app(settings)) as client:
        assert (await client.get("/health")).status_code == 200  # alive all the same
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["code"] == "database_not_migrated"
        assert "backend migrate" in ready.json()["detail"]
        assert "revision none" in ready.json()["detail"]
        login = await client.post(
            f"{API}/auth/login", data={"username": ADMIN_EMAIL, "password": USER_PASSWORD}
        )
        registered = await client.post(f"{API}/auth/register", json=REGISTER)
        for answer in (login, registered):
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] == "database_not_migrated"
            assert "retry-after" in answer.headers


def _one_step_back(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, "-1")


async def test_a_database_one_migration_behind_is_not_ready(empty_database: str) -> None:
    settings = make_settings(empty_database, FIRST_ADMIN_EMAIL=None, FIRST_ADMIN_PASSWORD=None)
    await upgrade_to_head(settings)
    engine = create_engine(settings)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_one_step_back)
    finally:
        await engine.dispose()
    async with running(create_app(settings)) as client:
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["code"] == "database_not_migrated"
        assert f"the newest is {newest_revision()}" in ready.json()["detail"]
    await upgrade_to_head(settings)
    async with running(create_app(settings)) as client:
        assert (await client.get("/health/ready")).status_code == 200


async def test_a_first_admin_on_an_empty_database_stops_start_up_in_one_line(
    empty_database: str,
) -> None:
    app = create_app(make_settings(empty_database))
    with pytest.raises(DatabaseStartupError) as stopped:
        async with running(app):
            pass
    message = str(stopped.value)
    assert "\n" not in message
    assert message.startswith("FIRST_ADMIN_EMAIL: cannot create the first admin")
    assert "backend migrate" in message


def test_start_up_on_an_empty_database_without_a_first_admin_warns(
    empty_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(empty_database, FIRST_ADMIN_EMAIL=None, FIRST_ADMIN_PASSWORD=None)

    async def start() -> None:
        async with running(create_app(settings)):
            pass

    asyncio.run(start())
    assert any("/health/ready answers 503" in record.message for record in caplog.records)
