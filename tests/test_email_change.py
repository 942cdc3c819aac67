"""Changing one's own email: POST /users/me/email mails a link to the new address and a
notice to the old one; POST /auth/email/confirm makes the change."""

from datetime import timedelta
from email.message import EmailMessage

import httpx
import pytest
from fastapi import FastAPI

from backend.clock import Clock
from backend.config import Settings
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    USER_PASSWORD,
    RegisterUser,
    bearer,
    login,
    make_settings,
    post_login,
)
from tests.smtp import (
    Mailbox,
    app_with,
    delivered,
    mail_settings,
    mailed_token,
    text_of,
    token_in,
)

OLD = "ada@example.com"
NEW = "ada.king@example.com"


@pytest.fixture
def settings(database_url: str, smtp: Mailbox) -> Settings:
    return make_settings(database_url, **mail_settings(smtp.port))


async def ask(client: httpx.AsyncClient, headers: dict[str, str], email: str) -> httpx.Response:
    return await client.post(f"{API}/users/me/email", json={"email": email}, headers=headers)


async def confirm(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(f"{API}/auth/email/confirm", json={"token": token})


async def mail_to(app: FastAPI, smtp: Mailbox, to: str) -> list[EmailMessage]:
    return [message for message in await delivered(app, smtp) if message["To"] == to]


async def me(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.get(f"{API}/users/me", headers=headers)


async def test_the_link_to_the_new_address_changes_it_and_ends_the_other_sessions(
    client: httpx.AsyncClient,
    app: FastAPI,
    smtp: Mailbox,
    register: RegisterUser,
    admin_headers: dict[str, str],
) -> None:
    asker = bearer((await register(email=OLD))["access_token"])
    other = bearer((await login(client, OLD, USER_PASSWORD))["access_token"])
    asked = await ask(client, asker, NEW)
    assert asked.status_code == 202, asked.text
    assert (await me(client, asker)).json()["email"] == OLD  # nothing changes yet
    [link_mail] = await mail_to(app, smtp, NEW)
    assert "/confirm-email#token=" in text_of(link_mail)
    assert f"Hello {NEW}," in text_of(link_mail)  # not the name: the reader proved nothing

    changed = await confirm(client, token_in(link_mail))
    assert changed.status_code == 200, changed.text
    assert (changed.json()["email"], changed.json()["is_verified"]) == (NEW, True)
    # The session that asked stays; the other ends.
    assert (await me(client, asker)).json()["email"] == NEW
    ended = await me(client, other)
    assert (ended.status_code, ended.json()["code"]) == (401, "token_revoked")
    assert (await post_login(client, OLD, USER_PASSWORD)).status_code == 401
    assert (await post_login(client, NEW, USER_PASSWORD)).status_code == 200

    user_id = changed.json()["id"]
    trail = await client.get(f"{API}/audit", params={"target_id": user_id}, headers=admin_headers)
    events = [(event["action"], event["details"]) for event in trail.json()]
    assert ("user.link_use", {"purpose": "email_change"}) in events
    assert ("user.update", {"fields": ["email"]}) in events
    assert NEW not in trail.text
    assert OLD not in trail.text


async def test_the_old_address_is_told_what_happened_and_what_to_do(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, register: RegisterUser
) -> None:
    headers = bearer((await register(email=OLD, name="Ada"))["access_token"])
    assert (await ask(client, headers, NEW)).status_code == 202
    [notice] = await mail_to(app, smtp, OLD)
    text = text_of(notice)
    assert "#token=" not in text  # nothing to follow
    assert "http" not in text
    assert f"from {OLD} to {NEW}" in text
    assert "change your password" in text
    assert "only if it is followed" in text
    assert text.startswith(f"Hello {OLD},")  # an unverified address greets itself


async def test_a_recent_proof_and_a_login_are_required(
    client: httpx.AsyncClient, register: RegisterUser, clock: Clock
) -> None:
    headers = bearer((await register(email=OLD))["access_token"])
    key = await client.post(
        f"{API}/users/me/tokens", json={"name": "script", "scope": "write"}, headers=headers
    )
    by_key = await ask(client, bearer(key.json()["secret"]), NEW)
    assert (by_key.status_code, by_key.json()["code"]) == (403, "api_key_not_allowed")
    clock.offset += timedelta(seconds=301)
    stale = await ask(client, headers, NEW)
    assert (stale.status_code, stale.json()["code"]) == (403, "reauthentication_required")
    proved = await client.post(
        f"{API}/auth/reauthenticate", json={"password": USER_PASSWORD}, headers=headers
    )
    assert proved.status_code == 200
    assert (await ask(client, headers, NEW)).status_code == 202


@pytest.mark.parametrize(
    ("taken_by", "wanted", "code"),
    [
        ("modern@example.com", "modern@example.com", "email_taken"),
        ("modern@example.com", "MODERN@example.com", "email_taken"),
        ("modern@example.com", "rnodern@example.com", "email_lookalike"),
    ],
)
async def test_a_taken_or_look_alike_address_is_refused_at_request(
    client: httpx.AsyncClient,
    app: FastAPI,
    smtp: Mailbox,
    register: RegisterUser,
    taken_by: str,
    wanted: str,
    code: str,
) -> None:
    await register(email=taken_by)
    headers = bearer((await register(email=OLD))["access_token"])
    refused = await ask(client, headers, wanted)
    assert (refused.status_code, refused.json()["code"]) == (409, code)
    assert await mail_to(app, smtp, OLD) == []


async def test_the_same_address_is_a_field_error(
    client: httpx.AsyncClient, register: RegisterUser
) -> None:
    headers = bearer((await register(email=OLD))["access_token"])
    refused = await ask(client, headers, OLD.upper())
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["code"] == "email_unchanged"
    malformed = await ask(client, headers, "not an address")
    assert malformed.status_code == 422


@pytest.mark.parametrize(
    ("taken_meanwhile", "code"),
    [("modern@example.com", "email_taken"), ("rnodern@example.com", "email_lookalike")],
)
async def test_an_address_taken_meanwhile_is_refused_at_confirmation(
    client: httpx.AsyncClient,
    app: FastAPI,
    smtp: Mailbox,
    register: RegisterUser,
    taken_meanwhile: str,
    code: str,
) -> None:
    headers = bearer((await register(email=OLD))["access_token"])
    assert (await ask(client, headers, "modern@example.com")).status_code == 202
    token = await mailed_token(app, smtp, "modern@example.com")
    await register(email=taken_meanwhile)
    refused = await confirm(client, token)
    assert (refused.status_code, refused.json()["code"]) == (409, code)
    current = await me(client, headers)
    assert current.json()["email"] == OLD  # nothing half-written; still signed in


async def test_a_link_works_once_and_until_it_expires(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, register: RegisterUser, clock: Clock
) -> None:
    headers = bearer((await register(email=OLD))["access_token"])
    assert (await ask(client, headers, NEW)).status_code == 202
    token = await mailed_token(app, smtp, NEW)
    assert (await confirm(client, token)).status_code == 200
    reused = await confirm(client, token)
    assert (reused.status_code, reused.json()["code"]) == (400, "link_used")

    assert (await ask(client, headers, "ada.k@example.com")).status_code == 202
    late = await mailed_token(app, smtp, "ada.k@example.com")
    clock.offset += timedelta(hours=24, seconds=1)  # EMAIL_CHANGE_EXPIRE_HOURS
    expired = await confirm(client, late)
    assert (expired.status_code, expired.json()["code"]) == (400, "link_expired")


async def test_a_newer_request_replaces_the_pending_one(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, register: RegisterUser
) -> None:
    headers = bearer((await register(email=OLD))["access_token"])
    assert (await ask(client, headers, "first@example.com")).status_code == 202
    first = await mailed_token(app, smtp, "first@example.com")
    assert (await ask(client, headers, NEW)).status_code == 202
    replaced = await confirm(client, first)
    assert (replaced.status_code, replaced.json()["code"]) == (400, "link_invalid")
    assert (await confirm(client, await mailed_token(app, smtp, NEW))).status_code == 200


async def test_links_for_the_old_address_die_with_the_change(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, register: RegisterUser
) -> None:
    headers = bearer((await register(email=OLD))["access_token"])
    forgot = await client.post(f"{API}/auth/password/forgot", json={"email": OLD})
    assert forgot.status_code == 202
    reset = await mailed_token(app, smtp, OLD)
    assert (await ask(client, headers, NEW)).status_code == 202
    assert (await confirm(client, await mailed_token(app, smtp, NEW))).status_code == 200
    body = {"token": reset, "new_password": "Battery-Staple-Horse-7"}
    refused = await client.post(f"{API}/auth/password/reset", json=body)
    assert (refused.status_code, refused.json()["code"]) == (400, "link_invalid")


async def test_a_password_change_or_an_admin_edit_kills_a_pending_change(
    client: httpx.AsyncClient,
    app: FastAPI,
    smtp: Mailbox,
    register: RegisterUser,
    admin_headers: dict[str, str],
) -> None:
    """Whoever asked may be whom the password change shuts out."""
    headers = bearer((await register(email=OLD))["access_token"])
    assert (await ask(client, headers, NEW)).status_code == 202
    pending = await mailed_token(app, smtp, NEW)
    changed = await client.post(
        f"{API}/users/me/password",
        json={"current_password": USER_PASSWORD, "new_password": "Another-Good-Pass-42"},
        headers=headers,
    )
    assert changed.status_code == 200, changed.text
    refused = await confirm(client, pending)
    assert (refused.status_code, refused.json()["code"]) == (400, "link_invalid")

    headers = bearer(changed.json()["access_token"])
    assert (await ask(client, headers, NEW)).status_code == 202
    pending = await mailed_token(app, smtp, NEW)
    user_id = changed.json()["user"]["id"]
    edited = await client.patch(
        f"{API}/users/{user_id}", json={"email": "ada.l@example.com"}, headers=admin_headers
    )
    assert edited.status_code == 200  # an admin's change works as before
    refused = await confirm(client, pending)
    assert (refused.status_code, refused.json()["code"]) == (400, "link_invalid")


async def test_off_without_mail(database_url: str) -> None:
    async with app_with(database_url, EMAIL_CHANGE_ENABLED=False) as (_, client):
        headers = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
        refused = await ask(client, headers, NEW)
        assert (refused.status_code, refused.json()["code"]) == (403, "email_change_disabled")
