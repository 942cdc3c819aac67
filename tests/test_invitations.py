"""Invitations: an admin makes an account without a password, its owner chooses one
from a link received through a real SMTP server."""

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
    delivered,
    html_of,
    mail_settings,
    mailed_token,
    text_of,
)

INVITEE = {"email": "grace@example.com", "name": "Grace Hopper"}
PASSWORD = "Compiler-Pioneer-1"


@pytest.fixture
def settings(database_url: str, smtp: Mailbox) -> Settings:
    return make_settings(database_url, **mail_settings(smtp.port))


async def invite(
    client: httpx.AsyncClient, headers: dict[str, str], **fields: str
) -> httpx.Response:
    return await client.post(f"{API}/users/invite", json={**INVITEE, **fields}, headers=headers)


async def set_password(client: httpx.AsyncClient, token: str, password: str) -> httpx.Response:
    body = {"token": token, "new_password": password}
    return await client.post(f"{API}/auth/password/set", json=body)


async def test_an_invitation_round_trip(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, admin_headers: dict[str, str]
) -> None:
    created = await invite(client, admin_headers, role="admin")
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["is_active"] is False
    assert user["is_verified"] is False
    assert user["role"] == "admin"
    assert created.headers["Location"].endswith(f"/users/{user['id']}")

    [message] = await delivered(app, smtp)
    assert message["To"] == INVITEE["email"]
    assert message["From"] == "Users API <noreply@example.com>"
    assert "invited" in message["Subject"]
    assert "Hello Grace Hopper" in text_of(message)
    assert f'<a href="{PUBLIC_URL}/accept-invite#token=' in html_of(message)
    token = await mailed_token(app, smtp, INVITEE["email"])

    # No password yet: no login, with the message any wrong password gets.
    refused = await post_login(client, INVITEE["email"], PASSWORD)
    assert refused.status_code == 401
    assert refused.json()["detail"] == "Incorrect email or password."

    accepted = await set_password(client, token, PASSWORD)
    assert accepted.status_code == 200, accepted.text
    body = accepted.json()
    assert set(body) >= {"access_token", "refresh_token", "token_type", "expires_in", "user"}
    assert body["user"]["is_active"] is True
    assert body["user"]["is_verified"] is True
    me = await client.get(f"{API}/users/me", headers=bearer(body["access_token"]))
    assert me.json()["email"] == INVITEE["email"]
    await login(client, INVITEE["email"], PASSWORD)

    reused = await set_password(client, token, "Another-Choice-2")
    assert reused.status_code == 400
    assert "already been used" in reused.json()["detail"]


async def test_resending_revokes_the_previous_link(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, admin_headers: dict[str, str]
) -> None:
    user_id = (await invite(client, admin_headers)).json()["id"]
    first = await mailed_token(app, smtp, INVITEE["email"])
    resent = await client.post(f"{API}/users/{user_id}/invite", headers=admin_headers)
    assert resent.status_code == 202, resent.text
    second = await mailed_token(app, smtp, INVITEE["email"])
    assert first != second
    old = await set_password(client, first, PASSWORD)
    assert old.status_code == 400
    assert "not valid" in old.json()["detail"]
    assert (await set_password(client, second, PASSWORD)).status_code == 200

    again = await client.post(f"{API}/users/{user_id}/invite", headers=admin_headers)
    assert again.status_code == 409
    assert "accepted" in again.json()["detail"]


async def test_only_admins_invite(
    client: httpx.AsyncClient, user_headers: dict[str, str], smtp: Mailbox, app: FastAPI
) -> None:
    assert (await invite(client, user_headers)).status_code == 403
    assert (await client.post(f"{API}/users/1/invite", headers=user_headers)).status_code == 403
    assert (await invite(client, {})).status_code == 401
    assert await delivered(app, smtp) == []


async def test_an_invitation_to_a_taken_email_is_409_and_sends_nothing(
    client: httpx.AsyncClient,
    app: FastAPI,
    smtp: Mailbox,
    admin_headers: dict[str, str],
    register: RegisterUser,
) -> None:
    await register(email=INVITEE["email"])
    taken = await invite(client, admin_headers)
    assert taken.status_code == 409
    assert await delivered(app, smtp) == []


