# Look-alike characters (fullwidth, Cyrillic) are what these tests are about.
# ruff: noqa: RUF001
"""The password policy (NIST SP 800-63B, ASVS 2.1): length, no composition rules, no
common or trivial passwords, NFKC before hashing and verifying."""

import unicodedata
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pwdlib import PasswordHash
from pwdlib.hashers.bcrypt import BcryptHasher
from sqlalchemy import update
from sqlmodel import col, select

from backend.auth.passwords import PasswordHasher
from backend.main import create_app
from backend.models import User
from backend.rules import (
    AccountRules,
    common_passwords,
    normalise_password,
    password_email_problem,
    password_problem,
    use_account_rules,
)
from tests.helpers import API, RegisterUser, bearer, login, make_settings

USER = {"email": "policy@example.com", "name": "Policy"}


@pytest.fixture(autouse=True)
def default_rules() -> Iterator[None]:
    yield
    use_account_rules(AccountRules())  # a test's own app may have changed them


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("Password", "at least 12 characters"),
        ("Aaaaaaaa", "at least 12 characters"),
        ("P" + " " * 7, "at least 12 characters"),
        ("Passw0rd!", "at least 12 characters"),
        ("aaaaaaaaaaaa", "too simple"),
        ("AAAAAAAAAAAAAAAA", "too simple"),
        ("123456789012", "too simple"),
        ("abcdefghijkl", "too simple"),
        ("ZYXWVUTSRQPONM", "too simple"),
        ("abababababab", "too simple"),
        ("P" + " " * 11, "at least 4 different characters"),
        ("aaaaaabbbbbb", "at least 4 different characters"),
        ("password1234", "too common"),
        ("PassWord1234", "too common"),  # the list is compared case-insensitively
        ("qwertyuiop123", "too common"),
        ("ｐａｓｓｗｏｒｄ１２３４", "too common"),  # fullwidth: NFKC first
        ("1q2w3e4r5t6y", "too common"),
        ("Password123!", "too common"),  # a common password with a guessable tail
        ("\u200bpassword1234", "too common"),  # what does not show is not compared
        ("password1234 ", "too common"),
        ("Admin-Pass-1", "an example from this project's documentation"),
    ],
)
async def test_register_refuses_weak_passwords(
    client: httpx.AsyncClient, password: str, message: str
) -> None:
    response = await client.post(f"{API}/auth/register", json={**USER, "password": password})
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert [error["field"] for error in errors] == ["password"]
    assert message in errors[0]["message"]


@pytest.mark.parametrize(
    "password",
    [
        "TestPassword123",  # the seed's own test password (zxcvbn rates it 1 of 4)
        "Kettle-Harbour-2024",  # words and a year, neither on a list
        "blue83749201",  # a common word, but with 8 digits that are no pattern
        "all lower case, no digits",  # no composition rules
        "correct horse battery staple",
        "ДлинныйПароль2024",
        "密码不是常见的密码啊好吧",  # 12 code points, 36 bytes
    ],
)
async def test_long_uncommon_passwords_need_no_composition(
    client: httpx.AsyncClient, password: str
) -> None:
    response = await client.post(f"{API}/auth/register", json={**USER, "password": password})
    assert response.status_code == 200, response.text
    assert (await login(client, USER["email"], password))["access_token"]


