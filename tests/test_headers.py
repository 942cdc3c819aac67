"""What every response carries: a request id, CORS headers, security headers."""

import httpx

from backend.config import Settings
from backend.main import create_app
from tests.helpers import API, running

ORIGIN = "https://dashboard.example.com"


async def test_every_response_has_a_request_id(client: httpx.AsyncClient) -> None:
    generated = await client.get("/health")
    assert len(generated.headers["x-request-id"]) == 32
    echoed = await client.get("/nowhere", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    assert echoed.json()["request_id"] == "abc-123"
    unsafe = await client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"


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


async def test_security_headers(client: httpx.AsyncClient) -> None:
    api = await client.post(
        f"{API}/auth/login", data={"username": "a@example.com", "password": "x"}
    )
    health = await client.get("/health")
    docs = await client.get("/docs")
    missing = await client.get(f"{API}/no-such-route")
    for response in (api, health, docs, missing):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        # Appended, not set (middleware.py): each once, whatever the response is.
        for name in (
            "x-request-id",
            "x-content-type-options",
            "referrer-policy",
            "x-frame-options",
        ):
            assert len(response.headers.get_list(name)) == 1, (response.url, name)
    assert api.headers.get_list("cache-control") == ["no-store"]
    assert "cache-control" not in health.headers


async def test_hsts_only_when_the_public_address_is_https(settings: Settings) -> None:
    for public_url, expected in (
        ("https://users.example.com", "max-age=31536000"),
        ("http://127.0.0.1:8000", None),
    ):
        app = create_app(settings.model_copy(update={"PUBLIC_URL": public_url}))
        async with running(app) as client:
            response = await client.get("/health")
        assert response.headers.get("strict-transport-security") == expected, public_url
