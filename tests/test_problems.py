"""Errors as problem+json: unknown routes, unexpected errors, and how OpenAPI documents them."""

import httpx
import pytest
from fastapi import FastAPI

from backend.config import Settings
from backend.main import create_app


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["detail"] == "No route matches /nowhere."
    assert missing.json()["message"] == missing.json()["detail"]  # what dashboards show
    wrong_method = await client.put("/health")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["title"] == "Method Not Allowed"


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
