"""Liveness and readiness probes."""

import httpx

from backend.config import Settings
from backend.main import create_app
from tests.helpers import API, running


async def test_health_touches_nothing(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_checks_the_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}}


async def test_ready_is_503_when_the_database_is_unreachable(settings: Settings) -> None:
    unreachable = settings.model_copy(
        update={
            "DATABASE_URL": "postgresql://nobody:nothing@127.0.0.1:9/none",
            "FIRST_ADMIN_EMAIL": None,
        }
    )
    async with running(create_app(unreachable)) as client:
        ready = await client.get("/health/ready")
        live = await client.get("/health")
        login = await client.post(
            f"{API}/auth/login", data={"username": "a@example.com", "password": "x"}
        )
    assert live.status_code == 200
    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/problem+json"
    assert ready.headers["retry-after"]
    assert login.status_code == 503
