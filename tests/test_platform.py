"""Health probes, the error format, request ids, CORS and the OpenAPI document."""

import httpx
import pytest
from fastapi import FastAPI

from backend.config import Settings
from backend.main import create_app
from tests.conftest import API

ORIGIN = "https://dashboard.example.com"


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
    app = create_app(unreachable)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
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


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["detail"] == "No route matches /nowhere."
    assert missing.json()["message"] == missing.json()["detail"]  # what dashboards show
    wrong_method = await client.put("/health")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["title"] == "Method Not Allowed"


async def test_every_response_has_a_request_id(client: httpx.AsyncClient) -> None:
    generated = await client.get("/health")
    assert len(generated.headers["x-request-id"]) == 32
    echoed = await client.get("/nowhere", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    assert echoed.json()["request_id"] == "abc-123"
    unsafe = await client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"


async def test_unexpected_errors_are_opaque_500_problems(settings: Settings) -> None:
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/boom", headers={"X-Request-ID": "trace-me"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "trace-me"
    body = response.json()
    assert body["request_id"] == "trace-me"
    assert "secret" not in response.text


async def test_cors_allows_listed_origins_with_credentials(client: httpx.AsyncClient) -> None:
    preflight = await client.options(
        f"{API}/users",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert preflight.headers["access-control-allow-credentials"] == "true"
    simple = await client.get("/health", headers={"Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert "X-Request-ID" in simple.headers["access-control-expose-headers"]


async def test_cors_refuses_other_origins_as_a_problem(client: httpx.AsyncClient) -> None:
    preflight = await client.options(
        f"{API}/users",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 400
    assert preflight.headers["content-type"] == "application/problem+json"
    assert preflight.json()["detail"] == "Disallowed CORS origin"
    assert "access-control-allow-origin" not in preflight.headers
    simple = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


@pytest.mark.parametrize("prefix", ["/api/v1", "/v2"])
def test_openapi_documents_problems_and_the_token_url(prefix: str, settings: Settings) -> None:
    app: FastAPI = create_app(settings.model_copy(update={"API_V1_PREFIX": prefix}))
    schema = app.openapi()
    flows = schema["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]
    assert flows["password"]["tokenUrl"] == f"{prefix}/auth/login"
    operation_ids = [
        operation["operationId"] for path in schema["paths"].values() for operation in path.values()
    ]
    assert len(operation_ids) == len(set(operation_ids))
    assert {"auth-login", "auth-register", "users-list", "users-get", "health-ready"} <= set(
        operation_ids
    )
    create = schema["paths"][f"{prefix}/users"]["post"]["responses"]
    for status in ("401", "403", "409", "422"):
        assert "application/problem+json" in create[status]["content"], status
    login_body = schema["paths"][f"{prefix}/auth/login"]["post"]["requestBody"]["content"]
    assert {"application/x-www-form-urlencoded", "application/json"} <= login_body.keys()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
