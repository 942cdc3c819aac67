"""Session lifetimes (SESSION_MAX_DAYS, SESSION_IDLE_DAYS), and logout or reuse ending the
access tokens too. Time is moved with the `clock` fixture, never slept through."""

from datetime import UTC, datetime, timedelta

import httpx
import jwt
from fastapi import FastAPI

from backend.clock import Clock
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, TEST_SECRET_KEY, bearer, login
from tests.test_sessions import refresh

EXPIRED = "This session has expired; log in again."


async def my_sessions(client: httpx.AsyncClient, access_token: str) -> list[dict[str, object]]:
    response = await client.get(f"{API}/users/me/sessions", headers=bearer(access_token))
    assert response.status_code == 200, response.text
    sessions: list[dict[str, object]] = response.json()
    return sessions


def expiry(token: str) -> datetime:
    claims = jwt.decode(
        token,
        TEST_SECRET_KEY,
        algorithms=["HS256"],
        options={"verify_exp": False, "verify_iat": False},
    )
    return datetime.fromtimestamp(claims["exp"], UTC)


async def test_rotation_never_extends_the_absolute_expiry(
    client: httpx.AsyncClient, clock: Clock
) -> None:
    tokens = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    session_expires = expiry(tokens["refresh_token"]) + timedelta(days=30 - 14)
    for _ in range(2):  # days 10 and 20: within the idle limit each time
        clock.offset += timedelta(days=10)
        response = await refresh(client, tokens["refresh_token"])
        assert response.status_code == 200, response.text
        tokens = response.json()
    # At day 20 a refresh token would live 14 days more; the session ends at day 30.
    assert abs(expiry(tokens["refresh_token"]) - session_expires) <= timedelta(seconds=1)
    (listed,) = await my_sessions(client, tokens["access_token"])
    assert abs(datetime.fromisoformat(str(listed["expires_at"])) - session_expires) <= timedelta(
        seconds=1
    )
    clock.offset += timedelta(days=9, hours=23, minutes=45)
    # The last access token ends with the session, not 30 minutes after it was issued.
    response = await refresh(client, tokens["refresh_token"])
    assert response.status_code == 200
    tokens = response.json()
    assert expiry(tokens["access_token"]) <= session_expires
    clock.offset += timedelta(minutes=15)
    refused = await refresh(client, tokens["refresh_token"])
    assert refused.status_code == 401
    me = await client.get(f"{API}/users/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 401


async def test_a_session_ends_at_its_absolute_expiry_however_used(
    app: FastAPI, client: httpx.AsyncClient, clock: Clock
) -> None:
    app.state.runtime.settings.SESSION_MAX_DAYS = 2
    tokens = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    clock.offset += timedelta(days=1)
    tokens = (await refresh(client, tokens["refresh_token"])).json()
    later = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    assert len(await my_sessions(client, later["access_token"])) == 2
    clock.offset += timedelta(days=1, seconds=1)
    refused = await refresh(client, tokens["refresh_token"])
    assert refused.status_code == 401
    later = (await refresh(client, later["refresh_token"])).json()
    listed = await my_sessions(client, later["access_token"])
    assert [entry["current"] for entry in listed] == [True]


async def test_a_session_unused_past_the_idle_limit_ends(
    app: FastAPI, client: httpx.AsyncClient, clock: Clock
) -> None:
    app.state.runtime.settings.SESSION_IDLE_DAYS = 3
    idle = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    busy = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    for _ in range(3):
        clock.offset += timedelta(days=2)
        response = await refresh(client, busy["refresh_token"])
        assert response.status_code == 200, response.text
        busy = response.json()
    refused = await refresh(client, idle["refresh_token"])
    assert refused.status_code == 401
    assert refused.json()["detail"] == EXPIRED
    # Ended for good: the list no longer shows it, and a second try says so.
    assert [entry["current"] for entry in await my_sessions(client, busy["access_token"])] == [True]
    again = await refresh(client, idle["refresh_token"])
    assert again.json()["detail"] == "This session has ended; log in again."


async def test_logout_ends_the_sessions_access_token_at_once(client: httpx.AsyncClient) -> None:
    phone = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    laptop = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    response = await client.post(
        f"{API}/auth/logout", json={"refresh_token": phone["refresh_token"]}
    )
    assert response.status_code == 204
    me = await client.get(f"{API}/users/me", headers=bearer(phone["access_token"]))
    assert me.status_code == 401
    assert me.headers["www-authenticate"] == "Bearer"
    assert (await client.get(f"{API}/users/me", headers=bearer(laptop["access_token"]))).is_success
    again = await client.post(f"{API}/auth/logout", json={"refresh_token": phone["refresh_token"]})
    assert again.status_code == 401


async def test_reuse_ends_the_holders_access_token_too(
    app: FastAPI, client: httpx.AsyncClient, clock: Clock
) -> None:
    app.state.runtime.settings.REFRESH_REUSE_GRACE_SECONDS = 0
    stolen = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    rotated = (await refresh(client, stolen["refresh_token"])).json()
    clock.offset += timedelta(seconds=1)
    reused = await refresh(client, stolen["refresh_token"])
    assert reused.json()["detail"] == "Refresh token reuse detected: this session has been revoked."
    me = await client.get(f"{API}/users/me", headers=bearer(rotated["access_token"]))
    assert me.status_code == 401


async def test_expired_tokens_are_refused_by_the_same_clock(
    client: httpx.AsyncClient, clock: Clock
) -> None:
    tokens = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    # Used once first, so its verified claims are kept (security.VERIFIED_TOKENS_KEPT):
    # expiry is still checked on every use.
    me = await client.get(f"{API}/users/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200
    clock.offset += timedelta(minutes=31)
    me = await client.get(f"{API}/users/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 401
    assert me.json()["detail"] == "The token is invalid or has expired."
    clock.offset += timedelta(days=14)
    assert (await refresh(client, tokens["refresh_token"])).status_code == 401
