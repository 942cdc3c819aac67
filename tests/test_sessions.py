"""Refresh rotation, reuse detection, logout, revocation and password change."""

import asyncio
from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlmodel import select

from backend.auth.models import RefreshToken, UserSession
from backend.clock import utcnow
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, RegisterUser, bearer, login


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(f"{API}/auth/refresh", json={"refresh_token": token})


async def test_refresh_rotates_the_pair(client: httpx.AsyncClient) -> None:
    first = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    response = await refresh(client, first["refresh_token"])
    assert response.status_code == 200
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["user"]["email"] == ADMIN_EMAIL
    me = await client.get(f"{API}/users/me", headers=bearer(second["access_token"]))
    assert me.status_code == 200
    third = await refresh(client, second["refresh_token"])
    assert third.status_code == 200


async def test_reuse_after_the_grace_window_revokes_the_family(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    app.state.runtime.settings.REFRESH_REUSE_GRACE_SECONDS = 0
    other_session = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    stolen = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    rotated = (await refresh(client, stolen["refresh_token"])).json()
    await asyncio.sleep(0.01)
    reused = await refresh(client, stolen["refresh_token"])
    assert reused.status_code == 401
    assert reused.json()["detail"] == "Refresh token reuse detected: this session has been revoked."
    # The legitimate holder's newer token died with the family...
    assert (await refresh(client, rotated["refresh_token"])).status_code == 401
    # ...while another login's session lives on.
    assert (await refresh(client, other_session["refresh_token"])).status_code == 200


async def test_reuse_within_the_grace_window_keeps_the_family(client: httpx.AsyncClient) -> None:
    tokens = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    first = await refresh(client, tokens["refresh_token"])
    second = await refresh(client, tokens["refresh_token"])  # the other browser tab
    assert first.status_code == 200
    assert second.status_code == 401
    assert "just rotated" in second.json()["detail"]
    assert (await refresh(client, first.json()["refresh_token"])).status_code == 200


async def test_concurrent_refreshes_give_one_new_pair(client: httpx.AsyncClient) -> None:
    tokens = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    responses = await asyncio.gather(*(refresh(client, tokens["refresh_token"]) for _ in range(4)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 401, 401, 401]
    winner = next(response for response in responses if response.status_code == 200)
    assert (await refresh(client, winner.json()["refresh_token"])).status_code == 200


async def test_token_types_are_not_interchangeable(client: httpx.AsyncClient) -> None:
    tokens = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    as_refresh = await refresh(client, tokens["access_token"])
    assert as_refresh.status_code == 401
    assert as_refresh.headers["www-authenticate"] == "Bearer"
    as_access = await client.get(f"{API}/users/me", headers=bearer(tokens["refresh_token"]))
    assert as_access.status_code == 401
    garbage = await refresh(client, "not-a-token")
    assert garbage.status_code == 401


async def test_logout_ends_one_session(client: httpx.AsyncClient) -> None:
    phone = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    laptop = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    rotated = (await refresh(client, phone["refresh_token"])).json()
    response = await client.post(
        f"{API}/auth/logout", json={"refresh_token": rotated["refresh_token"]}
    )
    assert response.status_code == 204
    assert response.content == b""
    assert (await refresh(client, rotated["refresh_token"])).status_code == 401
    assert (await refresh(client, laptop["refresh_token"])).status_code == 200
    with_access = await client.post(
        f"{API}/auth/logout", json={"refresh_token": laptop["access_token"]}
    )
    assert with_access.status_code == 401


async def test_logout_all_kills_tokens_already_issued(client: httpx.AsyncClient) -> None:
    phone = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    laptop = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    response = await client.post(f"{API}/auth/logout-all", headers=bearer(phone["access_token"]))
    assert response.status_code == 204
    for tokens in (phone, laptop):
        me = await client.get(f"{API}/users/me", headers=bearer(tokens["access_token"]))
        assert me.status_code == 401
        assert (await refresh(client, tokens["refresh_token"])).status_code == 401
    assert await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)


async def test_deactivation_kills_tokens_at_once(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    tokens = await register()
    response = await client.patch(
        f"{API}/users/{tokens['user']['id']}", json={"is_active": False}, headers=admin_headers
    )
    assert response.status_code == 200
    me = await client.get(f"{API}/users/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 403
    refreshed = await refresh(client, tokens["refresh_token"])
    assert refreshed.status_code == 403
    assert refreshed.json()["detail"] == "This account is deactivated."


async def test_deleted_users_refresh_token_is_refused(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    tokens = await register()
    await client.delete(f"{API}/users/{tokens['user']['id']}", headers=admin_headers)
    assert (await refresh(client, tokens["refresh_token"])).status_code == 401


async def test_password_change_keeps_the_caller_and_ends_the_rest(
    client: httpx.AsyncClient, register: RegisterUser
) -> None:
    caller = await register(password="Old-Password-1")
    other = await login(client, "user@example.com", "Old-Password-1")
    url = f"{API}/users/me/password"
    wrong = await client.post(
        url,
        json={"current_password": "Not-It-1", "new_password": "New-Password-2"},
        headers=bearer(caller["access_token"]),
    )
    assert wrong.status_code == 400
    assert wrong.json()["detail"] == "The current password is incorrect."
    weak = await client.post(
        url,
        json={"current_password": "Old-Password-1", "new_password": "weak"},
        headers=bearer(caller["access_token"]),
    )
    assert weak.status_code == 422
    response = await client.post(
        url,
        json={"current_password": "Old-Password-1", "new_password": "New-Password-2"},
        headers=bearer(caller["access_token"]),
    )
    assert response.status_code == 200
    fresh = response.json()
    assert (await client.get(f"{API}/users/me", headers=bearer(fresh["access_token"]))).is_success
    assert (await refresh(client, fresh["refresh_token"])).status_code == 200
    for stale in (caller, other):
        me = await client.get(f"{API}/users/me", headers=bearer(stale["access_token"]))
        assert me.status_code == 401
        assert (await refresh(client, stale["refresh_token"])).status_code == 401
    assert await login(client, "user@example.com", "New-Password-2")


async def test_refresh_tokens_are_stored_hashed_and_pruned_lazily(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    tokens = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    async with app.state.runtime.sessionmaker() as db:
        records = (await db.exec(select(RefreshToken))).all()
        assert len(records) == 1
        assert len(records[0].jti_hash) == 64
        assert records[0].jti_hash not in tokens["refresh_token"]
        live = await db.get(UserSession, records[0].session_id)
        assert live is not None
        past = utcnow() - timedelta(seconds=1)
        expired = UserSession(user_id=live.user_id, expires_at=past)
        db.add(expired)
        await db.flush()
        db.add(RefreshToken(jti_hash="0" * 64, session_id=expired.id, expires_at=past))
        await db.commit()
    await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    async with app.state.runtime.sessionmaker() as db:
        hashes = {record.jti_hash for record in (await db.exec(select(RefreshToken))).all()}
    assert "0" * 64 not in hashes
    assert len(hashes) == 2


async def test_refresh_validates_its_body(client: httpx.AsyncClient) -> None:
    payloads: list[Any] = [{"refresh_token": ""}, {"refresh_token": None}, {}, []]
    for payload in payloads:
        response = await client.post(f"{API}/auth/refresh", json=payload)
        assert response.status_code == 422, payload


RACES = 20


async def _new_account(
    client: httpx.AsyncClient, admin_headers: dict[str, str], number: int
) -> dict[str, Any]:
    """An account made by the admin: its credentials and id."""
    account = {"email": f"racer-{number}@example.com", "name": "Racer", "password": "Racer-Pass-1"}
    created = await client.post(f"{API}/users", json=account, headers=admin_headers)
    assert created.status_code == 201
    return {**account, "id": created.json()["id"]}


async def test_refresh_racing_logout_all_never_fails(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """The refresh token's row may vanish under the refresh: that is a revoked token."""
    for number in range(RACES):
        account = await _new_account(client, admin_headers, number)
        tokens = await login(client, account["email"], account["password"])
        refreshed, logged_out = await asyncio.gather(
            refresh(client, tokens["refresh_token"]),
            client.post(f"{API}/auth/logout-all", headers=bearer(tokens["access_token"])),
        )
        assert refreshed.status_code in {200, 401}, refreshed.text
        assert logged_out.status_code == 204, logged_out.text
        if refreshed.status_code == 200:  # it came first: logout-all still ended it
            assert (await refresh(client, refreshed.json()["refresh_token"])).status_code == 401


async def test_refresh_racing_the_users_deletion_never_fails(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    for number in range(RACES):
        account = await _new_account(client, admin_headers, number)
        tokens = await login(client, account["email"], account["password"])
        refreshed, deleted = await asyncio.gather(
            refresh(client, tokens["refresh_token"]),
            client.delete(f"{API}/users/{account['id']}", headers=admin_headers),
        )
        assert refreshed.status_code in {200, 401}, refreshed.text
        assert deleted.status_code == 200, deleted.text
        if refreshed.status_code == 200:
            assert (await refresh(client, refreshed.json()["refresh_token"])).status_code == 401


async def test_login_racing_the_users_deletion_never_fails(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    for number in range(RACES):
        account = await _new_account(client, admin_headers, number)
        credentials = {"username": account["email"], "password": account["password"]}
        logged_in, deleted = await asyncio.gather(
            client.post(f"{API}/auth/login", data=credentials),
            client.delete(f"{API}/users/{account['id']}", headers=admin_headers),
        )
        assert logged_in.status_code in {200, 401}, logged_in.text
        assert deleted.status_code == 200, deleted.text
