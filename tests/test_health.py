"""Liveness and readiness probes."""

import httpx

from backend.config import Settings
from backend.main import create_app
from backend.routers.health import live
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


async def test_liveness_answered_ahead_of_the_router_is_the_routes_answer(
    client: httpx.AsyncClient,
) -> None:
    """LivenessMiddleware answers GET /health before routing: the same body the
    documented route gives, with every header the other layers add."""
    assert (await live()).model_dump_json(exclude_none=True) == '{"status":"ok"}'
    for path in ("/health", "/health/"):
        response = await client.get(path, headers={"X-Request-ID": "probe-1"})
        assert response.status_code == 200
        assert response.content == b'{"status":"ok"}'
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-request-id"] == "probe-1"
        assert response.headers["x-content-type-options"] == "nosniff"
    refused = await client.post("/health")
    assert refused.status_code == 405
    assert refused.headers["content-type"] == "application/problem+json"
