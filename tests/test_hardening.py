"""Rate limits, body limits, hostile input and security headers."""

import ipaddress
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request

from backend.config import Settings
from backend.main import create_app
from backend.ratelimit import IPNetwork, client_ip
from tests.conftest import ADMIN_EMAIL, API, USER_PASSWORD
from tests.services import REDIS, require

DEFAULT_REDIS_URL = "redis://127.0.0.1:6390/0"


@asynccontextmanager
async def running(app: FastAPI, client_host: str = "10.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(client_host, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def bad_login(client: httpx.AsyncClient, email: str = ADMIN_EMAIL) -> httpx.Response:
    return await client.post(
        f"{API}/auth/login", data={"username": email, "password": "Wrong-Password-1"}
    )


async def test_login_is_limited_per_ip_and_email(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"RATE_LIMIT_LOGIN": "3/minute"}))
    async with running(app) as client:
        statuses = [(await bad_login(client)).status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        limited = await bad_login(client)
        assert limited.headers["content-type"] == "application/problem+json"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert "at most 3 per 1 minute" in limited.json()["detail"]
        # Another email from the same address still gets its own budget.
        assert (await bad_login(client, "someone@example.com")).status_code == 401


async def test_login_is_limited_per_ip(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"RATE_LIMIT_LOGIN_PER_IP": "2/minute"}))
    async with running(app) as client:
        assert (await bad_login(client, "a@example.com")).status_code == 401
        assert (await bad_login(client, "b@example.com")).status_code == 401
        assert (await bad_login(client, "c@example.com")).status_code == 429


async def test_register_and_refresh_are_limited_per_ip(settings: Settings) -> None:
    limits = {"RATE_LIMIT_REGISTER": "1/hour", "RATE_LIMIT_REFRESH": "1/minute"}
    app = create_app(settings.model_copy(update=limits))
    async with running(app) as client:
        body = {"email": "one@example.com", "name": "One", "password": USER_PASSWORD}
        first = await client.post(f"{API}/auth/register", json=body)
        assert first.status_code == 200
        second = await client.post(f"{API}/auth/register", json={**body, "email": "2@example.com"})
        assert second.status_code == 429
        token = first.json()["refresh_token"]
        assert (await client.post(f"{API}/auth/refresh", json={"refresh_token": token})).is_success
        again = await client.post(f"{API}/auth/refresh", json={"refresh_token": "x"})
        assert again.status_code == 429


async def test_limits_can_be_switched_off(settings: Settings) -> None:
    app = create_app(
        settings.model_copy(update={"RATE_LIMIT_LOGIN": "1/minute", "RATE_LIMIT_ENABLED": False})
    )
    async with running(app) as client:
        assert [(await bad_login(client)).status_code for _ in range(3)] == [401] * 3


async def test_forwarded_for_counts_only_behind_a_trusted_proxy(settings: Settings) -> None:
    limited = settings.model_copy(update={"RATE_LIMIT_LOGIN_PER_IP": "1/minute"})
    # Untrusted peer: X-Forwarded-For is ignored, so rotating it does not help.
    async with running(create_app(limited)) as client:
        first = await client.post(
            f"{API}/auth/login",
            data={"username": "a@example.com", "password": "x"},
            headers={"X-Forwarded-For": "1.1.1.1"},
        )
        second = await client.post(
            f"{API}/auth/login",
            data={"username": "a@example.com", "password": "x"},
            headers={"X-Forwarded-For": "2.2.2.2"},
        )
        assert (first.status_code, second.status_code) == (401, 429)
    trusted = limited.model_copy(update={"TRUSTED_PROXIES": [ipaddress.ip_network("10.0.0.0/8")]})
    async with running(create_app(trusted)) as client:
        for address in ("1.1.1.1", "2.2.2.2"):
            response = await client.post(
                f"{API}/auth/login",
                data={"username": "a@example.com", "password": "x"},
                headers={"X-Forwarded-For": address},
            )
            assert response.status_code == 401, address


def _request(peer: str, forwarded: str | None) -> Request:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded is not None else []
    return Request({"type": "http", "client": (peer, 1), "headers": headers})


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("10.0.0.5", "203.0.113.9", "203.0.113.9"),
        ("10.0.0.5", "198.51.100.1, 203.0.113.9, 10.0.0.7", "203.0.113.9"),
        ("10.0.0.5", None, "10.0.0.5"),
        ("10.0.0.5", "not-an-ip", "10.0.0.5"),
        ("10.0.0.5", "10.0.0.8, 10.0.0.7", "10.0.0.8"),
        ("203.0.113.50", "1.2.3.4", "203.0.113.50"),
    ],
)
def test_client_ip(peer: str, forwarded: str | None, expected: str) -> None:
    trusted: list[IPNetwork] = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_ip(_request(peer, forwarded), trusted) == expected


