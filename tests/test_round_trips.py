"""What a request costs PostgreSQL beyond its own statements: reads run without a
transaction (no BEGIN and ROLLBACK round trips), and every statement is planned with
its values, however often it ran before (see backend/db.py)."""

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from backend.config import Settings
from backend.http.deps import DbSession

PROBE_PATH = "/test-only/transaction-probe"
SNAPSHOT_GAP_SECONDS = 0.01


def add_probe_route(app: FastAPI) -> None:
    """A route that asks PostgreSQL, twice, when the current transaction started: the
    same instant both times inside one transaction, two instants when each statement is
    a transaction of its own."""

    async def probe(db: DbSession) -> dict[str, object]:
        first = (await db.exec(text("SELECT now()"))).scalar_one()  # type: ignore[call-overload]
        await asyncio.sleep(SNAPSHOT_GAP_SECONDS)
        second = (await db.exec(text("SELECT now()"))).scalar_one()  # type: ignore[call-overload]
        plan = (await db.exec(text("SHOW plan_cache_mode"))).scalar_one()  # type: ignore[call-overload]
        return {"one_transaction": first == second, "plan_cache_mode": plan}

    app.add_api_route(PROBE_PATH, probe, methods=["GET", "POST"], include_in_schema=False)


@pytest.fixture
def postgresql_only(settings: Settings) -> None:
    if settings.is_sqlite:
        pytest.skip("SQLite has no round trips, nor a transaction start time to ask for")


@pytest.mark.usefixtures("postgresql_only")
async def test_reads_run_without_a_transaction_and_writes_in_one(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    add_probe_route(app)
    # In turn, on the same pooled connections: a read's AUTOCOMMIT ends with its checkout.
    for _ in range(3):
        read = await client.get(PROBE_PATH)
        write = await client.post(PROBE_PATH)
        assert read.status_code == write.status_code == 200
        assert read.json()["one_transaction"] is False
        assert write.json()["one_transaction"] is True


@pytest.mark.usefixtures("postgresql_only")
async def test_every_connection_plans_statements_with_their_values(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    add_probe_route(app)
    for method in ("GET", "POST"):
        response = await client.request(method, PROBE_PATH)
        assert response.json()["plan_cache_mode"] == "force_custom_plan"
