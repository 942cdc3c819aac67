"""Bans: POST and DELETE /users/{id}/ban, the 403 `banned` at login, refresh, every
request and API key, bans that end by the clock, the list filter and the audit trail."""

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from backend.clock import Clock, utcnow
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
)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def ban(
    client: httpx.AsyncClient, admin: dict[str, str], user_id: int, **body: Any
) -> httpx.Response:
    return await client.post(
        f"{API}/users/{user_id}/ban", json={"reason": "spam", **body}, headers=admin
    )


def assert_banned(response: httpx.Response, until: datetime | None) -> None:
    assert response.status_code == 403, response.text
    problem = response.json()
    assert problem["code"] == "banned"
    assert "banned_until" in problem  # null for a permanent ban, never missing
    if until is None:
        assert problem["banned_until"] is None
        assert "no end date" in problem["detail"]
    else:
        assert datetime.fromisoformat(problem["banned_until"]) == until
        assert problem["banned_until"] in problem["detail"]


async def test_a_ban_refuses_login_refresh_tokens_and_keys_until_lifted(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    tokens = await register()
    user_id = tokens["user"]["id"]
    headers = bearer(tokens["access_token"])
    key = await client.post(
        f"{API}/users/me/tokens", json={"name": "script", "scope": "read"}, headers=headers
    )
    key_headers = bearer(key.json()["secret"])
    until = (utcnow() + timedelta(days=7)).replace(microsecond=0)

    banned = await ban(
        client, admin_headers, user_id, reason="  Spam in the forums ", until=iso(until)
    )
    assert banned.status_code == 200, banned.text
    body = banned.json()
    assert body["ban_reason"] == "Spam in the forums"
    assert datetime.fromisoformat(body["banned_until"]) == until
    assert body["banned_at"] is not None
    fetched = await client.get(f"{API}/users/{user_id}", headers=admin_headers)
    assert banned.headers["ETag"] == fetched.headers["ETag"]

    assert_banned(await client.get(f"{API}/users/me", headers=headers), until)
    assert_banned(
        await client.post(f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}),
        until,
    )
    assert_banned(await post_login(client, "user@example.com", USER_PASSWORD), until)
    assert_banned(await client.get(f"{API}/users/me", headers=key_headers), until)
    # A wrong password tells nothing of the ban.
    wrong = await post_login(client, "user@example.com", "Not-The-Password-1")
    assert (wrong.status_code, wrong.json()["code"]) == (401, "credentials_invalid")

    lifted = await client.delete(f"{API}/users/{user_id}/ban", headers=admin_headers)
    assert lifted.status_code == 200, lifted.text
    assert {lifted.json()[name] for name in ("banned_at", "banned_until", "ban_reason")} == {None}
    # The sessions and keys from before the ban ended with it; a new login works.
    assert (await client.get(f"{API}/users/me", headers=headers)).status_code == 401
    assert (await client.get(f"{API}/users/me", headers=key_headers)).status_code == 401
    again = await login(client, "user@example.com", USER_PASSWORD)
    assert (
        await client.get(f"{API}/users/me", headers=bearer(again["access_token"]))
    ).status_code == 200
    # Nothing to lift now.
    none = await client.delete(f"{API}/users/{user_id}/ban", headers=admin_headers)
    assert (none.status_code, none.json()["code"]) == (409, "not_banned")

    audit = await client.get(
        f"{API}/audit", params={"target_id": user_id, "sort": "id"}, headers=admin_headers
    )
    events = [event for event in audit.json() if event["action"] in {"user.ban", "user.unban"}]
    admin_id = (await client.get(f"{API}/users/me", headers=admin_headers)).json()["id"]
    assert [(event["action"], event["actor_id"]) for event in events] == [
        ("user.ban", admin_id),
        ("user.unban", admin_id),
    ]
    assert events[0]["details"] == {"reason": "Spam in the forums", "until": until.isoformat()}


