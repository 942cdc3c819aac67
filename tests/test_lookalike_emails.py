"""No two accounts whose emails render alike: ASCII by default, TR39 skeletons always."""

# Look-alike characters (fullwidth, Cyrillic, Greek) are what these tests are about.
# ruff: noqa: RUF001

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from alembic import command
from sqlalchemy import Connection, text

from backend.confusables import email_skeleton, skeleton
from backend.db.engine import create_engine
from backend.db.migrate import alembic_config
from backend.main import create_app
from backend.models import User
from backend.rules import AccountRules, use_account_rules
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    USER_PASSWORD,
    RegisterUser,
    bearer,
    login,
    make_settings,
)

ROOT = "root@example.com"
LOOKALIKES = {
    "fullwidth": "ｒｏｏｔ@example.com",
    "Cyrillic о": "rооt@example.com",
    "Greek ο": "rοοt@example.com",
    "mixed scripts": "rоοt@example.com",
}


@pytest.fixture(autouse=True)
def default_rules() -> Iterator[None]:
    yield
    use_account_rules(AccountRules())


async def _register(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post(
        f"{API}/auth/register", json={"email": email, "name": "N", "password": USER_PASSWORD}
    )


@pytest.mark.parametrize(
    "email", [*LOOKALIKES.values(), "admİn@example.com", "root@bücher.de", "root@xn--e1awd7f.com"]
)
async def test_by_default_only_ascii_addresses_are_accepted(
    client: httpx.AsyncClient, email: str
) -> None:
    response = await _register(client, email)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert [error["field"] for error in errors] == ["email"]
    assert "valid email" in errors[0]["message"]


async def test_a_fullwidth_domain_is_the_ascii_domain(
    client: httpx.AsyncClient, register: RegisterUser
) -> None:
    # IDNA (UTS 46) folds fullwidth letters of a domain to ASCII: the same address.
    await register(email=ROOT)
    response = await _register(client, "root@ｅｘａｍｐｌｅ.ｃｏｍ")
    assert response.status_code == 409
    assert response.json()["detail"] == "A user with this email already exists."


async def test_ascii_lookalikes_are_refused_too(
    client: httpx.AsyncClient, register: RegisterUser, admin_headers: dict[str, str]
) -> None:
    await register(email="modern@example.com")
    await register(email="bill@example.com")
    for email in ("rnodern@example.com", "bi11@example.com", "modern@exarnple.com"):
        response = await _register(client, email)
        assert response.status_code == 409, email
        assert "looks the same" in response.json()["detail"]
    # The same holds when an admin changes an email to a look-alike.
    other = await register(email="other@example.com")
    patched = await client.patch(
        f"{API}/users/{other['user']['id']}",
        headers=admin_headers,
        json={"email": "bi1l@example.com"},
    )
    assert patched.status_code == 409
    assert "looks the same" in patched.json()["detail"]


@pytest.fixture
async def international_client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(make_settings(database_url, ALLOW_INTERNATIONAL_EMAILS=True))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c
        async with application.state.runtime.engine.begin() as connection:
            await connection.execute(User.__table__.delete())  # type: ignore[attr-defined]


async def test_international_addresses_are_allowed_but_not_lookalikes(
    international_client: httpx.AsyncClient,
) -> None:
    client = international_client
    assert (await _register(client, ROOT)).status_code == 200
    for name, email in LOOKALIKES.items():
        response = await _register(client, email)
        assert response.status_code == 409, name
        assert "looks the same" in response.json()["detail"]
    assert (await _register(client, "admins@example.com")).status_code == 200
    assert (await _register(client, "admİns@example.com")).status_code == 409
    # Look-alike domains too; the xn-- form is the same address as the Unicode one.
    assert (await _register(client, "root@еxample.com")).status_code == 409
    assert (await _register(client, "jürgen@bücher.de")).status_code == 200
    assert (await login(client, "Jürgen@xn--bcher-kva.de", USER_PASSWORD))["access_token"]
    taken = await _register(client, "JÜRGEN@xn--bcher-kva.de")
    assert taken.status_code == 409
    assert taken.json()["detail"] == "A user with this email already exists."
    # Different letters, not look-alikes: accepted.
    assert (await _register(client, "rööt@example.com")).status_code == 200
    assert (await _register(client, "用户@例子.测试")).status_code == 200


# Invisible characters that email-validator lets into an international address (a
# combining grapheme joiner, a variation selector, Hangul fillers): they render as nothing.
INVISIBLE_VARIANTS = {
    "U+034F": "ro\u034fot@example.com",
    "U+FE0F": "root\ufe0f@example.com",
    "U+3164": "ro\u3164ot@example.com",
    "U+115F": "\u115froot@example.com",
    "U+FFA0": "roo\uffa0t@example.com",
}


async def test_invisible_characters_do_not_make_another_address(
    international_client: httpx.AsyncClient,
) -> None:
    client = international_client
    admin = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
    assert (await _register(client, ROOT)).status_code == 200
    other = await _register(client, "other@example.com")
    other_id = other.json()["user"]["id"]
    for name, email in INVISIBLE_VARIANTS.items():
        body = {"email": email, "name": "N", "password": USER_PASSWORD}
        refusals = {
            "register": await _register(client, email),
            "admin create": await client.post(f"{API}/users", json=body, headers=admin),
            "admin update": await client.patch(
                f"{API}/users/{other_id}", json={"email": email}, headers=admin
            ),
        }
        for how, response in refusals.items():
            assert response.status_code == 409, (name, how, response.text)
            assert response.json()["code"] == "email_lookalike", (name, how)
    # The same invisible characters in front of other letters are one address too.
    assert (await _register(client, "ada\u034f@example.com")).status_code == 200
    assert (await _register(client, "ada@example.com")).status_code == 409


def test_skeletons_follow_tr39() -> None:
    assert skeleton("rоοt") == skeleton("ｒｏｏｔ") == skeleton("root")
    assert skeleton("paypal") == skeleton("раураl")
    assert skeleton("admİn") == skeleton("admin")
    assert skeleton("root") != skeleton("rööt")
    assert {skeleton(email) for email in INVISIBLE_VARIANTS.values()} == {skeleton(ROOT)}
    # Format characters, which email-validator refuses in addresses today.
    assert skeleton("ro\u200bot\u2060") == skeleton("r\u00adoot") == skeleton("root")
    assert len(email_skeleton("ﷺ" * 60 + "@example.com")) == 64  # NFKC expands it 18 times


async def test_the_migration_backfills_and_keeps_existing_lookalikes(tmp_path: Path) -> None:
    engine = create_engine(make_settings(f"sqlite:///{tmp_path / 'old.db'}"))

    def migrate(connection: Connection, revision: str) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    try:
        async with engine.begin() as connection:
            await connection.run_sync(migrate, "fef801514d0c")  # before the column
            for email in ("root@example.com", "rооt@example.com", "ada@example.com"):
                await connection.execute(
                    text(
                        "INSERT INTO users (email, name, role, is_active, hashed_password, "
                        "token_version, version, created_at, updated_at) VALUES (:email, "
                        "'N', 'user', true, 'x', 0, 1, '2026-01-01', '2026-01-01')"
                    ),
                    {"email": email},
                )
            await connection.run_sync(migrate, "head")
            result = await connection.execute(text("SELECT email, email_skeleton FROM users"))
            rows: dict[str, str | None] = dict(result.all())
    finally:
        await engine.dispose()
    assert rows["root@example.com"] == email_skeleton("root@example.com")
    assert rows["rооt@example.com"] is None  # the newer look-alike keeps its account
    assert rows["ada@example.com"] == email_skeleton("ada@example.com")
