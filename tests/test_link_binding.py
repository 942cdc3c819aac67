"""Mailed links are bound to the address they went to and die with the change that makes
them wrong; credentials change only with proof of who asks (no API key, one's own
password only with the current one)."""

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from backend.config import Settings
from tests.helpers import ADMIN_EMAIL, API, USER_PASSWORD, RegisterUser, bearer, make_settings
from tests.smtp import Mailbox, delivered, mail_settings, mailed_token, token_in

NEW_PASSWORD = "Battery-Staple-Horse-7"


@pytest.fixture
def settings(database_url: str, smtp: Mailbox) -> Settings:
    return make_settings(database_url, **mail_settings(smtp.port), EMAIL_VERIFICATION="optional")


async def reset_token(app: FastAPI, smtp: Mailbox, to: str) -> str:
    """The newest reset link mailed to this address (registration mailed a check too)."""
    mail = [m for m in await delivered(app, smtp) if m["To"] == to and "Reset" in m["Subject"]]
    return token_in(mail[-1])


async def set_password(
    client: httpx.AsyncClient, token: str, action: str = "set"
) -> httpx.Response:
    """Accept an invitation (set) or reset a forgotten password (reset) with a link."""
    body = {"token": token, "new_password": NEW_PASSWORD}
    return await client.post(f"{API}/auth/password/{action}", json=body)


async def user_row(
    client: httpx.AsyncClient, headers: dict[str, str], user_id: int
) -> dict[str, Any]:
    response = await client.get(f"{API}/users/{user_id}", headers=headers)
    assert response.status_code == 200, response.text
    row: dict[str, Any] = response.json()
    return row


async def test_an_invitation_to_a_mistyped_address_dies_when_the_admin_corrects_it(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, admin_headers: dict[str, str]
) -> None:
    invited = await client.post(
        f"{API}/users/invite",
        json={"email": "grace@exmaple.com", "name": "Grace", "role": "admin"},
        headers=admin_headers,
    )
    assert invited.status_code == 201, invited.text
    user_id = invited.json()["id"]
    typo_token = await mailed_token(app, smtp, "grace@exmaple.com")
    corrected = await client.patch(
        f"{API}/users/{user_id}", json={"email": "grace@example.com"}, headers=admin_headers
    )
    assert corrected.status_code == 200, corrected.text
    refused = await set_password(client, typo_token)
    assert (refused.status_code, refused.json()["code"]) == (400, "link_invalid")
    row = await user_row(client, admin_headers, user_id)
    assert (row["is_active"], row["is_verified"]) == (False, False)
    # A new invitation goes to the corrected address, and works.
    reinvited = await client.post(f"{API}/users/{user_id}/invite", headers=admin_headers)
    assert reinvited.status_code == 202, reinvited.text
    accepted = await set_password(client, await mailed_token(app, smtp, "grace@example.com"))
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["user"]["email"] == "grace@example.com"


async def test_a_link_is_refused_once_the_address_differs_however_it_changed(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, register: RegisterUser
) -> None:
    """Even a change that bypasses the API (a row edited by hand) cannot let a link mailed
    to the old address act on the account: the address is compared at use."""
    await register(email="ada@example.com")
    forgot = await client.post(f"{API}/auth/password/forgot", json={"email": "ada@example.com"})
    assert forgot.status_code == 202
    token = await reset_token(app, smtp, "ada@example.com")
    async with app.state.runtime.engine.begin() as connection:
        await connection.execute(
            text("UPDATE users SET email = 'ada.l@example.com' WHERE email = 'ada@example.com'")
        )
    refused = await set_password(client, token, "reset")
    assert (refused.status_code, refused.json()["code"]) == (400, "link_address_changed")