async def test_reinviting_a_missing_user_is_404(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    answer = await client.post(f"{API}/users/999999/invite", headers=admin_headers)
    assert answer.status_code == 404


async def test_reinviting_a_user_with_a_password_is_409(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    user_id = (await register())["user"]["id"]
    answer = await client.post(f"{API}/users/{user_id}/invite", headers=admin_headers)
    assert answer.status_code == 409


async def test_an_invitation_link_cannot_reset_and_a_reset_link_cannot_accept(
    client: httpx.AsyncClient,
    app: FastAPI,
    smtp: Mailbox,
    admin_headers: dict[str, str],
    register: RegisterUser,
) -> None:
    await invite(client, admin_headers)
    invitation = await mailed_token(app, smtp, INVITEE["email"])
    body = {"token": invitation, "new_password": PASSWORD}
    wrong = await client.post(f"{API}/auth/password/reset", json=body)
    assert wrong.status_code == 400
    assert wrong.json()["detail"] == (
        "This link is for accepting an invitation, not for resetting a password."
    )
    verify = await client.post(f"{API}/auth/verify", json={"token": invitation})
    assert verify.status_code == 400
    assert "not for verifying an email address" in verify.json()["detail"]

    await register()
    await client.post(f"{API}/auth/password/forgot", json={"email": "user@example.com"})
    reset = await mailed_token(app, smtp, "user@example.com")
    wrong = await set_password(client, reset, PASSWORD)
    assert wrong.status_code == 400
    assert "not for accepting an invitation" in wrong.json()["detail"]
    # Neither refusal used the links up.
    assert (await set_password(client, invitation, PASSWORD)).status_code == 200
    await login(client, "user@example.com", USER_PASSWORD)


async def test_invitations_expire_after_invite_expire_hours(
    client: httpx.AsyncClient,
    app: FastAPI,
    smtp: Mailbox,
    admin_headers: dict[str, str],
    clock: Clock,
) -> None:
    user_id = (await invite(client, admin_headers)).json()["id"]
    token = await mailed_token(app, smtp, INVITEE["email"])
    clock.offset += timedelta(hours=72, seconds=1)
    expired = await set_password(client, token, PASSWORD)
    assert expired.status_code == 400
    assert expired.json()["detail"] == "This link has expired; ask for a new one."
    # A new invitation works where the old one ran out.
    admin_headers = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
    await client.post(f"{API}/users/{user_id}/invite", headers=admin_headers)
    fresh = await mailed_token(app, smtp, INVITEE["email"])
    assert (await set_password(client, fresh, PASSWORD)).status_code == 200


async def test_a_deleted_invitee_takes_the_link_along(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, admin_headers: dict[str, str]
) -> None:
    user_id = (await invite(client, admin_headers)).json()["id"]
    token = await mailed_token(app, smtp, INVITEE["email"])
    assert (await client.delete(f"{API}/users/{user_id}", headers=admin_headers)).status_code == 200
    gone = await set_password(client, token, PASSWORD)
    assert gone.status_code == 400


async def test_invitation_and_acceptance_are_audited(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, admin_headers: dict[str, str]
) -> None:
    user_id = (await invite(client, admin_headers)).json()["id"]
    await set_password(client, await mailed_token(app, smtp, INVITEE["email"]), PASSWORD)
    trail = await client.get(
        f"{API}/audit", params={"target_id": user_id, "sort": "id"}, headers=admin_headers
    )
    events = [(event["action"], event["details"]) for event in trail.json()]
    assert events[0] == (
        "user.create",
        {"email": INVITEE["email"], "role": "user", "invited": True},
    )
    assert events[1][0] == "user.link_issue"
    assert events[1][1]["purpose"] == "invite"
    assert events[2:] == [
        ("user.link_use", {"purpose": "invite"}),
        ("user.update", {"fields": ["is_active", "password"]}),
    ]
    actors = [event["actor_id"] for event in trail.json()]
    assert actors[2:] == [user_id, user_id]
    assert actors[0] == actors[1] != user_id  # the admin


async def test_the_invitee_password_follows_the_policy(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, admin_headers: dict[str, str]
) -> None:
    await invite(client, admin_headers)
    token = await mailed_token(app, smtp, INVITEE["email"])
    short = await set_password(client, token, "short")
    assert short.status_code == 422
    assert short.json()["errors"][0]["field"] == "new_password"


async def test_a_password_like_the_email_is_refused_by_the_link(
    client: httpx.AsyncClient, app: FastAPI, smtp: Mailbox, admin_headers: dict[str, str]
) -> None:
    await invite(client, admin_headers)
    token = await mailed_token(app, smtp, INVITEE["email"])
    refused = await set_password(client, token, "Grace-1906-!!")
    assert refused.status_code == 422, refused.text
    assert [(e["field"], e["code"]) for e in refused.json()["errors"]] == [
        ("password", "password_like_email")
    ]
    # The link is not used up by a refused password.
    assert (await set_password(client, token, PASSWORD)).status_code == 200
