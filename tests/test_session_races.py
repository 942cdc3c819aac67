"""Each pair of session operations run at the same instant, many times: whatever order
they land in, no 5xx, and once the session is ended no token of it works, not even one
that a concurrent refresh issued meanwhile (issue 11: the rotated token survived).

`pytest -s` prints how the races landed (which of the two came first)."""

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from backend.clock import Clock
from backend.config import Settings
from tests.helpers import API, bearer, login, make_settings
from tests.test_sessions import _new_account, refresh

RACES = 25


@pytest.fixture
def settings(database_url: str) -> Settings:
    # A hundred refreshes a minute from one address: the limits would answer 429.
    return make_settings(database_url, RATE_LIMIT_ENABLED=False)


async def assert_all_dead(client: httpx.AsyncClient, pairs: list[dict[str, Any]]) -> None:
    for tokens in pairs:
        me = await client.get(f"{API}/users/me", headers=bearer(tokens["access_token"]))
        assert me.status_code in {401, 403}, me.text
        assert (await refresh(client, tokens["refresh_token"])).status_code == 401


Ending = Callable[[httpx.AsyncClient, dict[str, Any], dict[str, Any]], Awaitable[httpx.Response]]


async def logout(
    client: httpx.AsyncClient, tokens: dict[str, Any], _: dict[str, Any]
) -> httpx.Response:
    return await client.post(f"{API}/auth/logout", json={"refresh_token": tokens["refresh_token"]})


async def logout_all(
    client: httpx.AsyncClient, tokens: dict[str, Any], _: dict[str, Any]
) -> httpx.Response:
    return await client.post(f"{API}/auth/logout-all", headers=bearer(tokens["access_token"]))


async def admin_ends_all(
    client: httpx.AsyncClient, tokens: dict[str, Any], admin: dict[str, Any]
) -> httpx.Response:
    url = f"{API}/users/{tokens['user']['id']}/sessions"
    return await client.delete(url, headers=admin)


async def delete_user(
    client: httpx.AsyncClient, tokens: dict[str, Any], admin: dict[str, Any]
) -> httpx.Response:
    return await client.delete(f"{API}/users/{tokens['user']['id']}", headers=admin)


@pytest.mark.parametrize(
    ("name", "ending", "ended_status"),
    [
        ("logout", logout, 204),
        ("logout-all", logout_all, 204),
        ("admin end-all", admin_ends_all, 204),
        ("deletion", delete_user, 200),
    ],
)
async def test_refresh_racing_an_ending_leaves_no_survivor(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    database_url: str,
    name: str,
    ending: Ending,
    ended_status: int,
) -> None:
    outcomes: Counter[str] = Counter()
    for number in range(RACES):
        account = await _new_account(client, admin_headers, number)
        tokens = await login(client, account["email"], account["password"])
        refreshed, ended = await asyncio.gather(
            refresh(client, tokens["refresh_token"]), ending(client, tokens, admin_headers)
        )
        assert refreshed.status_code in {200, 401}, refreshed.text
        assert ended.status_code == ended_status, ended.text
        outcomes[f"refresh {refreshed.status_code}"] += 1
        pairs = [tokens] + ([refreshed.json()] if refreshed.status_code == 200 else [])
        await assert_all_dead(client, pairs)
    print(f"\n{database_url.split(':')[0]}: refresh vs {name}: {dict(outcomes)}")


async def test_refresh_racing_reuse_leaves_no_survivor(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    database_url: str,
    clock: Clock,
) -> None:
    """The holder refreshes with the newest token while a thief replays the old one."""
    app.state.runtime.settings.REFRESH_REUSE_GRACE_SECONDS = 0
    outcomes: Counter[str] = Counter()
    for number in range(RACES):
        account = await _new_account(client, admin_headers, number)
        stolen = await login(client, account["email"], account["password"])
        current = (await refresh(client, stolen["refresh_token"])).json()
        clock.offset += timedelta(seconds=1)  # past the grace window
        refreshed, reused = await asyncio.gather(
            refresh(client, current["refresh_token"]), refresh(client, stolen["refresh_token"])
        )
        assert refreshed.status_code in {200, 401}, refreshed.text
        assert reused.status_code == 401, reused.text
        outcomes[f"refresh {refreshed.status_code}"] += 1
        pairs = [stolen, current] + ([refreshed.json()] if refreshed.status_code == 200 else [])
        await assert_all_dead(client, pairs)
    print(f"\n{database_url.split(':')[0]}: refresh vs reuse: {dict(outcomes)}")


async def test_concurrent_refreshes_of_one_session_give_one_pair(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """Eight refreshes with one token: one wins, the others are told it was just
    rotated, and the winner's pair works."""
    account = await _new_account(client, admin_headers, 0)
    tokens = await login(client, account["email"], account["password"])
    responses = await asyncio.gather(*(refresh(client, tokens["refresh_token"]) for _ in range(8)))
    assert sorted(response.status_code for response in responses) == [200] + [401] * 7
    winner = next(response.json() for response in responses if response.status_code == 200)
    me = await client.get(f"{API}/users/me", headers=bearer(winner["access_token"]))
    assert me.status_code == 200
