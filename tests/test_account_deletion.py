"""Deleting one's own account: DELETE /users/me, at once or after a grace period that a
login cancels, and `backend purge`, which removes the accounts whose grace ended."""

import asyncio
import hashlib
import hmac
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from backend.cli import app as cli
from backend.clock import Clock, utcnow
from backend.config import get_settings
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    TEST_SECRET_KEY,
    USER_PASSWORD,
    RegisterUser,
    bearer,
    create_user,
    login,
    post_login,
)
from tests.smtp import Mailbox, app_with, mail_settings, mailed_token

EMAIL = "leaving@example.com"


def digest(email: str) -> str:
    """The HMAC the docs promise: SHA-256, keyed by a key derived from SECRET_KEY."""
    key = hmac.new(TEST_SECRET_KEY.encode(), b"deleted account email", hashlib.sha256)
    return hmac.new(key.digest(), email.encode(), hashlib.sha256).hexdigest()


async def delete_me(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.delete(f"{API}/users/me", headers=headers)


async def new_key(
    client: httpx.AsyncClient, headers: dict[str, str], scope: str = "write"
) -> dict[str, str]:
    created = await client.post(
        f"{API}/users/me/tokens", json={"name": "script", "scope": scope}, headers=headers
    )
    assert created.status_code == 201, created.text
    return bearer(created.json()["secret"])


async def trail(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_id: int
) -> httpx.Response:
    response = await client.get(
        f"{API}/audit", params={"target_id": user_id}, headers=admin_headers
    )
    assert response.status_code == 200
    return response


async def test_immediate_deletion_removes_the_account_and_keeps_no_address(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    # Made by an admin, so that the trail held the address (the creation's details).
    created = await create_user(
        client, admin_headers, email=EMAIL, name="Leaving", password=USER_PASSWORD
    )
    user_id = created.json()["id"]
    headers = bearer((await login(client, EMAIL, USER_PASSWORD))["access_token"])
    key = await new_key(client, headers)
    assert EMAIL in (await trail(client, admin_headers, user_id)).text

    deleted = await delete_me(client, headers)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deletion_scheduled_at"] is None
    assert (await client.get(f"{API}/users/me", headers=headers)).status_code == 401
    assert (await client.get(f"{API}/users/me", headers=key)).status_code == 401
    assert (await post_login(client, EMAIL, USER_PASSWORD)).status_code == 401
    gone = await client.get(f"{API}/users/{user_id}", headers=admin_headers)
    assert gone.status_code == 404

    events = await trail(client, admin_headers, user_id)
    assert EMAIL not in events.text
    by_action = {event["action"]: event for event in events.json()}
    assert by_action["user.delete"]["actor_id"] == user_id
    assert by_action["user.delete"]["details"]["email_hmac"] == digest(EMAIL)
    assert by_action["user.create"]["details"] == {"email_hmac": digest(EMAIL), "role": "user"}


async def test_a_recent_proof_and_a_login_are_required(
    client: httpx.AsyncClient, register: RegisterUser, clock: Clock
) -> None:
    headers = bearer((await register(email=EMAIL))["access_token"])
    by_key = await delete_me(client, await new_key(client, headers))
    assert (by_key.status_code, by_key.json()["code"]) == (403, "api_key_not_allowed")
    clock.offset += timedelta(seconds=301)
    stale = await delete_me(client, headers)
    assert (stale.status_code, stale.json()["code"]) == (403, "reauthentication_required")
    assert (await client.get(f"{API}/users/me", headers=headers)).status_code == 200


async def test_the_last_active_admin_cannot_delete_themself(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    refused = await delete_me(client, admin_headers)
    assert (refused.status_code, refused.json()["code"]) == (409, "last_admin")
    await create_user(
        client,
        admin_headers,
        email="second@example.com",
        name="Second",
        password=USER_PASSWORD,
        role="admin",
    )
    assert (await delete_me(client, admin_headers)).status_code == 200
    assert (await post_login(client, ADMIN_EMAIL, ADMIN_PASSWORD)).status_code == 401


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`backend` on the database the test's app uses, with its SECRET_KEY."""
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("SECRET_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("STAGE", "test")
    monkeypatch.setenv("BCRYPT_ROUNDS", "4")
    monkeypatch.setenv("AUTO_MIGRATE", "false")
    monkeypatch.delenv("FIRST_ADMIN_EMAIL", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def purge() -> Result:
    # In a thread: the command runs its own event loop.
    return await asyncio.to_thread(CliRunner().invoke, cli, ["purge"])


async def register_on(client: httpx.AsyncClient, email: str) -> dict[str, Any]:
    response = await client.post(
        f"{API}/auth/register", json={"email": email, "name": "Leaving", "password": USER_PASSWORD}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_grace_schedules_a_login_cancels_and_purge_removes_after_it(
    database_url: str, clock: Clock, cli_env: None
) -> None:
    async with app_with(database_url, ACCOUNT_DELETION="grace") as (_, client):
        admin = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
        tokens = await register_on(client, EMAIL)
        user_id = tokens["user"]["id"]
        headers = bearer(tokens["access_token"])
        key = await new_key(client, headers)
        other = bearer((await login(client, EMAIL, USER_PASSWORD))["access_token"])

        scheduled = await delete_me(client, headers)
        assert scheduled.status_code == 200, scheduled.text
        when = datetime.fromisoformat(scheduled.json()["deletion_scheduled_at"])
        assert abs(when - (utcnow() + timedelta(days=30))) < timedelta(minutes=1)
        # Every token and key is refused; the account is still there.
        for refused in (headers, other, key):
            assert (await client.get(f"{API}/users/me", headers=refused)).status_code == 401
        listed = await client.get(
            f"{API}/users",
            params={"deletion_scheduled_after": "1970-01-01T00:00:00Z"},
            headers=admin,
        )
        assert [user["id"] for user in listed.json()] == [user_id]
        assert listed.json()[0]["deletion_scheduled_at"] is not None

        # A login cancels it, and says so; once. An edit like others: a new ETag.
        scheduled_tag = (await client.get(f"{API}/users/{user_id}", headers=admin)).headers["etag"]
        back = await login(client, EMAIL, USER_PASSWORD)
        assert back["deletion_cancelled"] is True
        assert back["user"]["deletion_scheduled_at"] is None
        kept = await client.get(f"{API}/users/{user_id}", headers=admin)
        assert kept.headers["etag"] != scheduled_tag
        assert kept.json()["deletion_scheduled_at"] is None
        assert (await login(client, EMAIL, USER_PASSWORD))["deletion_cancelled"] is False
        actions = [event["action"] for event in (await trail(client, admin, user_id)).json()]
        assert "user.deletion_schedule" in actions
        assert "user.deletion_cancel" in actions

        # Scheduled again: the purge leaves it until the grace ends, then removes it.
        again = bearer(back["access_token"])
        assert (await delete_me(client, again)).status_code == 200
        clock.offset += timedelta(days=29)
        early = await purge()
        assert early.exit_code == 0, early.output
        assert "accounts whose scheduled deletion is due: 0 removed" in early.output
        admin = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
        still = await client.get(f"{API}/users/{user_id}", headers=admin)
        assert still.status_code == 200
        clock.offset += timedelta(days=1, seconds=1)
        admin = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
        due = await purge()
        assert due.exit_code == 0, due.output
        assert "accounts whose scheduled deletion is due: 1 removed" in due.output
        gone = await client.get(f"{API}/users/{user_id}", headers=admin)
        assert gone.status_code == 404
        events = await trail(client, admin, user_id)
        assert EMAIL not in events.text
        [deletion] = [event for event in events.json() if event["action"] == "user.delete"]
        assert deletion["actor_id"] is None
        assert deletion["details"]["email_hmac"] == digest(EMAIL)


async def test_a_scheduled_admin_is_no_successor(database_url: str) -> None:
    """Two admins: one schedules their deletion; the other is then the last."""
    async with app_with(database_url, ACCOUNT_DELETION="grace") as (_, client):
        admin = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
        await create_user(
            client,
            admin,
            email="second@example.com",
            name="B",
            password=USER_PASSWORD,
            role="admin",
        )
        second = bearer((await login(client, "second@example.com", USER_PASSWORD))["access_token"])
        assert (await delete_me(client, admin)).status_code == 200
        refused = await delete_me(client, second)
        assert (refused.status_code, refused.json()["code"]) == (409, "last_admin")


async def test_a_password_reset_is_a_login_too_and_cancels(
    database_url: str, smtp: Mailbox
) -> None:
    settings = mail_settings(smtp.port, ACCOUNT_DELETION="grace")
    async with app_with(database_url, **settings) as (app, client):
        headers = bearer((await register_on(client, EMAIL))["access_token"])
        assert (await delete_me(client, headers)).status_code == 200
        forgot = await client.post(f"{API}/auth/password/forgot", json={"email": EMAIL})
        assert forgot.status_code == 202
        body = {"token": await mailed_token(app, smtp, EMAIL), "new_password": "Fresh-Start-77"}
        reset = await client.post(f"{API}/auth/password/reset", json=body)
        assert reset.status_code == 200, reset.text
        assert reset.json()["deletion_cancelled"] is True
