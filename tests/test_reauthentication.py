"""Re-authentication: POST /auth/reauthenticate, and the recent proof that the routes
guarded by RecentCaller ask for."""

from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI

from backend.auth.deps import RecentCaller
from backend.clock import Clock
from tests.helpers import API, USER_PASSWORD, RegisterUser, bearer, login

PROBE = "/reauthentication-probe"


@pytest.fixture
def guarded(app: FastAPI) -> str:
    """A route that asks for a recent proof, as the sensitive routes do."""

    async def probe(caller: RecentCaller) -> dict[str, str]:
        return {"session": caller.user_session.id}

    app.add_api_route(PROBE, probe, methods=["POST"])
    return PROBE


async def test_a_login_is_a_recent_proof_until_the_window_ends(
    client: httpx.AsyncClient, register: RegisterUser, clock: Clock, guarded: str
) -> None:
    headers = bearer((await register())["access_token"])
    assert (await client.post(guarded, headers=headers)).status_code == 200
    clock.offset += timedelta(seconds=301)  # past REAUTHENTICATION_WINDOW_SECONDS (300)
    stale = await client.post(guarded, headers=headers)
    assert stale.status_code == 403
    assert stale.json()["code"] == "reauthentication_required"
    assert "/auth/reauthenticate" in stale.json()["detail"]


async def test_reauthenticating_renews_the_proof_for_this_session_only(
    client: httpx.AsyncClient, register: RegisterUser, clock: Clock, guarded: str
) -> None:
    headers = bearer((await register())["access_token"])
    other = bearer((await login(client, "user@example.com", USER_PASSWORD))["access_token"])
    clock.offset += timedelta(minutes=10)
    renewed = await client.post(
        f"{API}/auth/reauthenticate", json={"password": USER_PASSWORD}, headers=headers
    )
    assert renewed.status_code == 200, renewed.text
    body = renewed.json()
    assert body.keys() == {"authenticated_at", "valid_until"}
    assert (await client.post(guarded, headers=headers)).status_code == 200
    # Another device's session proved nothing.
    assert (await client.post(guarded, headers=other)).json()["code"] == (
        "reauthentication_required"
    )
    # A refresh keeps the session, and with it the proof's time.
    clock.offset += timedelta(seconds=301)
    assert (await client.post(guarded, headers=headers)).status_code == 403


async def test_a_wrong_password_is_refused(
    client: httpx.AsyncClient, register: RegisterUser, clock: Clock, guarded: str
) -> None:
    headers = bearer((await register())["access_token"])
    clock.offset += timedelta(minutes=10)
    wrong = await client.post(
        f"{API}/auth/reauthenticate", json={"password": "not-the-password"}, headers=headers
    )
    assert (wrong.status_code, wrong.json()["code"]) == (400, "password_incorrect")
    assert (await client.post(guarded, headers=headers)).status_code == 403


async def test_api_keys_and_ended_sessions_cannot_reauthenticate(
    client: httpx.AsyncClient, register: RegisterUser
) -> None:
    tokens = await register()
    headers = bearer(tokens["access_token"])
    created = await client.post(
        f"{API}/users/me/tokens", json={"name": "script", "scope": "write"}, headers=headers
    )
    key = bearer(created.json()["secret"])
    refused = await client.post(
        f"{API}/auth/reauthenticate", json={"password": USER_PASSWORD}, headers=key
    )
    assert (refused.status_code, refused.json()["code"]) == (403, "api_key_not_allowed")
    assert (await client.post(f"{API}/auth/logout-all", headers=headers)).status_code == 204
    ended = await client.post(
        f"{API}/auth/reauthenticate", json={"password": USER_PASSWORD}, headers=headers
    )
    assert ended.status_code == 401
