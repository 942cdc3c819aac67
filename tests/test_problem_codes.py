"""Stable problem codes: what a client switches on instead of the English of `detail`.

Every response any `client` test sees is checked for a known code and its type URI
(tests/helpers.py, check_problem); these tests pin the codes of the refusals a front
end most often tells apart."""

from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI

from backend.clock import Clock
from backend.config import Settings
from backend.errors import ProblemCode
from backend.http.problems import PROBLEM_TYPE_PREFIX
from backend.main import create_app
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    USER_PASSWORD,
    RegisterUser,
    bearer,
    login,
    running,
)

BODY = {"email": "ada@example.com", "name": "Ada", "password": USER_PASSWORD}


def code_of(response: httpx.Response) -> str:
    code: str = response.json()["code"]
    return code


def test_the_openapi_document_lists_every_code(settings: Settings) -> None:
    schema = create_app(settings).openapi()["components"]["schemas"]
    assert schema["ProblemCode"]["enum"] == [code.value for code in ProblemCode]
    assert "code" in schema["Problem"]["required"]
    assert "code" in schema["FieldError"]["required"]


async def test_a_taken_email_and_a_lookalike_are_told_apart(client: httpx.AsyncClient) -> None:
    assert (await client.post(f"{API}/auth/register", json=BODY)).status_code == 200
    taken = await client.post(f"{API}/auth/register", json=BODY)
    assert (taken.status_code, code_of(taken)) == (409, "email_taken")
    assert taken.json()["type"] == f"{PROBLEM_TYPE_PREFIX}email_taken"
    # "rn" renders like "m": same status, another code.
    modern = {**BODY, "email": "modern@example.com"}
    assert (await client.post(f"{API}/auth/register", json=modern)).status_code == 200
    lookalike = await client.post(
        f"{API}/auth/register", json={**BODY, "email": "rnodern@example.com"}
    )
    assert (lookalike.status_code, code_of(lookalike)) == (409, "email_lookalike")


@pytest.mark.parametrize(
    ("password", "code"),
    [
        ("short", "password_too_short"),
        ("password1234", "password_too_common"),
        ("abcdefghijklm", "password_too_simple"),
        ("x" * 80, "password_too_long"),
    ],
)
async def test_each_password_rule_has_its_code(
    client: httpx.AsyncClient, password: str, code: str
) -> None:
    refused = await client.post(f"{API}/auth/register", json={**BODY, "password": password})
    assert (refused.status_code, code_of(refused)) == (422, "validation_failed")
    assert [(e["field"], e["code"]) for e in refused.json()["errors"]] == [("password", code)]


async def test_a_missing_field_has_pydantics_code(client: httpx.AsyncClient) -> None:
    refused = await client.post(f"{API}/auth/register", json={"email": "a@example.com"})
    assert {(e["field"], e["code"]) for e in refused.json()["errors"]} == {
        ("name", "missing"),
        ("password", "missing"),
    }


async def test_credentials_tokens_and_sessions(
    app: FastAPI, client: httpx.AsyncClient, clock: Clock
) -> None:
    wrong = await client.post(
        f"{API}/auth/login", data={"username": ADMIN_EMAIL, "password": "not-the-password"}
    )
    assert (wrong.status_code, code_of(wrong)) == (401, "credentials_invalid")
    anonymous = await client.get(f"{API}/users/me")
    assert code_of(anonymous) == "not_authenticated"
    garbage = await client.get(f"{API}/users/me", headers=bearer("not.a.jwt"))
    assert code_of(garbage) == "token_invalid"
    tokens = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    wrong_type = await client.get(f"{API}/users/me", headers=bearer(tokens["refresh_token"]))
    assert code_of(wrong_type) == "token_wrong_type"
    refresh = {"refresh_token": tokens["refresh_token"]}
    rotated = await client.post(f"{API}/auth/refresh", json=refresh)
    assert rotated.status_code == 200
    clock.offset += timedelta(minutes=5)  # past the reuse grace
    reused = await client.post(f"{API}/auth/refresh", json=refresh)
    assert (reused.status_code, code_of(reused)) == (401, "refresh_token_reused")
    fresh = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    app.state.runtime.settings.SESSION_IDLE_DAYS = 2
    clock.offset += timedelta(days=3)  # idle too long; the refresh token itself lives on
    expired = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": fresh["refresh_token"]}
    )
    assert (expired.status_code, code_of(expired)) == (401, "session_expired")


async def test_roles_and_missing_things(
    client: httpx.AsyncClient, register: RegisterUser, admin_headers: dict[str, str]
) -> None:
    registered = await register()
    user = bearer(registered["access_token"])
    not_admin = await client.post(f"{API}/users", json=BODY, headers=user)
    assert (not_admin.status_code, code_of(not_admin)) == (403, "admin_required")
    missing = await client.get(f"{API}/users/999999", headers=admin_headers)
    assert (missing.status_code, code_of(missing)) == (404, "user_not_found")
    no_route = await client.get("/nowhere")
    assert (no_route.status_code, code_of(no_route)) == (404, "not_found")
    wrong_method = await client.put("/health")
    assert (wrong_method.status_code, code_of(wrong_method)) == (405, "method_not_allowed")
    stale = await client.patch(
        f"{API}/users/{registered['user']['id']}",
        json={"name": "X"},
        headers={**admin_headers, "If-Match": '"999"'},
    )
    assert (stale.status_code, code_of(stale)) == (412, "version_mismatch")


async def test_rate_limited_and_internal_error(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"RATE_LIMIT_LOGIN_PER_IP": "1/minute"}))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("internals")

    async with running(app, "203.0.113.9", raise_app_exceptions=False) as client:
        form = {"username": "a@example.com", "password": "x"}
        await client.post(f"{API}/auth/login", data=form)
        limited = await client.post(f"{API}/auth/login", data=form)
        assert (limited.status_code, code_of(limited)) == (429, "rate_limited")
        failed = await client.get("/boom")
        assert (failed.status_code, code_of(failed)) == (500, "internal_error")
