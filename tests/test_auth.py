import asyncio
from typing import Any

import httpx
import jwt
from fastapi import FastAPI

from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    TEST_SECRET_KEY,
    USER_PASSWORD,
    RegisterUser,
    bearer,
    login,
)

USER = {"email": "test@example.com", "password": "TestPassword123", "name": "Test User"}


async def test_register_user(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{API}/auth/register", json=USER)
    assert response.status_code == 200
    data = response.json()
    assert data["user"]["email"] == USER["email"]
    assert "access_token" in data


async def test_login_user(client: httpx.AsyncClient) -> None:
    await client.post(f"{API}/auth/register", json=USER)
    login_data = {"username": USER["email"], "password": USER["password"]}
    response = await client.post(f"{API}/auth/login", data=login_data)
    assert response.status_code == 200
    assert "access_token" in response.json()


async def test_register_returns_the_full_login_response(client: httpx.AsyncClient) -> None:
    body = (await client.post(f"{API}/auth/register", json=USER)).json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60
    assert set(body["user"]) == {
        "id", "email", "name", "role", "is_active", "is_verified", "created_at", "updated_at",
        "last_login_at", "banned_at", "banned_until", "ban_reason", "deletion_scheduled_at",
        "user_metadata", "app_metadata",
    }  # fmt: skip
    assert body["user"]["role"] == "user"
    assert body["user"]["last_login_at"] is not None  # registering logs in
    assert body["user"]["is_active"] is True
    access = jwt.decode(body["access_token"], TEST_SECRET_KEY, algorithms=["HS256"])
    refresh = jwt.decode(body["refresh_token"], TEST_SECRET_KEY, algorithms=["HS256"])
    assert access["type"] == "access"
    assert refresh["type"] == "refresh"
    assert access["sub"] == str(body["user"]["id"])
    assert {"exp", "iat", "jti", "ver", "acc"} <= access.keys()
    assert access["acc"] == refresh["acc"]
    assert access["jti"] != refresh["jti"]


async def test_register_normalises_email_and_name(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{API}/auth/register",
        json={"email": "Mixed.Case@Example.COM", "password": USER_PASSWORD, "name": "  Ada  "},
    )
    assert response.status_code == 200
    assert response.json()["user"]["email"] == "mixed.case@example.com"
    assert response.json()["user"]["name"] == "Ada"


async def test_internal_email_domains_are_accepted(client: httpx.AsyncClient) -> None:
    for email in ("ops@corp.lan", "qa@build.test", "root@intranet.internal"):
        response = await client.post(f"{API}/auth/register", json={**USER, "email": email})
        assert response.status_code == 200, email


async def test_register_ignores_a_requested_role(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{API}/auth/register", json={**USER, "role": "admin"})
    assert response.status_code == 200
    assert response.json()["user"]["role"] == "user"


async def test_register_duplicate_email_is_409_case_insensitively(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post(f"{API}/auth/register", json=USER)).status_code == 200
    duplicate = {**USER, "email": USER["email"].upper()}
    response = await client.post(f"{API}/auth/register", json=duplicate)
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "A user with this email already exists."


async def test_concurrent_registrations_of_one_email_give_one_success(
    client: httpx.AsyncClient,
) -> None:
    responses = await asyncio.gather(
        *(client.post(f"{API}/auth/register", json=USER) for _ in range(16))
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] + [409] * 15


async def test_register_validation_names_each_field(client: httpx.AsyncClient) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({**USER, "password": "Short-Pass1"}, "password", "at least 12 characters"),
        ({**USER, "password": "A" + "é" * 36}, "password", "at most 72 bytes"),
        ({**USER, "name": "   "}, "name", "must not be empty"),
        ({**USER, "name": "n" * 101}, "name", "at most 100 characters"),
        ({**USER, "name": "bad\x00name"}, "name", "control characters"),
        ({**USER, "email": "not-an-email"}, "email", "valid email"),
        ({"email": USER["email"], "name": USER["name"]}, "password", "Field required"),
    ]
    for payload, field, message in cases:
        response = await client.post(f"{API}/auth/register", json=payload)
        assert response.status_code == 422, payload
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["status"] == 422
        assert field in body["detail"]
        errors = [error for error in body["errors"] if error["field"] == field]
        assert errors, body
        assert message in errors[0]["message"], body


async def test_password_of_exactly_72_bytes_is_accepted(client: httpx.AsyncClient) -> None:
    password = "P" + "é" * 34 + "xyz"  # 1 + 68 + 3 bytes
    assert len(password.encode()) == 72
    response = await client.post(f"{API}/auth/register", json={**USER, "password": password})
    assert response.status_code == 200
    assert (await login(client, USER["email"], password))["access_token"]


async def test_registration_can_be_closed(app: FastAPI, client: httpx.AsyncClient) -> None:
    app.state.runtime.settings.REGISTRATION_ENABLED = False
    response = await client.post(f"{API}/auth/register", json=USER)
    assert response.status_code == 403
    assert response.json()["detail"] == "Registration is closed on this server."


async def test_login_with_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{API}/auth/login", json={"email": ADMIN_EMAIL.upper(), "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 200
    assert response.json()["user"]["role"] == "admin"


async def test_wrong_password_and_unknown_email_look_the_same(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    hasher = app.state.runtime.password_hasher
    hasher._dummy_hashes.clear()  # the one made at start-up, to time a hash
    wrong = await client.post(
        f"{API}/auth/login", data={"username": ADMIN_EMAIL, "password": "Wrong-Password-1"}
    )
    unknown = await client.post(
        f"{API}/auth/login", data={"username": "nobody@example.com", "password": ADMIN_PASSWORD}
    )
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["detail"] == "Incorrect email or password."
    # The unknown email was checked against a real bcrypt hash too (no timing oracle),
    # of the stored hashes' cost (tests/test_login_timing.py times it).
    assert list(hasher._dummy_hashes) == [4]


async def test_login_with_an_overlong_password_is_401_not_500(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{API}/auth/login", data={"username": ADMIN_EMAIL, "password": "A" * 200}
    )
    assert response.status_code == 401


async def test_login_validation_errors_name_the_form_fields(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{API}/auth/login", data={"password": "x"})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["username"]

    response = await client.post(f"{API}/auth/login", json={"email": ADMIN_EMAIL})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["password"]


async def test_login_with_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{API}/auth/login", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0] == {
        "field": "body",
        "message": "Request body is not valid JSON.",
        "code": "json_invalid",
    }


async def test_inactive_user_cannot_log_in(
    client: httpx.AsyncClient, register: RegisterUser, admin_headers: dict[str, str]
) -> None:
    user = (await register())["user"]
    response = await client.patch(
        f"{API}/users/{user['id']}", json={"is_active": False}, headers=admin_headers
    )
    assert response.status_code == 200
    response = await client.post(
        f"{API}/auth/login", data={"username": user["email"], "password": USER_PASSWORD}
    )
    assert response.status_code == 403
    assert response.json()["detail"] == "This account is deactivated."


async def test_login_tokens_work_on_protected_routes(client: httpx.AsyncClient) -> None:
    tokens = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    response = await client.get(f"{API}/users/me", headers=bearer(tokens["access_token"]))
    assert response.status_code == 200
    assert response.json()["email"] == ADMIN_EMAIL


async def test_refresh_token_is_refused_as_access_token(client: httpx.AsyncClient) -> None:
    tokens = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    response = await client.get(f"{API}/users/me", headers=bearer(tokens["refresh_token"]))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_rehashes_a_password_when_the_rounds_setting_changes(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    from backend import crud
    from backend.auth.passwords import PasswordHasher

    app.state.runtime.password_hasher = PasswordHasher(rounds=5, concurrency=1, queue_limit=4)
    await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    async with app.state.runtime.sessionmaker() as db:
        admin = await crud.get_user_by_email(db, email=ADMIN_EMAIL)
    assert admin is not None
    assert admin.hashed_password.startswith("$2b$05$")
    await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
