"""Rate limits: per address and per email, behind trusted proxies, shared through Redis."""

import ipaddress
import os

import httpx
import pytest
from starlette.requests import Request

from backend.config import Settings
from backend.main import create_app
from backend.ratelimit import IPNetwork, client_ip
from tests.helpers import ADMIN_EMAIL, API, USER_PASSWORD, post_login, running
from tests.services import REDIS, require

PEER = "10.0.0.1"  # where the requests come from; a trusted proxy in some tests
DEFAULT_REDIS_URL = "redis://127.0.0.1:6390/0"


async def bad_login(client: httpx.AsyncClient, email: str = ADMIN_EMAIL) -> httpx.Response:
    return await post_login(client, email, "Wrong-Password-1")


async def test_login_is_limited_per_ip_and_email(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"RATE_LIMIT_LOGIN": "3/minute"}))
    async with running(app, PEER) as client:
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
    async with running(app, PEER) as client:
        assert (await bad_login(client, "a@example.com")).status_code == 401
        assert (await bad_login(client, "b@example.com")).status_code == 401
        assert (await bad_login(client, "c@example.com")).status_code == 429


async def test_register_and_refresh_are_limited_per_ip(settings: Settings) -> None:
    limits = {"RATE_LIMIT_REGISTER": "1/hour", "RATE_LIMIT_REFRESH": "1/minute"}
    app = create_app(settings.model_copy(update=limits))
    async with running(app, PEER) as client:
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
    async with running(app, PEER) as client:
        assert [(await bad_login(client)).status_code for _ in range(3)] == [401] * 3


async def test_forwarded_for_counts_only_behind_a_trusted_proxy(settings: Settings) -> None:
    limited = settings.model_copy(update={"RATE_LIMIT_LOGIN_PER_IP": "1/minute"})
    # Untrusted peer: X-Forwarded-For is ignored, so rotating it does not help.
    async with running(create_app(limited), PEER) as client:
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
    async with running(create_app(trusted), PEER) as client:
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
    async with running(first_app, PEER) as first, running(second_app, PEER) as second:
        try:
            await first_app.state.rate_limiter.storage.reset()
        except Exception as error:
            require(REDIS, f"nothing answers at {redis_url} (TEST_REDIS_URL): {error}")
        assert (await bad_login(first, email)).status_code == 401
        assert (await bad_login(second, email)).status_code == 401
        assert (await bad_login(first, email)).status_code == 429
        assert (await bad_login(second, email)).status_code == 429
