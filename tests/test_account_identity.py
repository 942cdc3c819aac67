"""A token speaks for the account it was issued to, never for a later one with its id."""

from typing import Any

import httpx
from fastapi import FastAPI

from backend.models import User, UserRole
from tests.helpers import API, USER_PASSWORD, RegisterUser, bearer, login

SUCCESSOR = {"email": "successor@example.com", "name": "Successor", "password": USER_PASSWORD}


async def _old_tokens_refused(client: httpx.AsyncClient, leaver: dict[str, Any]) -> None:
    old_access = bearer(leaver["access_token"])
    me = await client.get(f"{API}/users/me", headers=old_access)
    assert me.status_code == 401, me.text
    assert me.json()["detail"] == "The token is invalid or has been revoked."
    backdoor = {"email": "backdoor@example.com", "name": "Backdoor", "password": USER_PASSWORD}
    assert (await client.post(f"{API}/users", json=backdoor, headers=old_access)).status_code == 401
    refreshed = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": leaver["refresh_token"]}
    )
    assert refreshed.status_code == 401, refreshed.text


async def test_a_deleted_users_id_goes_to_no_later_account(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    leaver = await register("leaver@example.com")
    leaver_id = leaver["user"]["id"]
    deleted = await client.delete(f"{API}/users/{leaver_id}", headers=admin_headers)
    assert deleted.status_code == 200
    for number in range(3):
        account = {**SUCCESSOR, "email": f"next-{number}@example.com", "role": "admin"}
        created = await client.post(f"{API}/users", json=account, headers=admin_headers)
        assert created.status_code == 201
        assert created.json()["id"] > leaver_id
    await _old_tokens_refused(client, leaver)


async def test_an_account_given_an_old_id_by_hand_is_not_the_old_account(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    """As after restoring a backup or inserting a row by hand: the id comes back, the
    account key does not."""
    leaver = await register("leaver@example.com")
    leaver_id = leaver["user"]["id"]
    assert (
        await client.delete(f"{API}/users/{leaver_id}", headers=admin_headers)
    ).status_code == 200
    runtime = app.state.runtime
    async with runtime.sessionmaker() as db:
        db.add(
            User(
                id=leaver_id,
                email=SUCCESSOR["email"],
                name=SUCCESSOR["name"],
                role=UserRole.ADMIN,
                hashed_password=await runtime.password_hasher.hash(SUCCESSOR["password"]),
            )
        )
        await db.commit()
    successor = await login(client, SUCCESSOR["email"], SUCCESSOR["password"])
    assert successor["user"]["id"] == leaver_id
    await _old_tokens_refused(client, leaver)
    # Nothing about the account that has the id now shows: deactivated, it is still 401.
    deactivate = {"is_active": False}
    response = await client.patch(
        f"{API}/users/{leaver_id}", json=deactivate, headers=admin_headers
    )
    assert response.status_code == 200
    await _old_tokens_refused(client, leaver)


async def test_the_account_key_never_leaves_the_server(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    tokens = await register()
    answers = [
        tokens,
        (await client.get(f"{API}/users/me", headers=admin_headers)).json(),
        (await client.get(f"{API}/users", headers=admin_headers)).json(),
        (await client.get(f"{API}/users/{tokens['user']['id']}", headers=admin_headers)).json(),
        (await client.get(f"{API}/openapi.json")).json(),
    ]
    for answer in answers:
        assert "account_key" not in str(answer)