def test_trusted_proxies_setting_parses_a_comma_list() -> None:
    settings = Settings(_env_file=None, TRUSTED_PROXIES="10.0.0.0/8, 127.0.0.1")
    assert [str(network) for network in settings.TRUSTED_PROXIES] == ["10.0.0.0/8", "127.0.0.1/32"]


async def test_limit_holds_across_two_instances_sharing_redis(settings: Settings) -> None:
    redis_url = os.environ.get("TEST_REDIS_URL", DEFAULT_REDIS_URL)
    shared = settings.model_copy(update={"REDIS_URL": redis_url, "RATE_LIMIT_LOGIN": "2/minute"})
    first_app, second_app = create_app(shared), create_app(shared)
    email = f"redis-{os.getpid()}-{id(first_app)}@example.com"  # a fresh key every run
    async with running(first_app) as first, running(second_app) as second:
        try:
            await first_app.state.rate_limiter.storage.reset()
        except Exception as error:
            require(REDIS, f"nothing answers at {redis_url} (TEST_REDIS_URL): {error}")
        assert (await bad_login(first, email)).status_code == 401
        assert (await bad_login(second, email)).status_code == 401
        assert (await bad_login(first, email)).status_code == 429
        assert (await bad_login(second, email)).status_code == 429


async def test_two_megabyte_body_is_413_before_parsing(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{API}/auth/register",
        content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert "limit of 1048576 bytes" in response.json()["detail"]
    assert response.headers["x-request-id"]


async def test_chunked_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * (512 * 1024)

    response = await client.post(
        f"{API}/auth/register", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


async def test_chunked_body_under_the_limit_is_read(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"email": "chunk@example.com", "name": "Chunk",'
        yield b' "password": "' + USER_PASSWORD.encode() + b'"}'

    response = await client.post(
        f"{API}/auth/register", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200


def registration(
    email: str = "a@example.com", name: str = "x", password: str = "Password-1"
) -> bytes:
    return json.dumps({"email": email, "name": name, "password": password}).encode()


HOSTILE_REGISTRATIONS: list[tuple[str, bytes, str]] = [
    ("malformed json", b'{"email": "a@example.com",', "application/json"),
    ("json array", b"[1, 2]", "application/json"),
    ("wrong content type", b"email=a@example.com", "text/plain"),
    ("no body", b"", "application/json"),
    ("huge email", registration(email="a" * 10_000 + "@example.com"), "application/json"),
    ("nul in email", registration(email="a\x00@example.com"), "application/json"),
    ("nul in name", registration(name="a\x00b"), "application/json"),
    ("nul in password", registration(password="Pass\x00word"), "application/json"),
    ("10k name", registration(name="n" * 10_000), "application/json"),
    ("invalid utf-8", b'{"email": "\xff\xfe@example.com"}', "application/json"),
    ("deep nesting", b"[" * 5000 + b"]" * 5000, "application/json"),
]


@pytest.mark.parametrize(
    ("case", "body", "content_type"),
    HOSTILE_REGISTRATIONS,
    ids=[c[0] for c in HOSTILE_REGISTRATIONS],
)
async def test_hostile_bodies_get_4xx_problems(
    client: httpx.AsyncClient, case: str, body: bytes, content_type: str
) -> None:
    response = await client.post(
        f"{API}/auth/register", content=body, headers={"content-type": content_type}
    )
    assert 400 <= response.status_code < 500, case
    assert response.headers["content-type"] == "application/problem+json", case


async def test_non_ascii_email_is_handled(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{API}/auth/register",
        json={"email": "Jürgen@Exämple.de", "name": "Jürgen", "password": USER_PASSWORD},
    )
    assert response.status_code == 200
    assert response.json()["user"]["email"] == "jürgen@exämple.de"
    again = await client.post(
        f"{API}/auth/login", data={"username": "jürgen@exämple.de", "password": USER_PASSWORD}
    )
    assert again.status_code == 200


async def test_hostile_logins_get_4xx(client: httpx.AsyncClient) -> None:
    cases = [
        {"username": "a\x00@example.com", "password": "x"},
        {"username": ADMIN_EMAIL, "password": "nul\x00byte"},
        {"username": "x" * 10_000, "password": "x"},
        {"username": ADMIN_EMAIL, "password": "p" * 5000},
    ]
    for form in cases:
        response = await client.post(f"{API}/auth/login", data=form)
        assert 400 <= response.status_code < 500, form
    multipart = await client.post(
        f"{API}/auth/login",
        content=b"--x\r\nbroken",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert 400 <= multipart.status_code < 500


async def test_security_headers(client: httpx.AsyncClient) -> None:
    api = await client.post(
        f"{API}/auth/login", data={"username": "a@example.com", "password": "x"}
    )
    health = await client.get("/health")
    for response in (api, health):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    assert api.headers["cache-control"] == "no-store"
    assert "cache-control" not in health.headers
