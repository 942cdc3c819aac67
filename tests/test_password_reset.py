"""Forgotten passwords, through a real SMTP server: ask, read the mail, follow the link."""

import asyncio
from datetime import timedelta

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
    PUBLIC_URL,
    Mailbox,
    app_with,
    delivered,
    mail_settings,
    mailed_token,
    text_of,
)

NEW_PASSWORD = "Brand-New-Secret-7"
EMAIL = "user@example.com"


@pytest.fixture
def settings(database_url: str, smtp: Mailbox) -> Settings:
    return make_settings(database_url, **mail_settings(smtp.port))


async def forgot(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post(f"{API}/auth/password/forgot", json={"email": email})


async def reset(client: httpx.AsyncClient, token: str, password: str) -> httpx.Response:
    body = {"token": token, "new_password": password}
    return await client.post(f"{API}/auth/password/reset", json=body)


async def test_a_reset_link_round_trip_ends_every_session(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, register: RegisterUser
) -> None:
    old_session = await register()
    response = await forgot(client, EMAIL)
    assert response.status_code == 202, response.text

    [message] = await delivered(app, smtp)
    assert message["To"] == EMAIL
    assert "Reset your" in message["Subject"]
    assert f"{PUBLIC_URL}/reset-password#token=" in text_of(message)
    token = await mailed_token(app, smtp, EMAIL)

    answer = await reset(client, token, NEW_PASSWORD)
    assert answer.status_code == 200, answer.text
    assert answer.json()["user"]["email"] == EMAIL
    assert answer.json()["user"]["is_verified"] is True  # the link proved the address
    # The session from before is over, its access token too; the new one works.
    me = await client.get(f"{API}/users/me", headers=bearer(old_session["access_token"]))
    assert me.status_code == 401
    refreshed = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": old_session["refresh_token"]}
    )
    assert refreshed.status_code == 401
    me = await client.get(f"{API}/users/me", headers=bearer(answer.json()["access_token"]))
    assert me.status_code == 200
    assert (await post_login(client, EMAIL, USER_PASSWORD)).status_code == 401
    await login(client, EMAIL, NEW_PASSWORD)

    again = await reset(client, token, "Another-Secret-8")
    assert again.status_code == 400
    assert "already been used" in again.json()["detail"]


async def test_unknown_and_known_addresses_get_the_same_answer_and_only_one_gets_mail(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, register: RegisterUser
) -> None:
    await register()
    known = await forgot(client, EMAIL)
    unknown = await forgot(client, "nobody@example.com")
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    assert known.headers["content-type"] == unknown.headers["content-type"]
    messages = await delivered(app, smtp)
    assert [message["To"] for message in messages] == [EMAIL]


async def test_the_answer_does_not_wait_for_the_mail(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, register: RegisterUser
) -> None:
    """The look-up and the send happen after the response: it is out before either."""
    await register()
    response = await forgot(client, EMAIL)
    assert response.status_code == 202
    assert smtp.messages == []  # nothing sent yet: the work is still queued
    assert len(await delivered(app, smtp)) == 1


async def test_deactivated_and_invited_accounts_get_no_reset_mail(
    client: httpx.AsyncClient,
    app: FastAPI,
    smtp: Mailbox,
    register: RegisterUser,
    admin_headers: dict[str, str],
) -> None:
    user_id = (await register())["user"]["id"]
    deactivate = {"is_active": False}
    await client.patch(f"{API}/users/{user_id}", json=deactivate, headers=admin_headers)
    invited = {"email": "invited@example.com", "name": "Invited"}
    assert (
        await client.post(f"{API}/users/invite", json=invited, headers=admin_headers)
    ).status_code == 201
    await delivered(app, smtp)
    smtp.messages.clear()
    assert (await forgot(client, EMAIL)).status_code == 202
    assert (await forgot(client, "invited@example.com")).status_code == 202
    assert await delivered(app, smtp) == []


async def test_a_link_for_an_account_deactivated_since_is_refused(
    client: httpx.AsyncClient,
    app: FastAPI,
    smtp: Mailbox,
    register: RegisterUser,
    admin_headers: dict[str, str],
) -> None:
    user_id = (await register())["user"]["id"]
    await forgot(client, EMAIL)
    token = await mailed_token(app, smtp, EMAIL)
    deactivate = {"is_active": False}
    await client.patch(f"{API}/users/{user_id}", json=deactivate, headers=admin_headers)
    answer = await reset(client, token, NEW_PASSWORD)
    assert answer.status_code == 403
    assert answer.json()["detail"] == "This account is deactivated."
    # Nothing was written: the link still exists unused, the old password still stands.
    await client.patch(f"{API}/users/{user_id}", json={"is_active": True}, headers=admin_headers)
    await login(client, EMAIL, USER_PASSWORD)


async def test_a_newer_link_revokes_the_older_one(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, register: RegisterUser
) -> None:
    await register()
    await forgot(client, EMAIL)
    first = await mailed_token(app, smtp, EMAIL)
    await forgot(client, EMAIL)
    second = await mailed_token(app, smtp, EMAIL)
    assert first != second
    refused = await reset(client, first, NEW_PASSWORD)
    assert refused.status_code == 400
    assert "not valid" in refused.json()["detail"]
    assert (await reset(client, second, NEW_PASSWORD)).status_code == 200


