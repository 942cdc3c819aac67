"""Email verification (EMAIL_VERIFICATION=off|optional|required), with the links read
from a real SMTP server."""

from datetime import UTC, datetime

import httpx
import pytest
from alembic import command
from sqlalchemy import Connection, DateTime, bindparam, text

from backend.config import Settings
from backend.db.engine import create_engine
from backend.db.migrate import alembic_config
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    USER_PASSWORD,
    bearer,
    login,
    post_login,
)
from tests.smtp import PUBLIC_URL, Mailbox, app_with, delivered, mail_settings, text_of, token_in

EMAIL = "ada@example.com"
ACCOUNT = {"email": EMAIL, "name": "Ada", "password": USER_PASSWORD}
BEFORE_LINKS = "a7c4e1f20b9d"


async def register(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post(f"{API}/auth/register", json=ACCOUNT)


async def verify(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(f"{API}/auth/verify", json={"token": token})


async def resend(client: httpx.AsyncClient, email: str = EMAIL) -> httpx.Response:
    return await client.post(f"{API}/auth/verify/resend", json={"email": email})


async def test_optional_registration_logs_in_and_mails_a_link(
    database_url: str, smtp: Mailbox
) -> None:
    overrides = mail_settings(smtp.port, EMAIL_VERIFICATION="optional")
    async with app_with(database_url, **overrides) as (app, client):
        registered = await register(client)
        assert registered.status_code == 200, registered.text
        assert registered.json()["user"]["is_verified"] is False
        headers = bearer(registered.json()["access_token"])

        [message] = await delivered(app, smtp)
        assert message["To"] == EMAIL
        assert f"{PUBLIC_URL}/verify-email#token=" in text_of(message)
        token = token_in(message)

        admin = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
        unverified = await client.get(
            f"{API}/users", params={"is_verified": "false"}, headers=admin
        )
        assert [user["email"] for user in unverified.json()] == [EMAIL]

        verified = await verify(client, token)
        assert verified.status_code == 200, verified.text
        assert verified.json()["is_verified"] is True
        assert (await client.get(f"{API}/users/me", headers=headers)).json()["is_verified"]
        listed = await client.get(f"{API}/users", params={"is_verified": "true"}, headers=admin)
        assert sorted(user["email"] for user in listed.json()) == [EMAIL, ADMIN_EMAIL]
        # react-admin's filter reaches the same column.
        simple = await client.get(
            f"{API}/users", params={"filter": '{"is_verified": false}'}, headers=admin
        )
        assert simple.json() == []

        again = await verify(client, token)
        assert again.status_code == 400
        assert "already been used" in again.json()["detail"]

        # Verified: asking for another link sends nothing.
        assert (await resend(client)).status_code == 202
        assert len(await delivered(app, smtp)) == 1

        trail = await client.get(
            f"{API}/audit",
            params={"target_id": registered.json()["user"]["id"], "sort": "id"},
            headers=admin,
        )
        actions = [event["action"] for event in trail.json()]
        assert actions == ["user.link_issue", "user.link_use"]


async def test_required_refuses_login_until_verified(database_url: str, smtp: Mailbox) -> None:
    overrides = mail_settings(smtp.port, EMAIL_VERIFICATION="required")
    async with app_with(database_url, **overrides) as (app, client):
        registered = await register(client)
        assert registered.status_code == 202, registered.text
        assert "verify" in registered.json()["detail"]
        assert "access_token" not in registered.json()

        refused = await post_login(client, EMAIL, USER_PASSWORD)
        assert refused.status_code == 403
        assert "not verified" in refused.json()["detail"]
        assert "/auth/verify/resend" in refused.json()["detail"]
        # A wrong password still says only that.
        assert (await post_login(client, EMAIL, "Wrong-Password-1")).status_code == 401

        first = token_in((await delivered(app, smtp))[0])
        assert (await resend(client)).status_code == 202
        messages = await delivered(app, smtp)
        assert len(messages) == 2
        second = token_in(messages[1])
        # The new link revoked the first.
        assert (await verify(client, first)).status_code == 400
        assert (await verify(client, second)).status_code == 200
        await login(client, EMAIL, USER_PASSWORD)
        # The first admin is verified from the start, or nobody could let anyone in.
        await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)


async def test_resend_answers_alike_for_unknown_addresses(database_url: str, smtp: Mailbox) -> None:
    overrides = mail_settings(smtp.port, EMAIL_VERIFICATION="required")
    async with app_with(database_url, **overrides) as (app, client):
        await register(client)
        await delivered(app, smtp)
        known = await resend(client)
        unknown = await resend(client, "nobody@example.com")
        assert known.status_code == unknown.status_code == 202
        assert known.json() == unknown.json()
        assert [message["To"] for message in await delivered(app, smtp)] == [EMAIL, EMAIL]


async def test_resend_is_rate_limited(database_url: str, smtp: Mailbox) -> None:
    overrides = mail_settings(
        smtp.port, EMAIL_VERIFICATION="optional", RATE_LIMIT_MAIL_PER_EMAIL="1/hour"
    )
    async with app_with(database_url, **overrides) as (_, client):
        assert (await resend(client)).status_code == 202
        refused = await resend(client)
        assert refused.status_code == 429
        assert "Retry-After" in refused.headers


async def test_off_sends_nothing_and_resend_is_403(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    assert settings.EMAIL_VERIFICATION == "off"
    registered = await register(client)
    assert registered.status_code == 200
    assert registered.json()["user"]["is_verified"] is False
    answer = await resend(client)
    assert answer.status_code == 403
    assert answer.json()["detail"] == "Email verification is off on this server."


@pytest.mark.parametrize("token", ["", "12", "1." + "x" * 44])
async def test_malformed_verify_tokens_are_422(client: httpx.AsyncClient, token: str) -> None:
    answer = await verify(client, token)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "token"


def _upgrade_with_an_account(connection: Connection) -> list[tuple[str, bool]]:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, BEFORE_LINKS)
    now = bindparam("now", datetime.now(UTC), type_=DateTime(timezone=True))
    connection.execute(
        text(
            "INSERT INTO users (email, name, role, is_active, hashed_password, token_version,"
            " account_key, version, created_at, updated_at) VALUES ('old@example.com', 'Old',"
            " 'user', true, 'x', 0, 'k', 1, :now, :now)"
        ).bindparams(now)
    )
    command.upgrade(config, "head")
    rows = connection.execute(text("SELECT email, is_verified FROM users")).all()
    connection.execute(text("DELETE FROM users"))
    return [(email, bool(verified)) for email, verified in rows]


async def test_the_migration_marks_existing_accounts_verified(settings: Settings) -> None:
    """Turning EMAIL_VERIFICATION=required on later must not lock out everyone at once."""
    engine = create_engine(settings)
    try:
        async with engine.begin() as connection:
            rows = await connection.run_sync(_upgrade_with_an_account)
    finally:
        await engine.dispose()
    assert rows == [("old@example.com", True)]
