"""Rate limits, body limits, hostile input and security headers."""

import ipaddress
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request

from backend.config import Settings
from backend.main import create_app
from backend.ratelimit import (
    REWRITTEN_CLIENT,
    IPNetwork,
    _warn_rewritten_once,
    client_ip,
    rate_limit_key,
)
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, API, USER_PASSWORD

DEFAULT_REDIS_URL = "redis://127.0.0.1:6390/0"


@asynccontextmanager
async def running(app: FastAPI, client_host: str = "10.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(client_host, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@asynccontextmanager
async def client_at(app: FastAPI, client_host: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client connecting from this address to an app whose lifespan is running."""
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


def _request(peer: str, *forwarded: str) -> Request:
    headers = [(b"x-forwarded-for", line.encode()) for line in forwarded]
    return Request({"type": "http", "client": (peer, 1), "headers": headers})


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("10.0.0.5", ["203.0.113.9"], "203.0.113.9"),
        ("10.0.0.5", ["198.51.100.1, 203.0.113.9, 10.0.0.7"], "203.0.113.9"),
        ("10.0.0.5", [], "10.0.0.5"),
        ("10.0.0.5", ["not-an-ip"], "10.0.0.5"),
        ("10.0.0.5", ["10.0.0.8, 10.0.0.7"], "10.0.0.8"),
        ("203.0.113.50", ["1.2.3.4"], "203.0.113.50"),
        # Repeated lines are one list (RFC 9110): the proxy's own line, last, decides.
        ("10.0.0.5", ["198.51.100.1", "203.0.113.9"], "203.0.113.9"),
        ("10.0.0.5", ["1.1.1.1, 2.2.2.2", "203.0.113.9, 10.0.0.7"], "203.0.113.9"),
        # IPv4-mapped IPv6 (a dual-stack socket) is the IPv4 address, proxies included.
        ("::ffff:10.0.0.5", ["::ffff:203.0.113.9"], "203.0.113.9"),
        ("::ffff:203.0.113.50", [], "203.0.113.50"),
    ],
)
def test_client_ip(peer: str, forwarded: list[str], expected: str) -> None:
    trusted: list[IPNetwork] = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_ip(_request(peer, *forwarded), trusted) == expected


@pytest.mark.parametrize(
    ("peer", "forwarded"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4", "9.9.9.9, 1.2.3.4:5678"),
        ("2001:db8::1", "[2001:db8::1]:443"),
        ("1.2.3.4", "1.2.3.4, 10.0.0.7"),
    ],
)
def test_an_address_the_server_took_from_the_header_is_not_believed(
    peer: str, forwarded: str
) -> None:
    """What uvicorn and gunicorn do with proxy headers on: the peer is now a header entry,
    chosen by the client, so every such request counts as one client, trusted or not."""
    for trusted in ([], [ipaddress.ip_network("10.0.0.0/8")]):
        assert client_ip(_request(peer, forwarded), trusted) == REWRITTEN_CLIENT


def test_the_rewrite_is_reported_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    _warn_rewritten_once.cache_clear()
    with caplog.at_level(logging.ERROR, logger="backend.ratelimit"):
        client_ip(_request("1.2.3.4", "1.2.3.4"), [])
        client_ip(_request("5.6.7.8", "5.6.7.8"), [])
    (record,) = caplog.records  # once per process
    assert "--no-proxy-headers" in record.getMessage()


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("unknown", "unknown"),
    ],
)
def test_rate_limit_key_is_the_address_or_its_ipv6_64(address: str, key: str) -> None:
    assert rate_limit_key(address) == key


async def test_ipv6_clients_share_a_bucket_per_64(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"RATE_LIMIT_LOGIN_PER_IP": "2/minute"}))
    async with app.router.lifespan_context(app):
        statuses = []
        for host in ("2001:db8:0:1::a", "2001:db8:0:1::b", "2001:db8:0:1:ffff::c"):
            async with client_at(app, host) as client:
                statuses.append((await bad_login(client, f"{host[-1]}@example.com")).status_code)
        async with client_at(app, "2001:db8:0:2::a") as other_network:
            statuses.append((await bad_login(other_network)).status_code)
    assert statuses == [401, 401, 429, 401]


async def test_failed_logins_are_limited_per_account_across_addresses(settings: Settings) -> None:
    limits = {"RATE_LIMIT_LOGIN_PER_ACCOUNT": "3/minute", "RATE_LIMIT_LOGIN": "100/minute"}
    app = create_app(settings.model_copy(update=limits))
    async with app.router.lifespan_context(app):
        statuses = []
        for number in range(5):
            async with client_at(app, f"198.51.100.{number}") as client:
                statuses.append(await bad_login(client))
        async with client_at(app, "198.51.100.99") as client:
            other_account = await bad_login(client, "someone@example.com")
            owner = await client.post(
                f"{API}/auth/login", data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
            )
    assert [response.status_code for response in statuses] == [401, 401, 401, 429, 429]
    assert 1 <= int(statuses[-1].headers["retry-after"]) <= 60
    assert "at most 3 per 1 minute" in statuses[-1].json()["detail"]
    assert other_account.status_code == 401  # a budget per account, not a global one
    # While the flood lasts the owner waits too (Retry-After); their password is not
    # even checked, so the limit tells a guesser nothing.
    assert owner.status_code == 429


async def test_successful_logins_never_use_up_the_account_limit(settings: Settings) -> None:
    limits = {"RATE_LIMIT_LOGIN_PER_ACCOUNT": "2/minute", "RATE_LIMIT_LOGIN": "100/minute"}
    app = create_app(settings.model_copy(update=limits))
    form = {"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    async with running(app) as client:
        statuses = [
            (await client.post(f"{API}/auth/login", data=form)).status_code for _ in "12345"
        ]
        statuses.append((await bad_login(client)).status_code)
        statuses.append((await client.post(f"{API}/auth/login", data=form)).status_code)
    assert statuses == [200] * 5 + [401, 200]


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
            await first_app.state.services.rate_limiter.storage.reset()
        except Exception as error:
            if os.environ.get("CI"):
                raise
            pytest.skip(f"Redis at {redis_url} is not reachable: {error}")
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
    # Refused by default (look-alikes; see test_lookalike_emails for the setting that
    # allows them), and a login with one is an ordinary failed login.
    response = await client.post(
        f"{API}/auth/register",
        json={"email": "Jürgen@Exämple.de", "name": "Jürgen", "password": USER_PASSWORD},
    )
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["email"]
    again = await client.post(
        f"{API}/auth/login", data={"username": "jürgen@exämple.de", "password": USER_PASSWORD}
    )
    assert again.status_code == 401


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