async def test_a_permanent_ban_has_a_null_end(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    tokens = await register()
    assert (await ban(client, admin_headers, tokens["user"]["id"])).status_code == 200
    assert_banned(await post_login(client, "user@example.com", USER_PASSWORD), None)


async def test_a_ban_ends_by_the_clock(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser, clock: Clock
) -> None:
    tokens = await register()
    user_id = tokens["user"]["id"]
    until = utcnow() + timedelta(hours=1)
    assert (await ban(client, admin_headers, user_id, until=iso(until))).status_code == 200
    listed = await client.get(f"{API}/users", params={"banned": "true"}, headers=admin_headers)
    assert [user["id"] for user in listed.json()] == [user_id]
    assert (await post_login(client, "user@example.com", USER_PASSWORD)).status_code == 403

    clock.offset += timedelta(hours=1, seconds=1)
    admin_headers = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
    after = await login(client, "user@example.com", USER_PASSWORD)
    assert (
        await client.get(f"{API}/users/me", headers=bearer(after["access_token"]))
    ).status_code == 200
    listed = await client.get(f"{API}/users", params={"banned": "true"}, headers=admin_headers)
    assert listed.json() == []
    # The lapsed ban stays on record for the admin until lifted.
    user = await client.get(f"{API}/users/{user_id}", headers=admin_headers)
    assert user.json()["ban_reason"] == "spam"


async def test_the_list_filters_by_ban_in_each_dialect(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    banned_id = (await register("banned@example.com"))["user"]["id"]
    free_id = (await register("free@example.com"))["user"]["id"]
    assert (await ban(client, admin_headers, banned_id)).status_code == 200

    async def ids(params: dict[str, str]) -> set[int]:
        response = await client.get(f"{API}/users", params=params, headers=admin_headers)
        assert response.status_code == 200, response.text
        return {user["id"] for user in response.json()}

    assert await ids({"banned": "true"}) == {banned_id}
    assert banned_id not in await ids({"banned": "false"})
    assert free_id in await ids({"banned": "false", "per_page": "100"})
    assert await ids({"banned": "true", "_start": "0", "_end": "10"}) == {banned_id}
    assert await ids({"filter": '{"banned":true}'}) == {banned_id}
    assert banned_id not in await ids({"filter": '{"banned":false}'})
    for params in (
        {"banned": "maybe"},
        {"filter": '{"banned":1}'},
        {"banned": ["true", "false"]},
        {"banned_ne": "true"},
        {"sort": "banned"},
    ):
        refused = await client.get(f"{API}/users", params=params, headers=admin_headers)
        assert refused.status_code == 422, params


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "reason"),
        ({"reason": "   "}, "reason"),
        ({"reason": "x" * 501}, "reason"),
        ({"reason": "bad\u0000"}, "reason"),
        ({"reason": "spam", "until": "2000-01-01T00:00:00Z"}, "until"),
        ({"reason": "spam", "until": "2099-01-01T00:00:00"}, "until"),
        ({"reason": "spam", "until": 4102444800}, "until"),
        ({"reason": "spam", "until": "9999-12-31T00:00:00Z"}, "until"),
        ({"reason": "spam", "until": "tomorrow"}, "until"),
    ],
)
async def test_bad_bans_get_a_422_naming_the_field(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    register: RegisterUser,
    body: dict[str, Any],
    field: str,
) -> None:
    user_id = (await register())["user"]["id"]
    response = await client.post(f"{API}/users/{user_id}/ban", json=body, headers=admin_headers)
    assert (response.status_code, response.json()["code"]) == (422, "validation_failed")
    assert [error["field"] for error in response.json()["errors"]] == [field]


async def test_who_may_ban_whom(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    user_headers: dict[str, str],
) -> None:
    me = (await client.get(f"{API}/users/me", headers=admin_headers)).json()
    self_ban = await ban(client, admin_headers, me["id"])
    assert (self_ban.status_code, self_ban.json()["code"]) == (409, "cannot_ban_self")
    plain = await ban(client, user_headers, me["id"])
    assert (plain.status_code, plain.json()["code"]) == (403, "admin_required")
    missing = await ban(client, admin_headers, 999_999)
    assert (missing.status_code, missing.json()["code"]) == (404, "user_not_found")
    unban_missing = await client.delete(f"{API}/users/999999/ban", headers=admin_headers)
    assert unban_missing.status_code == 404

    # Another admin may be banned; a banned admin then counts as locked out, so the
    # first may no longer deactivate or demote themselves.
    other = await create_user(
        client,
        admin_headers,
        email="second@example.com",
        name="Second",
        password=ADMIN_PASSWORD,
        role="admin",
    )
    assert (await ban(client, admin_headers, other.json()["id"])).status_code == 200
    alone = await client.patch(
        f"{API}/users/{me['id']}", json={"role": "user"}, headers=admin_headers
    )
    assert (alone.status_code, alone.json()["code"]) == (409, "last_admin")


async def test_other_users_do_not_see_a_ban(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    register: RegisterUser,
) -> None:
    banned_id = (await register("banned@example.com"))["user"]["id"]
    viewer = bearer((await register("viewer@example.com"))["access_token"])
    assert (await ban(client, admin_headers, banned_id)).status_code == 200
    seen = await client.get(f"{API}/users/{banned_id}", headers=viewer)
    assert seen.status_code == 200
    assert (seen.json()["banned_at"], seen.json()["ban_reason"]) == (None, None)
    listed = await client.get(f"{API}/users", params={"id": str(banned_id)}, headers=viewer)
    assert listed.json()[0]["ban_reason"] is None
    filtered = await client.get(f"{API}/users", params={"banned": "true"}, headers=viewer)
    assert (filtered.status_code, filtered.json()["code"]) == (403, "admin_required")
    by_admin = await client.get(f"{API}/users/{banned_id}", headers=admin_headers)
    assert by_admin.json()["ban_reason"] == "spam"