async def test_every_password_field_applies_the_policy(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    user = await register(email="changer@example.com", password="Old-Password-1")
    change = await client.post(
        f"{API}/users/me/password",
        headers=bearer(user["access_token"]),
        json={"current_password": "Old-Password-1", "new_password": "123456789012"},
    )
    create = await client.post(
        f"{API}/users",
        headers=admin_headers,
        json={**USER, "password": "aaaaaaaaaaaa", "role": "user", "is_active": True},
    )
    patch = await client.patch(
        f"{API}/users/{user['user']['id']}", headers=admin_headers, json={"password": "secret"}
    )
    for response, field in ((change, "new_password"), (create, "password"), (patch, "password")):
        assert response.status_code == 422, response.text
        # PATCH's optional fields are unions: pydantic adds the branch to the location.
        assert response.json()["errors"][0]["field"].split(".")[0] == field


NFC = unicodedata.normalize("NFC", "Crème brûlée à 9 h")
NFD = unicodedata.normalize("NFD", NFC)


async def test_a_password_registered_in_nfc_works_typed_in_nfd(
    client: httpx.AsyncClient, register: RegisterUser
) -> None:
    assert NFC != NFD
    await register(email="nfc@example.com", password=NFC)
    assert (await login(client, "nfc@example.com", NFD))["access_token"]
    await register(email="nfd@example.com", password=NFD)
    assert (await login(client, "nfd@example.com", NFC))["access_token"]
    fullwidth = "Ｆｕｌｌｗｉｄｔｈ－Ｐａｓｓ－１"
    await register(email="wide@example.com", password=fullwidth)
    assert (await login(client, "wide@example.com", "Fullwidth-Pass-1"))["access_token"]


async def test_a_hash_made_before_normalisation_still_verifies_and_is_upgraded(
    app: FastAPI, client: httpx.AsyncClient, register: RegisterUser
) -> None:
    await register(email="legacy@example.com", password="Legacy-Password-1")
    # As the app stored it before passwords were normalised: a hash of the raw string.
    legacy_hash = PasswordHash((BcryptHasher(rounds=4),)).hash(NFD)
    async with app.state.runtime.sessionmaker() as db:
        await db.exec(
            update(User)
            .where(col(User.email) == "legacy@example.com")
            .values(hashed_password=legacy_hash)
        )
        await db.commit()

    assert (await login(client, "legacy@example.com", NFD))["access_token"]
    async with app.state.runtime.sessionmaker() as db:
        stored = (await db.exec(select(User).where(col(User.email) == "legacy@example.com"))).one()
    assert stored.hashed_password != legacy_hash  # rehashed in NFKC form...
    assert (await login(client, "legacy@example.com", NFC))["access_token"]  # ...so NFC works


async def test_the_raw_fallback_costs_the_same_for_unknown_users() -> None:
    hasher = PasswordHasher(rounds=4, concurrency=1, queue_limit=0)
    calls: list[str] = []
    original = hasher._verify_one

    def counting(
        password: str, hashed_password: str | None, dummy_cost: int
    ) -> tuple[bool, str | None]:
        calls.append(password)
        return original(password, hashed_password, dummy_cost)

    hasher._verify_one = counting  # type: ignore[method-assign]
    try:
        assert await hasher.verify(NFD, None) == (False, None)
        assert calls == [NFC, NFD]
        calls.clear()
        assert await hasher.verify("ascii only", None) == (False, None)
        assert calls == ["ascii only"]
    finally:
        hasher.close()


@pytest.fixture
async def strict_client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(make_settings(database_url, PASSWORD_MIN_LENGTH=16))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c
        async with application.state.runtime.engine.begin() as connection:
            await connection.execute(User.__table__.delete())  # type: ignore[attr-defined]


async def test_the_minimum_length_is_a_setting_and_the_schema_says_it(
    strict_client: httpx.AsyncClient,
) -> None:
    fifteen = "Fifteen-chars-1"
    refused = await strict_client.post(f"{API}/auth/register", json={**USER, "password": fifteen})
    assert refused.status_code == 422
    assert "at least 16 characters" in refused.json()["errors"][0]["message"]
    accepted = await strict_client.post(
        f"{API}/auth/register", json={**USER, "password": fifteen + "6"}
    )
    assert accepted.status_code == 200, accepted.text
    assert _password_schema(await strict_client.get(f"{API}/openapi.json"))["minLength"] == 16


async def test_the_schema_hint_states_the_policy(client: httpx.AsyncClient) -> None:
    schema = _password_schema(await client.get(f"{API}/openapi.json"))
    assert schema["minLength"] == 12
    assert schema["maxLength"] == 72
    assert "pattern" not in schema  # no composition rule
    assert "common" in schema["description"]


def _password_schema(response: httpx.Response) -> dict[str, Any]:
    schema: dict[str, Any] = response.json()["components"]["schemas"]["RegisterRequest"]
    password: dict[str, Any] = schema["properties"]["password"]
    return password


@pytest.mark.parametrize(
    "password",
    ["987654321098", "890123456789", "qwerqwerqwerqwer", "abcabcabcabca", "zzzzzzzzzzzzzzzz"],
)
def test_runs_and_short_patterns_are_refused(password: str) -> None:
    assert password_problem(password, min_length=12) is not None


@pytest.mark.parametrize(
    "password", ["1234abcd5678efgh", "abcdefghijkl-not-a-run", "Admin-Password-1", "a1b2c3d4e5f6g"]
)
def test_passwords_that_only_contain_a_run_pass(password: str) -> None:
    assert password_problem(normalise_password(password), min_length=12) is None


@pytest.mark.parametrize(
    "password",
    [
        "Password123!",
        "P@ssw0rd1234",
        "Welcome12345",
        "Summer2024!!",
        "Admin1234567",
        "letmein12345",
        "passwordpassword",
        "monkey123456",
        "sunshine1234567!",  # a longer tail that is a run of digits
        "\u200bpassword123",
        "pass\u00adword123",  # a soft hyphen inside
        "password123 ",
        " password123",
        "password123\u2060",
        "Change-Me-Now-1",
        "Analytical-Engine-1843",
        "ADMIN-PASS-1",
    ],
)
def test_common_passwords_decorated_or_hidden_are_refused(password: str) -> None:
    problem = password_problem(normalise_password(password), min_length=8)
    assert problem is not None
    assert problem.code == "password_too_common"


@pytest.mark.parametrize(
    "password",
    [
        "TestPassword123",
        "OtherTestPassword1",
        "Sunshine83749201",  # 8 digits that are no pattern: not a guessable tail
        "Admin-Password-1",
        "abcdefghijkl-not-a-run",
    ],
)
def test_passphrases_off_the_list_are_accepted(password: str) -> None:
    assert password_problem(normalise_password(password), min_length=12) is None


def test_the_list_holds_the_most_common_hundred_thousand() -> None:
    passwords = common_passwords()
    assert len([password for password in passwords if len(password) >= 8]) >= 100_000
    assert {"password", "welcome", "p@ssw0rd", "iloveyou"} <= passwords
    assert all(password == password.lower() for password in passwords)
    assert all(password == unicodedata.normalize("NFKC", password) for password in passwords)


@pytest.mark.parametrize(
    ("password", "email"),
    [
        ("AliceSmith2024", "alice.smith@example.com"),
        ("alice.smith!", "alice.smith@example.com"),
        ("Policy-Policy-1", "policy@example.com"),
        ("\u200bMargaret1906!", "margaret@example.com"),
    ],
)
def test_a_password_made_of_the_email_is_refused(password: str, email: str) -> None:
    problem = password_email_problem(normalise_password(password), email)
    assert problem is not None
    assert problem.code == "password_like_email"


@pytest.mark.parametrize(
    ("password", "email"),
    [
        ("TestPassword123", "test@example.com"),  # the name part is a small share of it
        ("Ada-Analytical-1843", "ada@example.com"),  # a name part under 4 characters
        ("Boss-Password-1", "boss@example.com"),
        ("Kettle-Harbour-2024", "alice.smith@example.com"),
    ],
)
def test_a_password_that_merely_contains_a_short_name_is_accepted(
    password: str, email: str
) -> None:
    assert password_email_problem(password, email) is None


LIKE_EMAIL = "Policy-Policy-1"  # for policy@example.com


async def test_every_path_that_sets_a_password_refuses_one_like_the_email(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    registered = await client.post(f"{API}/auth/register", json={**USER, "password": LIKE_EMAIL})
    created = await client.post(
        f"{API}/users",
        headers=admin_headers,
        json={**USER, "password": LIKE_EMAIL, "role": "user", "is_active": True},
    )
    user = await register(email="changer@example.com", password="Old-Password-1")
    user_id = user["user"]["id"]
    changed = await client.post(
        f"{API}/users/me/password",
        headers=bearer(user["access_token"]),
        json={"current_password": "Old-Password-1", "new_password": "Changer-2024-!"},
    )
    # An admin's edit: against the stored email, and against the new one it sends.
    stored = await client.patch(
        f"{API}/users/{user_id}", headers=admin_headers, json={"password": "Changer-2024-!"}
    )
    new = await client.patch(
        f"{API}/users/{user_id}",
        headers=admin_headers,
        json={"email": "policy@example.com", "password": LIKE_EMAIL},
    )
    for response in (registered, created, changed, stored, new):
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "validation_failed"
        assert [(e["field"], e["code"]) for e in response.json()["errors"]] == [
            ("password", "password_like_email")
        ]
    assert (await login(client, "changer@example.com", "Old-Password-1"))["access_token"]
