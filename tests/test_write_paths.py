"""Every request that changes state does it in one transaction, and none holds a pooled
database connection while it waits for a password hash (issue 16, items 1 and 2).

Faults are injected in the real database: a trigger that refuses the last row a write
path inserts, so that the steps before it must be undone with it.
"""

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import SQLModel

from backend import crud
from backend.auth.passwords import PasswordHasher
from backend.main import create_app
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    USER_PASSWORD,
    bearer,
    login,
    make_settings,
)

NEW_PASSWORD = "Brand-New-Password-2"


@asynccontextmanager
async def refused_inserts(engine: AsyncEngine, table: str) -> AsyncIterator[None]:
    """While open, every INSERT into `table` fails inside the database."""
    async with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            await connection.execute(
                text(
                    f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
                    "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
                )
            )
        else:
            await connection.execute(
                text(
                    "CREATE FUNCTION refuse_insert() RETURNS trigger LANGUAGE plpgsql "
                    "AS $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$"
                )
            )
            await connection.execute(
                text(
                    f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_insert()"
                )
            )
    try:
        yield
    finally:
        async with engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                await connection.execute(text(f"DROP TRIGGER refuse_{table}"))
            else:
                await connection.execute(text(f"DROP TRIGGER refuse_{table} ON {table}"))
                await connection.execute(text("DROP FUNCTION refuse_insert()"))


async def user_count(client: httpx.AsyncClient, headers: dict[str, str], email: str) -> int:
    response = await client.get(f"{API}/users", params={"email": email}, headers=headers)
    assert response.status_code == 200, response.text
    return int(response.headers["X-Total-Count"])


async def test_a_registration_whose_token_fails_leaves_no_account(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    body = {"email": "atomic@example.com", "name": "Atomic", "password": USER_PASSWORD}
    async with refused_inserts(app.state.runtime.engine, "refresh_tokens"):
        failed = await client.post(f"{API}/auth/register", json=body)
    assert failed.status_code == 500
    assert await user_count(client, admin_headers, "atomic@example.com") == 0
    # The client's retry succeeds: its email was not taken by the failed attempt.
    retried = await client.post(f"{API}/auth/register", json=body)
    assert retried.status_code == 200, retried.text


async def test_a_login_whose_token_fails_keeps_the_old_hash(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    runtime = app.state.runtime
    runtime.password_hasher = PasswordHasher(rounds=5, concurrency=1, queue_limit=4)
    async with refused_inserts(runtime.engine, "refresh_tokens"):
        failed = await client.post(
            f"{API}/auth/login", data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )
    assert failed.status_code == 500
    async with runtime.sessionmaker() as db:
        admin = await crud.get_user_by_email(db, email=ADMIN_EMAIL)
    assert admin is not None
    # The rehash to the new rounds was undone with the token row it came with.
    assert admin.hashed_password.startswith("$2b$04$")


async def test_a_password_change_whose_token_fails_keeps_the_old_password(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    headers = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
    change = {"current_password": ADMIN_PASSWORD, "new_password": NEW_PASSWORD}
    async with refused_inserts(app.state.runtime.engine, "refresh_tokens"):
        failed = await client.post(f"{API}/users/me/password", json=change, headers=headers)
    assert failed.status_code == 500
    assert (await client.get(f"{API}/users/me", headers=headers)).status_code == 200
    await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)


async def test_an_admin_create_whose_audit_event_fails_leaves_no_account(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    body = {"email": "audited@example.com", "name": "Audited", "password": USER_PASSWORD}
    async with refused_inserts(app.state.runtime.engine, "audit_events"):
        failed = await client.post(f"{API}/users", json=body, headers=admin_headers)
    assert failed.status_code == 500
    assert await user_count(client, admin_headers, "audited@example.com") == 0


class GatedHasher(PasswordHasher):
    """Holds every hash until `expected` verifications are waiting, then records how many
    pooled connections are checked out at that moment, when no request runs SQL."""

    def __init__(self, engine: AsyncEngine, expected: int) -> None:
        super().__init__(rounds=4, concurrency=1, queue_limit=expected)
        self.pool = engine.sync_engine.pool
        self.expected = expected
        self.waiting = 0
        self.all_waiting = asyncio.Event()
        self.release = threading.Event()
        self.checked_out_while_waiting: int | None = None

    async def verify(
        self, password: str, hashed_password: str | None, *, account: str = ""
    ) -> tuple[bool, str | None]:
        self.waiting += 1
        if self.waiting == self.expected:
            self.checked_out_while_waiting = self.pool.checkedout()  # type: ignore[attr-defined]
            self.all_waiting.set()
        return await super().verify(password, hashed_password, account=account)

    def _verify(
        self, password: str, hashed_password: str | None, dummy_cost: int
    ) -> tuple[bool, str | None]:
        self.release.wait(timeout=30)
        return super()._verify(password, hashed_password, dummy_cost)


async def test_logins_waiting_for_a_hash_hold_no_connection_and_reads_go_on(
    database_url: str,
) -> None:
    # A pool of two: before the fix, two logins queued for the hasher held it all.
    settings = make_settings(
        database_url, DB_POOL_SIZE=2, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT_SECONDS=2
    )
    app = create_app(settings)
    logins = 8
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
            hasher = GatedHasher(runtime.engine, expected=logins)
            runtime.password_hasher = hasher
            form = {"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
            burst = [
                asyncio.create_task(client.post(f"{API}/auth/login", data=form))
                for _ in range(logins)
            ]
            try:
                await asyncio.wait_for(hasher.all_waiting.wait(), timeout=10)
                assert hasher.checked_out_while_waiting == 0
                # Every login is waiting for the hasher; reads still get connections.
                reads = [client.get(f"{API}/users/me", headers=headers) for _ in range(4)]
                for read in await asyncio.gather(*reads):
                    assert read.status_code == 200, read.text
            finally:
                hasher.release.set()
                responses = await asyncio.gather(*burst)
                hasher.close()
        async with runtime.engine.begin() as connection:
            for table in reversed(SQLModel.metadata.sorted_tables):
                await connection.execute(table.delete())
    assert [response.status_code for response in responses] == [200] * logins