async def test_links_expire_after_reset_expire_minutes(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, register: RegisterUser, clock: Clock
) -> None:
    await register()
    await forgot(client, EMAIL)
    token = await mailed_token(app, smtp, EMAIL)
    clock.offset += timedelta(minutes=30, seconds=1)
    answer = await reset(client, token, NEW_PASSWORD)
    assert answer.status_code == 400
    assert answer.json()["detail"] == "This link has expired; ask for a new one."


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-token",
        "1." + "a" * 42,  # one character short
        "99999999999." + "a" * 43,  # an id of 11 digits
        "1." + "a" * 42 + "=",
    ],
)
async def test_malformed_tokens_are_422_naming_the_field(
    client: httpx.AsyncClient, token: str
) -> None:
    answer = await reset(client, token, NEW_PASSWORD)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "token"


@pytest.mark.parametrize("token", ["1." + "a" * 43, "4294967295." + "b" * 43])
async def test_well_formed_unknown_tokens_are_400(client: httpx.AsyncClient, token: str) -> None:
    answer = await reset(client, token, NEW_PASSWORD)
    assert answer.status_code == 400
    assert "not valid" in answer.json()["detail"]


async def test_a_right_id_with_a_wrong_secret_is_400(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, register: RegisterUser
) -> None:
    await register()
    await forgot(client, EMAIL)
    link_id, _, secret = (await mailed_token(app, smtp, EMAIL)).partition(".")
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    answer = await reset(client, f"{link_id}.{wrong}", NEW_PASSWORD)
    assert answer.status_code == 400
    assert "not valid" in answer.json()["detail"]


async def test_the_new_password_follows_the_policy(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, register: RegisterUser
) -> None:
    await register()
    await forgot(client, EMAIL)
    token = await mailed_token(app, smtp, EMAIL)
    answer = await reset(client, token, "password1234")
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "new_password"
    assert (await reset(client, token, NEW_PASSWORD)).status_code == 200  # still unused


async def test_two_uses_of_one_link_at_once_one_wins(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, register: RegisterUser
) -> None:
    await register()
    await forgot(client, EMAIL)
    token = await mailed_token(app, smtp, EMAIL)
    answers = await asyncio.gather(
        *(reset(client, token, f"Racing-Password-{n}x") for n in range(4))
    )
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200, 400, 400, 400], [answer.text for answer in answers]
    assert all("already been used" in a.json()["detail"] for a in answers if a.status_code == 400)
    # Exactly the winner's password holds.
    won = next(n for n, answer in enumerate(answers) if answer.status_code == 200)
    await login(client, EMAIL, f"Racing-Password-{won}x")


async def test_issue_and_use_are_in_the_audit_trail(
    client: httpx.AsyncClient,
    app: FastAPI,
    smtp: Mailbox,
    register: RegisterUser,
    admin_headers: dict[str, str],
) -> None:
    user_id = (await register())["user"]["id"]
    await forgot(client, EMAIL)
    await reset(client, await mailed_token(app, smtp, EMAIL), NEW_PASSWORD)
    trail = await client.get(
        f"{API}/audit", params={"target_id": user_id, "sort": "id"}, headers=admin_headers
    )
    events = [(event["action"], event["details"]) for event in trail.json()]
    issued, used, changed = events[-3:]
    assert issued[0] == "user.link_issue"
    assert issued[1]["purpose"] == "reset"
    assert used == ("user.link_use", {"purpose": "reset"})
    assert changed == ("user.update", {"fields": ["password"]})
    assert all(event["actor_id"] in (None, user_id) for event in trail.json())


async def test_rate_limited_per_email_whoever_asks(database_url: str, smtp: Mailbox) -> None:
    overrides = mail_settings(smtp.port, RATE_LIMIT_MAIL_PER_EMAIL="2/hour")
    async with app_with(database_url, **overrides) as (_, client):
        for _ in range(2):
            assert (await forgot(client, "someone@example.com")).status_code == 202
        refused = await forgot(client, "someone@example.com")
        assert refused.status_code == 429
        assert "Retry-After" in refused.headers
        assert (await forgot(client, "other@example.com")).status_code == 202


async def test_rate_limited_per_client_address(database_url: str, smtp: Mailbox) -> None:
    overrides = mail_settings(smtp.port, RATE_LIMIT_MAIL_PER_IP="3/hour")
    async with app_with(database_url, **overrides) as (_, client):
        for n in range(3):
            assert (await forgot(client, f"someone-{n}@example.com")).status_code == 202
        assert (await forgot(client, "someone-else@example.com")).status_code == 429


async def test_admin_password_is_unaffected_by_a_stranger_asking(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox
) -> None:
    """Asking changes nothing until the link is used."""
    assert (await forgot(client, ADMIN_EMAIL)).status_code == 202
    assert len(await delivered(app, smtp)) == 1
    await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)


async def test_a_password_like_the_email_is_refused_by_a_reset_link(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, register: RegisterUser
) -> None:
    await register()
    await forgot(client, EMAIL)
    token = await mailed_token(app, smtp, EMAIL)
    refused = await reset(client, token, "User-2024-!!!!")
    assert refused.status_code == 422, refused.text
    assert [(e["field"], e["code"]) for e in refused.json()["errors"]] == [
        ("password", "password_like_email")
    ]
    assert (await reset(client, token, NEW_PASSWORD)).status_code == 200
