"""The PostgreSQL connection pool serves waiting requests in the order they came, and
loses no connection when a wait ends just as one is handed over (backend/db.py)."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from backend.db.engine import create_engine
from tests.helpers import make_settings

WAIT_SECONDS = 0.05


@pytest.fixture
async def one_connection(database_url: str) -> AsyncIterator[AsyncEngine]:
    settings = make_settings(
        database_url, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT_SECONDS=1.0
    )
    if settings.is_sqlite:
        pytest.skip("SQLite's pool does not queue requests")
    engine = create_engine(settings)
    yield engine
    await engine.dispose()


async def test_a_waiting_request_gets_the_connection_before_a_newcomer(
    one_connection: AsyncEngine,
) -> None:
    order: list[str] = []

    async def wait_for_a_connection() -> None:
        async with one_connection.connect():
            order.append("waiting")

    holder = await one_connection.connect()
    waiting = asyncio.create_task(wait_for_a_connection())
    await asyncio.sleep(WAIT_SECONDS)  # it is waiting in the pool now
    # Return the connection and ask for it again at once, before the waiter has run:
    # an asyncio.Queue would give it back to this newcomer.
    await holder.close()
    async with one_connection.connect():
        order.append("newcomer")
    await waiting
    assert order == ["waiting", "newcomer"]


async def test_a_connection_handed_to_a_cancelled_waiter_is_passed_on(
    one_connection: AsyncEngine,
) -> None:
    async def connect() -> AsyncConnection:
        return await one_connection.connect()

    holder = await one_connection.connect()
    waiting = asyncio.create_task(connect())
    await asyncio.sleep(WAIT_SECONDS)
    await holder.close()  # hands the connection to the waiter...
    waiting.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiting
    async with asyncio.timeout(0.5):  # not the pool's 1 s timeout: the connection is back
        async with one_connection.connect() as connection:
            assert connection.closed is False
