"""Rate limits: per address and per email, behind trusted proxies, shared through Redis."""

import ipaddress
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request

from backend.config import Settings
from backend.http.ratelimit import (
    REWRITTEN_CLIENT,
    IPNetwork,
    _warn_rewritten_once,
    client_ip,
    rate_limit_key,
)
from backend.main import create_app
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, USER_PASSWORD, post_login, running
from tests.services import REDIS, require

PEER = "10.0.0.1"  # where the requests come from; a trusted proxy in some tests
DEFAULT_REDIS_URL = "redis://127.0.0.1:6390/0"


@asynccontextmanager
async def client_at(app: FastAPI, client_host: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client connecting from this address to an app whose lifespan is running."""
    transport = httpx.ASGITransport(app=app, client=(client_host, 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def bad_login(client: httpx.AsyncClient, email: str = ADMIN_EMAIL) -> httpx.Response:
    return await post_login(client, email, "Wrong-Password-1")


async def test_wrong_current_passwords_spend_the_accounts_failed_login_budget(
    settings: Settings,
) -> None:
    """Guesses of the current password through POST /users/me/password, from rotating
    addresses, are counted per account like failed logins."""
    update = {"RATE_LIMIT_LOGIN_PER_ACCOUNT": "3/minute", "RATE_LIMIT_LOGIN": "100/minute"}
    app = create_app(settings.model_copy(update=update))
    async with running(app, PEER) as client:
        tokens = (await post_login(client, ADMIN_EMAIL, ADMIN_PASSWORD)).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        answers = []
        for guess in range(4):
            async with client_at(app, f"198.51.100.{guess + 1}") as elsewhere:
                body = {"current_password": f"Guess-Number-{guess}", "new_password": USER_PASSWORD}
                answer = await elsewhere.post(
                    f"{API}/users/me/password", json=body, headers=headers
                )
                answers.append((answer.status_code, answer.json()["code"]))
        assert answers == [(400, "password_incorrect")] * 3 + [(429, "rate_limited")]
        # The budget is the account's: a login with the right password waits too.
        assert (await post_login(client, ADMIN_EMAIL, ADMIN_PASSWORD)).status_code == 429


async def test_wrong_reauthentication_passwords_spend_the_same_budget(
    settings: Settings,
) -> None:
    update = {"RATE_LIMIT_LOGIN_PER_ACCOUNT": "3/minute", "RATE_LIMIT_LOGIN": "100/minute"}
    app = create_app(settings.model_copy(update=update))
    async with running(app, PEER) as client:
        tokens = (await post_login(client, ADMIN_EMAIL, ADMIN_PASSWORD)).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        answers = []
        for guess in range(4):
            async with client_at(app, f"198.51.100.{guess + 1}") as elsewhere:
                answer = await elsewhere.post(
                    f"{API}/auth/reauthenticate",
                    json={"password": f"Guess-Number-{guess}"},
                    headers=headers,
                )
                answers.append((answer.status_code, answer.json()["code"]))
        assert answers == [(400, "password_incorrect")] * 3 + [(429, "rate_limited")]
        assert (await post_login(client, ADMIN_EMAIL, ADMIN_PASSWORD)).status_code == 429


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
    with caplog.at_level(logging.ERROR, logger="backend.http.ratelimit"):
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
    async with running(first_app, PEER) as first, running(second_app, PEER) as second:
        # A PING, not a reset: a reset would clear the counters of a test running beside
        # this one (another xdist worker) on the same Redis. The email keeps keys apart.
        try:
            answered = await first_app.state.runtime.rate_limiter.storage.check()
        except Exception as error:
            answered, problem = False, f": {error}"
        else:
            problem = ""
        if not answered:
            require(REDIS, f"nothing answers at {redis_url} (TEST_REDIS_URL){problem}")
        assert (await bad_login(first, email)).status_code == 401
        assert (await bad_login(second, email)).status_code == 401
        assert (await bad_login(first, email)).status_code == 429
        assert (await bad_login(second, email)).status_code == 429
