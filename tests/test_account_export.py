"""Exporting one's own data: GET /users/me/export, one JSON document, no secrets."""

import json

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from tests.helpers import API, USER_PASSWORD, RegisterUser, bearer, create_user, login


async def test_the_export_holds_the_account_and_no_secret(
    client: httpx.AsyncClient, app: FastAPI, register: RegisterUser
) -> None:
    tokens = await register(email="ada@example.com", name="Ada")
    headers = bearer(tokens["access_token"])
    second = await login(client, "ada@example.com", USER_PASSWORD)
    created = await client.post(
        f"{API}/users/me/tokens", json={"name": "nightly", "scope": "read"}, headers=headers
    )
    secret = created.json()["secret"]
    renamed = await client.patch(f"{API}/users/me", json={"name": "Ada K"}, headers=headers)
    assert renamed.status_code == 200

    exported = await client.get(f"{API}/users/me/export", headers=headers)
    assert exported.status_code == 200, exported.text
    user_id = tokens["user"]["id"]
    assert exported.headers["content-disposition"] == (
        f'attachment; filename="account-{user_id}-export.json"'
    )
    document = exported.json()
    assert set(document) == {
        "format",
        "exported_at",
        "profile",
        "sessions",
        "api_keys",
        "audit_events",
    }
    assert document["format"] == "account-export/1"
    assert (document["profile"]["id"], document["profile"]["name"]) == (user_id, "Ada K")
    assert len(document["sessions"]) == 2
    [key] = document["api_keys"]
    assert (key["name"], key["scope"], key["prefix"]) == ("nightly", "read", secret[:12])
    actions = [event["action"] for event in document["audit_events"]]
    assert actions == ["user.api_key_create", "user.update"]

    # Nothing that would let anyone in: no key, no token, no hash of either.
    async with app.state.runtime.engine.connect() as connection:
        stored = (
            await connection.execute(
                text(
                    "SELECT secret_hash FROM api_keys UNION ALL SELECT hashed_password FROM users"
                    " UNION ALL SELECT jti_hash FROM refresh_tokens"
                )
            )
        ).scalars()
        hashes = list(stored)
    body = exported.text
    for value in [secret, tokens["refresh_token"], second["access_token"], *hashes]:
        assert value not in body
    for name in ("secret", "secret_hash", "hashed_password", "token_version", "account_key"):
        assert f'"{name}"' not in body


async def test_an_admins_export_keeps_other_accounts_details_out(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    other = await create_user(
        client, admin_headers, email="other@example.com", name="Other", password=USER_PASSWORD
    )
    document = (await client.get(f"{API}/users/me/export", headers=admin_headers)).json()
    [creation] = [e for e in document["audit_events"] if e["target_id"] == other.json()["id"]]
    assert creation["action"] == "user.create"
    assert creation["details"] == {}  # the event is the admin's; the address is not
    assert "other@example.com" not in json.dumps(document)


async def test_only_a_login_may_export(client: httpx.AsyncClient, register: RegisterUser) -> None:
    headers = bearer((await register())["access_token"])
    created = await client.post(
        f"{API}/users/me/tokens", json={"name": "reader", "scope": "read"}, headers=headers
    )
    by_key = await client.get(f"{API}/users/me/export", headers=bearer(created.json()["secret"]))
    assert (by_key.status_code, by_key.json()["code"]) == (403, "api_key_not_allowed")
    assert (await client.get(f"{API}/users/me/export")).status_code == 401