async def test_an_email_change_unverifies_and_kills_the_verification_link(
    client: httpx.AsyncClient,
    app: FastAPI,
    smtp: Mailbox,
    register: RegisterUser,
    admin_headers: dict[str, str],
) -> None:
    verified_user = (await register(email="lin@example.com"))["user"]
    used = await client.post(
        f"{API}/auth/verify", json={"token": await mailed_token(app, smtp, "lin@example.com")}
    )
    assert used.status_code == 200, used.text
    pending_user = (await register(email="mo@example.com"))["user"]
    pending_link = await mailed_token(app, smtp, "mo@example.com")
    for user, new_email in (
        (verified_user, "lin.new@example.com"),
        (pending_user, "mo.new@example.com"),
    ):
        changed = await client.patch(
            f"{API}/users/{user['id']}", json={"email": new_email}, headers=admin_headers
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["is_verified"] is False
    refused = await client.post(f"{API}/auth/verify", json={"token": pending_link})
    assert (refused.status_code, refused.json()["code"]) == (400, "link_invalid")


async def test_a_password_change_kills_a_pending_reset_link(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, register: RegisterUser
) -> None:
    tokens = await register(email="ken@example.com")
    forgot = await client.post(f"{API}/auth/password/forgot", json={"email": "ken@example.com"})
    assert forgot.status_code == 202
    pending = await reset_token(app, smtp, "ken@example.com")
    changed = await client.post(
        f"{API}/users/me/password",
        json={"current_password": USER_PASSWORD, "new_password": "Another-Good-Pass-42"},
        headers=bearer(tokens["access_token"]),
    )
    assert changed.status_code == 200, changed.text
    refused = await set_password(client, pending, "reset")
    assert (refused.status_code, refused.json()["code"]) == (400, "link_invalid")


async def test_a_deactivation_kills_a_pending_invitation(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, admin_headers: dict[str, str]
) -> None:
    invited = await client.post(
        f"{API}/users/invite",
        json={"email": "bob@example.com", "name": "Bob"},
        headers=admin_headers,
    )
    user_id = invited.json()["id"]
    token = await mailed_token(app, smtp, "bob@example.com")
    deactivated = await client.patch(
        f"{API}/users/{user_id}", json={"is_active": False}, headers=admin_headers
    )
    assert deactivated.status_code == 200, deactivated.text
    refused = await set_password(client, token)
    assert refused.status_code == 400
    assert (await user_row(client, admin_headers, user_id))["is_active"] is False


async def test_an_admin_sets_their_own_password_only_with_the_current_one(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    me = (await client.get(f"{API}/users/me", headers=admin_headers)).json()
    assert me["email"] == ADMIN_EMAIL
    for method in ("patch", "put"):
        body = {"password": NEW_PASSWORD}
        if method == "put":
            body |= {key: me[key] for key in ("email", "name", "role", "is_active")}
        refused = await client.request(
            method.upper(), f"{API}/users/{me['id']}", json=body, headers=admin_headers
        )
        assert (refused.status_code, refused.json()["code"]) == (403, "current_password_required")
    renamed = await client.patch(
        f"{API}/users/{me['id']}", json={"name": "Still Admin"}, headers=admin_headers
    )
    assert renamed.status_code == 200


async def test_no_api_key_sets_a_password_or_an_email(
    client: httpx.AsyncClient, register: RegisterUser, admin_headers: dict[str, str]
) -> None:
    user = (await register(email="eve@example.com"))["user"]
    created = await client.post(
        f"{API}/users/me/tokens",
        json={"name": "admin script", "scope": "write"},
        headers=admin_headers,
    )
    assert created.status_code == 201, created.text
    key = bearer(created.json()["secret"])
    for change in ({"password": NEW_PASSWORD}, {"email": "eve.other@example.com"}):
        refused = await client.patch(f"{API}/users/{user['id']}", json=change, headers=key)
        assert (refused.status_code, refused.json()["code"]) == (403, "api_key_not_allowed")
    same_email = await client.patch(
        f"{API}/users/{user['id']}", json={"email": "eve@example.com", "name": "Eve"}, headers=key
    )
    assert same_email.status_code == 200, same_email.text
