"""What an admin dashboard needs (issue 12, section 3): pages of up to MAX_PER_PAGE
records in every dialect, `last_login_at`, and USERS_DIRECTORY."""

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert
from sqlmodel import SQLModel

from backend.clock import Clock, utcnow
from backend.config import Settings, load_settings
from backend.main import create_app
from backend.models import User, UserPublic, new_account_key
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    USER_PASSWORD,
    RegisterUser,
    bearer,
    create_user,
    login,
    post_login,
    running,
)


@asynccontextmanager
async def configured(settings: Settings, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app with these settings changed, on the test's database, which
    is emptied afterwards as the `app` fixture empties it."""
    app = create_app(settings.model_copy(update=overrides))
    async with running(app) as client:
        try:
            yield client
        finally:
            async with app.state.runtime.engine.begin() as connection:
                for table in reversed(SQLModel.metadata.sorted_tables):
                    await connection.execute(table.delete())


async def admin_of(client: httpx.AsyncClient) -> dict[str, str]:
    return bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])


# --- MAX_PER_PAGE ---------------------------------------------------------------------


async def insert_users(app: FastAPI, count: int) -> None:
    """Rows straight into the table: a thousand registrations would hash a thousand
    passwords for nothing this test looks at."""
    now = utcnow()
    rows = [
        {
            "email": f"bulk{number:04d}@example.com",
            "name": f"Bulk {number}",
            "role": "user",
            "is_active": True,
            "hashed_password": "not-a-hash",
            "account_key": new_account_key(),
            "token_version": 0,
            "version": 1,
            "created_at": now,
            "updated_at": now,
        }
        for number in range(count)
    ]
    async with app.state.runtime.engine.begin() as connection:
        await connection.execute(insert(User), rows)


@pytest.mark.parametrize(
    "params",
    [
        {"per_page": "1000"},
        {"range": "[0,999]"},  # react-admin simple-rest's Export
        {"_start": "0", "_end": "1000"},  # json-server / Refine
        {"range": "[0,999]", "sort": '["email","ASC"]'},
    ],
)
async def test_a_page_of_1000_in_every_dialect(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    params: dict[str, str],
) -> None:
    await insert_users(app, 1004)
    response = await client.get(f"{API}/users", params=params, headers=admin_headers)
    assert response.status_code == 200, response.text
    assert len(response.json()) == 1000
    assert response.headers["x-total-count"] == "1005"  # and the first admin
    assert response.headers["content-range"] == "users 0-999/1005"


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"per_page": "1001"}, "per_page", "integer from 1 to 1000"),
        ({"range": "[0,1000]"}, "range", "at most 1000 records"),
        ({"_start": "5", "_end": "1006"}, "_end", "at most 1000 records"),
        ([("id", str(number)) for number in range(1, 1002)], "id", "1..1000 values"),
    ],
)
async def test_more_than_1000_is_a_422_naming_the_parameter(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    params: dict[str, str] | list[tuple[str, str | int | float | bool | None]],
    field: str,
    message: str,
) -> None:
    response = await client.get(f"{API}/users", params=params, headers=admin_headers)
    assert response.status_code == 422, response.text
    errors = [error for error in response.json()["errors"] if error["field"] == field]
    assert errors, response.json()
    assert message in errors[0]["message"]


async def test_max_per_page_is_a_setting_that_the_schema_states(settings: Settings) -> None:
    async with configured(settings, MAX_PER_PAGE=3) as client:
        headers = await admin_of(client)
        for number in range(4):
            fields = {"email": f"p{number}@example.com", "name": "P", "password": USER_PASSWORD}
            await create_user(client, headers, **fields)

        async def count(params: dict[str, str]) -> int:
            response = await client.get(f"{API}/users", params=params, headers=headers)
            assert response.status_code == 200, response.text
            return len(response.json())

        assert await count({"per_page": "3"}) == 3
        # Without paging, the dashboard conventions get the most allowed.
        assert await count({"filter": "{}"}) == 3
        assert await count({"_sort": "id"}) == 3
        refused = await client.get(f"{API}/users", params={"per_page": "4"}, headers=headers)
        assert refused.status_code == 422
        assert refused.json()["errors"][0] == {
            "field": "per_page",
            "message": "must be an integer from 1 to 3",
            "code": "value_error",
        }
        audit = await client.get(f"{API}/audit", params={"range": "[0,3]"}, headers=headers)
        assert audit.status_code == 422
        assert "at most 3 records" in audit.json()["errors"][0]["message"]
        schema = (await client.get(f"{API}/openapi.json")).json()
        parameters = {
            parameter["name"]: parameter["schema"]
            for parameter in schema["paths"][f"{API}/users"]["get"]["parameters"]
        }
        assert parameters["per_page"]["maximum"] == 3
        assert parameters["id"]["maxItems"] == 3


async def test_a_larger_max_per_page_still_bounds_the_offset(settings: Settings) -> None:
    async with configured(settings, MAX_PER_PAGE=10_000) as client:
        headers = await admin_of(client)
        page = await client.get(f"{API}/users", params={"per_page": "10000"}, headers=headers)
        assert page.status_code == 200
        deep = {"per_page": "10000", "page": "1000000"}
        refused = await client.get(f"{API}/users", params=deep, headers=headers)
        assert refused.status_code == 422
        assert refused.json()["errors"][0] == {
            "field": "page",
            "message": "must be at most 100001 with per_page=10000",
            "code": "value_error",
        }


@pytest.mark.parametrize("value", ["0", "10001", "many"])
def test_max_per_page_is_validated(value: str) -> None:
    with pytest.raises(SystemExit) as raised:
        load_settings(_env_file=None, MAX_PER_PAGE=value)
    assert str(raised.value).startswith("Configuration error: MAX_PER_PAGE: ")


def test_users_directory_is_validated() -> None:
    with pytest.raises(SystemExit) as raised:
        load_settings(_env_file=None, USERS_DIRECTORY="friends")
    assert str(raised.value).startswith("Configuration error: USERS_DIRECTORY: ")
    assert "'all' or 'admins'" in str(raised.value)


async def test_list_rows_are_written_as_the_user_itself_is(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """The list and GET /users/{id} write rows without a model (routers/users.py): field
    for field, format for format, what UserPublic writes (as GET /users/me does)."""
    await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)  # a last_login_at to write
    listed = await client.get(f"{API}/users", headers=admin_headers)
    for row in listed.json():
        # An admin's list adds how each user signs in; the rest is the user, as written.
        assert row.pop("sign_in_methods") == ["password"]
        alone = await client.get(f"{API}/users/{row['id']}", headers=admin_headers)
        assert alone.text == json.dumps(row, separators=(",", ":"))
        assert alone.text == UserPublic.model_validate_json(alone.text).model_dump_json()
    assert listed.headers["content-type"] == "application/json"
    me = await client.get(f"{API}/users/me", headers=admin_headers)
    by_id = await client.get(f"{API}/users/{me.json()['id']}", headers=admin_headers)
    # /users/me adds who is impersonating (nobody here); the rest is the same bytes.
    assert me.json().pop("impersonated_by") is None
    assert by_id.content == me.content.replace(b',"impersonated_by":null', b"")
    assert by_id.headers["content-type"] == me.headers["content-type"]


# --- last_login_at --------------------------------------------------------------------


def moment(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


async def last_login(client: httpx.AsyncClient, headers: dict[str, str], user_id: int) -> Any:
    response = await client.get(f"{API}/users/{user_id}", headers=headers)
    assert response.status_code == 200, response.text
    return moment(response.json()["last_login_at"])


async def test_login_and_refresh_set_last_login_at_at_most_once_a_minute(
    client: httpx.AsyncClient, admin_headers: dict[str, str], clock: Clock
) -> None:
    created = await create_user(
        client, admin_headers, email="ann@example.com", name="Ann", password=USER_PASSWORD
    )
    user = created.json()
    assert user["last_login_at"] is None
    assert (await post_login(client, "ann@example.com", "Wrong-Password-9")).status_code == 401
    assert await last_login(client, admin_headers, user["id"]) is None

    before = utcnow()
    first = await login(client, "ann@example.com", USER_PASSWORD)
    logged_in = await last_login(client, admin_headers, user["id"])
    assert logged_in is not None
    assert before <= logged_in <= utcnow()
    assert moment(first["user"]["last_login_at"]) == logged_in

    clock.offset += timedelta(seconds=30)  # within the minute: left alone
    await login(client, "ann@example.com", USER_PASSWORD)
    refreshed = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    assert await last_login(client, admin_headers, user["id"]) == logged_in

    clock.offset += timedelta(minutes=2)
    before_refresh = utcnow()
    again = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": refreshed.json()["refresh_token"]}
    )
    assert again.status_code == 200, again.text
    after_refresh = await last_login(client, admin_headers, user["id"])
    assert after_refresh is not None
    assert after_refresh >= before_refresh

    clock.offset += timedelta(minutes=2)
    await login(client, "ann@example.com", USER_PASSWORD)
    after_login = await last_login(client, admin_headers, user["id"])
    assert after_login is not None
    assert after_login >= after_refresh + timedelta(minutes=2)

    # Not an edit of the account: its version (ETag) and updated_at stay.
    current = await client.get(f"{API}/users/{user['id']}", headers=admin_headers)
    assert current.headers["etag"] == '"1"'
    assert current.json()["updated_at"] == user["updated_at"]


async def test_a_refused_login_or_refresh_sets_nothing(
    client: httpx.AsyncClient, admin_headers: dict[str, str], clock: Clock
) -> None:
    created = await create_user(
        client, admin_headers, email="ben@example.com", name="Ben", password=USER_PASSWORD
    )
    user_id = created.json()["id"]
    tokens = await login(client, "ben@example.com", USER_PASSWORD)
    logged_in = await last_login(client, admin_headers, user_id)
    deactivate = {"is_active": False}
    response = await client.patch(f"{API}/users/{user_id}", json=deactivate, headers=admin_headers)
    assert response.status_code == 200
    clock.offset += timedelta(minutes=5)
    assert (await post_login(client, "ben@example.com", USER_PASSWORD)).status_code == 403
    refresh = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refresh.status_code in {401, 403}
    assert await last_login(client, admin_headers, user_id) == logged_in


async def test_last_login_at_sorts_and_filters_in_every_dialect(
    client: httpx.AsyncClient, admin_headers: dict[str, str], clock: Clock
) -> None:
    # The first admin logged in (admin_headers) now; early 10 minutes later, late 20.
    for email in ("early@example.com", "late@example.com", "never@example.com"):
        await create_user(client, admin_headers, email=email, name="N", password=USER_PASSWORD)
    clock.offset += timedelta(minutes=10)
    await login(client, "early@example.com", USER_PASSWORD)
    middle = utcnow() + timedelta(minutes=5)
    clock.offset += timedelta(minutes=10)
    await login(client, "late@example.com", USER_PASSWORD)
    # The admin's token is still valid 20 minutes on (30-minute access tokens).

    async def emails(params: dict[str, str]) -> list[str]:
        response = await client.get(f"{API}/users", params=params, headers=admin_headers)
        assert response.status_code == 200, response.text
        return [user["email"] for user in response.json()]

    newest_first = ["late@example.com", "early@example.com", ADMIN_EMAIL, "never@example.com"]
    assert await emails({"sort": "-last_login_at"}) == newest_first
    assert await emails({"sort": "last_login_at"}) == newest_first[::-1]
    assert await emails({"_sort": "last_login_at", "_order": "desc"}) == newest_first
    assert await emails({"sort": '["last_login_at","ASC"]'}) == newest_first[::-1]

    since = middle.isoformat()
    assert await emails({"last_login_after": since}) == ["late@example.com"]
    assert await emails({"last_login_before": since, "sort": "-last_login_at"}) == [
        "early@example.com",
        ADMIN_EMAIL,
    ]
    assert await emails({"last_login_at_gte": since}) == ["late@example.com"]
    simple_rest = {"filter": json.dumps({"last_login_at_gte": since})}
    assert await emails(simple_rest) == ["late@example.com"]
    refused = await client.get(
        f"{API}/users", params={"last_login_after": "soon"}, headers=admin_headers
    )
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "last_login_after"


# --- USERS_DIRECTORY ------------------------------------------------------------------


async def test_every_user_reads_the_directory_by_default(
    client: httpx.AsyncClient, register: RegisterUser
) -> None:
    plain = bearer((await register())["access_token"])
    listed = await client.get(f"{API}/users", headers=plain)
    assert listed.headers["x-total-count"] == "2"
    admin_id = next(user["id"] for user in listed.json() if user["email"] == ADMIN_EMAIL)
    assert (await client.get(f"{API}/users/{admin_id}", headers=plain)).status_code == 200


async def test_with_admins_only_a_plain_user_sees_only_themselves(settings: Settings) -> None:
    async with configured(settings, USERS_DIRECTORY="admins") as client:
        admin = await admin_of(client)
        for email in ("amy@example.com", "bea@example.com"):
            fields = {"email": email, "name": "Plain", "password": USER_PASSWORD}
            await create_user(client, admin, **fields)
        tokens = await login(client, "amy@example.com", USER_PASSWORD)
        me, amy = tokens["user"], bearer(tokens["access_token"])

        for params in ({}, {"per_page": "1000"}, {"q": "example"}, {"filter": "{}"}):
            listed = await client.get(f"{API}/users", params=params, headers=amy)
            assert listed.status_code == 200, listed.text
            assert [user["id"] for user in listed.json()] == [me["id"]]
            assert listed.headers["x-total-count"] == "1"
            assert listed.headers["content-range"] == "users 0-0/1"
        nobody = await client.get(f"{API}/users", params={"role": "admin"}, headers=amy)
        assert nobody.json() == []
        assert nobody.headers["x-total-count"] == "0"

        assert (await client.get(f"{API}/users/{me['id']}", headers=amy)).status_code == 200
        everyone = await client.get(f"{API}/users", headers=admin)
        assert everyone.headers["x-total-count"] == "3"
        others = [user["id"] for user in everyone.json() if user["id"] != me["id"]]
        # Another account, and an id no account has, answer alike: nothing to probe.
        for user_id in [*others, max(others) + 100]:
            refused = await client.get(f"{API}/users/{user_id}", headers=amy)
            assert refused.status_code == 403
            assert "USERS_DIRECTORY" in refused.json()["detail"]
        for user_id in others:
            assert (await client.get(f"{API}/users/{user_id}", headers=admin)).status_code == 200
