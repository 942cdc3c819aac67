"""Impersonation for support: POST /users/{id}/impersonate, the marked session and
tokens, its 60-minute cap, the routes it may not use, its audited requests, and
POST /auth/impersonation/stop."""

from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI

from backend.auth.deps import RecentCaller
from backend.clock import Clock, utcnow
from backend.config import Settings
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
    make_settings,
)

SESSION_ID = "0" * 32


async def impersonate(
    client: httpx.AsyncClient, admin: dict[str, str], user_id: int
) -> httpx.Response:
    return await client.post(f"{API}/users/{user_id}/impersonate", headers=admin)


async def admin_id(client: httpx.AsyncClient, admin: dict[str, str]) -> int:
    me: int = (await client.get(f"{API}/users/me", headers=admin)).json()["id"]
    return me


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(
        token,
        TEST_SECRET_KEY,
        algorithms=["HS256"],
        options={"verify_exp": False, "verify_iat": False},  # the test's clock moves
    )
    return decoded


async def test_an_impersonation_is_a_marked_session_of_the_user(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    own = await register()
    user_id = own["user"]["id"]
    response = await impersonate(client, admin_headers, user_id)
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert tokens["user"]["id"] == user_id
    assert tokens["refresh_token"]  # in the body: the admin's own cookie stays as it is
    assert "set-cookie" not in response.headers
    admin = await admin_id(client, admin_headers)
    assert claims(tokens["access_token"])["imp"] == admin
    assert claims(tokens["refresh_token"])["imp"] == admin
    assert "imp" not in claims(own["access_token"])

    me = await client.get(f"{API}/users/me", headers=bearer(tokens["access_token"]))
    assert me.json()["impersonated_by"] == {"id": admin, "email": ADMIN_EMAIL}
    mine = await client.get(f"{API}/users/me", headers=bearer(own["access_token"]))
    assert mine.json()["impersonated_by"] is None
    # The user sees the session in their list, with the admin's id.
    listed = await client.get(f"{API}/users/me/sessions", headers=bearer(own["access_token"]))
    marks = sorted((entry["impersonator_id"] or 0) for entry in listed.json())
    assert marks == [0, admin]
    # It is not the user's login.
    assert tokens["user"]["last_login_at"] == own["user"]["last_login_at"]
    # The user may end it like any session of theirs.
    session_id = claims(tokens["access_token"])["sid"]
    ended = await client.delete(
        f"{API}/users/me/sessions/{session_id}", headers=bearer(own["access_token"])
    )
    assert ended.status_code == 204
    assert (
        await client.get(f"{API}/users/me", headers=bearer(tokens["access_token"]))
    ).status_code == 401


async def test_it_lasts_sixty_minutes_at_most_whatever_the_refreshes(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser, clock: Clock
) -> None:
    user_id = (await register())["user"]["id"]
    started = utcnow()
    tokens = (await impersonate(client, admin_headers, user_id)).json()
    end = started + timedelta(minutes=60)
    assert claims(tokens["refresh_token"])["exp"] <= end.timestamp() + 1
    clock.offset += timedelta(minutes=50)
    refreshed = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    renewed = refreshed.json()
    assert claims(renewed["access_token"])["imp"] == claims(tokens["access_token"])["imp"]
    assert claims(renewed["access_token"])["exp"] <= end.timestamp() + 1
    # Neither the impersonation nor its refresh is the user's login.
    assert renewed["user"]["last_login_at"] == tokens["user"]["last_login_at"]
    user = await client.get(f"{API}/users/{user_id}", headers=bearer(renewed["access_token"]))
    assert user.json()["last_login_at"] == tokens["user"]["last_login_at"]
    clock.offset += timedelta(minutes=10, seconds=2)
    gone = await client.get(f"{API}/users/me", headers=bearer(renewed["access_token"]))
    assert gone.status_code == 401
    again = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": renewed["refresh_token"]}
    )
    assert again.status_code == 401


def test_the_setting_is_capped_at_sixty_minutes() -> None:
    assert make_settings("sqlite:///unused.db", IMPERSONATION_MINUTES=60)
    with pytest.raises(ValueError, match="IMPERSONATION_MINUTES"):
        make_settings("sqlite:///unused.db", IMPERSONATION_MINUTES=61)


async def test_a_shorter_setting_is_the_sessions_lifetime(
    client: httpx.AsyncClient,
    settings: Settings,
    admin_headers: dict[str, str],
    register: RegisterUser,
) -> None:
    settings.IMPERSONATION_MINUTES = 15
    user_id = (await register())["user"]["id"]
    started = utcnow()
    tokens = (await impersonate(client, admin_headers, user_id)).json()
    assert (
        claims(tokens["refresh_token"])["exp"] <= (started + timedelta(minutes=15)).timestamp() + 1
    )


async def test_a_recent_login_is_needed(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser, clock: Clock
) -> None:
    user_id = (await register())["user"]["id"]
    clock.offset += timedelta(minutes=6)  # past REAUTHENTICATION_WINDOW_SECONDS
    stale = await impersonate(client, admin_headers, user_id)
    assert (stale.status_code, stale.json()["code"]) == (403, "reauthentication_required")
    proof = await client.post(
        f"{API}/auth/reauthenticate", json={"password": ADMIN_PASSWORD}, headers=admin_headers
    )
    assert proof.status_code == 200
    assert (await impersonate(client, admin_headers, user_id)).status_code == 200


async def test_who_cannot_be_impersonated(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    register: RegisterUser,
) -> None:
    admin = await admin_id(client, admin_headers)
    other_admin = await create_user(
        client,
        admin_headers,
        email="second@example.com",
        name="Second",
        password=ADMIN_PASSWORD,
        role="admin",
    )
    inactive = (await register("inactive@example.com"))["user"]["id"]
    await client.patch(f"{API}/users/{inactive}", json={"is_active": False}, headers=admin_headers)
    banned = (await register("banned@example.com"))["user"]["id"]
    await client.post(f"{API}/users/{banned}/ban", json={"reason": "x"}, headers=admin_headers)
    for target in (admin, other_admin.json()["id"], inactive, banned):
        refused = await impersonate(client, admin_headers, target)
        assert (refused.status_code, refused.json()["code"]) == (403, "impersonation_refused")
    missing = await impersonate(client, admin_headers, 999_999)
    assert (missing.status_code, missing.json()["code"]) == (404, "user_not_found")

    plain = await register("plain@example.com")
    headers = bearer(plain["access_token"])
    by_user = await impersonate(client, headers, banned)
    assert (by_user.status_code, by_user.json()["code"]) == (403, "admin_required")
    key = await client.post(
        f"{API}/users/me/tokens", json={"name": "k", "scope": "write"}, headers=admin_headers
    )
    by_key = await impersonate(client, bearer(key.json()["secret"]), plain["user"]["id"])
    assert (by_key.status_code, by_key.json()["code"]) == (403, "api_key_not_allowed")
    # The impersonated user is no admin: an impersonation cannot start another.
    imp = (await impersonate(client, admin_headers, plain["user"]["id"])).json()
    nested = await impersonate(client, bearer(imp["access_token"]), banned)
    assert nested.status_code == 403


# What an impersonation may not do: credentials, and (below) every route of its own
# API keys and sessions.
FORBIDDEN = [
    (
        "POST",
        "/users/me/password",
        {"current_password": USER_PASSWORD, "new_password": "Xy-9876543210"},
    ),
    ("POST", "/auth/reauthenticate", {"password": USER_PASSWORD}),
    ("POST", "/auth/logout-all", None),
]
BODIES = {("post", "/users/me/tokens"): {"name": "k", "scope": "read"}}
PATH_VALUES = {
    "{session_id}": SESSION_ID,
    "{token_id}": "1",
    "{passkey_id}": "1",
    "{identity_id}": "1",
    "{identity}": "1",
}
# Every route of these, reads included.
OWN_KEYS_AND_SESSIONS = ("/users/me/tokens", "/users/me/sessions")
# Every change to these: the ways to sign in (reading them is the user's own business).
SIGN_IN_METHODS = ("/users/me/passkeys", "/users/me/identities")


def keys_and_sessions_routes(app: FastAPI) -> list[tuple[str, str, Any]]:
    """Every route of the caller's own keys and sessions, and every change to the ways it
    signs in (from the OpenAPI document), with its ids filled in."""
    walked = []
    for template, operations in app.openapi()["paths"].items():
        path = template.removeprefix(API)
        if not path.startswith((*OWN_KEYS_AND_SESSIONS, *SIGN_IN_METHODS)):
            continue
        for method in operations:
            if method == "get" and path.startswith(SIGN_IN_METHODS):
                continue
            body = BODIES.get((method, path))
            filled = path
            for name, value in PATH_VALUES.items():
                filled = filled.replace(name, value)
            walked.append((method.upper(), filled, body))
    return walked


async def test_credentials_keys_and_sessions_are_out_of_reach(
    client: httpx.AsyncClient, app: FastAPI, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    async def probe(caller: RecentCaller) -> None:
        """A route that asks for a recent proof, as the sensitive routes do."""

    app.add_api_route("/recent-probe", probe, methods=["POST"])
    user_id = (await register())["user"]["id"]
    tokens = (await impersonate(client, admin_headers, user_id)).json()
    headers = bearer(tokens["access_token"])
    walked = keys_and_sessions_routes(app)
    assert len(walked) >= 5, walked  # list, create, revoke keys; list, end sessions
    for method, path, body in [*FORBIDDEN, *walked]:
        refused = await client.request(method, f"{API}{path}", json=body, headers=headers)
        assert (refused.status_code, refused.json()["code"]) == (
            403,
            "impersonation_forbidden",
        ), (method, path)
    recent = await client.post("/recent-probe", headers=headers)
    assert (recent.status_code, recent.json()["code"]) == (403, "impersonation_forbidden")
    # Still the user: reading and plain edits work.
    renamed = await client.patch(f"{API}/users/me", json={"name": "Renamed"}, headers=headers)
    assert renamed.status_code == 200


async def test_every_request_is_audited_with_both_ids(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    user_id = (await register())["user"]["id"]
    admin = await admin_id(client, admin_headers)
    tokens = (await impersonate(client, admin_headers, user_id)).json()
    headers = bearer(tokens["access_token"])
    assert (await client.get(f"{API}/users/me", headers=headers)).status_code == 200
    assert (
        await client.patch(f"{API}/users/me", json={"name": "Renamed"}, headers=headers)
    ).status_code == 200
    assert (await client.get(f"{API}/users/me/tokens", headers=headers)).status_code == 403
    audit = await client.get(
        f"{API}/audit",
        params={"target_id": str(user_id), "per_page": "100", "sort": "id"},
        headers=admin_headers,
    )
    events = audit.json()
    session_id = claims(tokens["access_token"])["sid"]
    started = [event for event in events if event["action"] == "user.impersonation_start"]
    assert [(event["actor_id"], event["details"]["session_id"]) for event in started] == [
        (admin, session_id)
    ]
    requests = [event for event in events if event["action"] == "user.impersonated_request"]
    assert [
        (
            e["actor_id"],
            e["target_id"],
            e["details"]["method"],
            e["details"]["route"],
            e["details"]["status"],
        )
        for e in requests
    ] == [
        (admin, user_id, "GET", f"{API}/users/me", 200),
        (admin, user_id, "PATCH", f"{API}/users/me", 200),
        (admin, user_id, "GET", f"{API}/users/me/tokens", 403),
    ]
    assert {event["details"]["session_id"] for event in requests} == {session_id}
    # The name change itself is on the trail as the user's own edit, in its transaction.
    assert any(event["action"] == "user.update" for event in events)


async def test_stop_ends_the_impersonation_and_leaves_the_admin_alone(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    own = await register()
    user_id = own["user"]["id"]
    tokens = (await impersonate(client, admin_headers, user_id)).json()
    headers = bearer(tokens["access_token"])
    not_one = await client.post(
        f"{API}/auth/impersonation/stop", headers=bearer(own["access_token"])
    )
    assert (not_one.status_code, not_one.json()["code"]) == (409, "not_impersonating")
    assert (await client.post(f"{API}/auth/impersonation/stop", headers=headers)).status_code == 204
    assert (await client.get(f"{API}/users/me", headers=headers)).status_code == 401
    refreshed = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 401
    assert (await client.get(f"{API}/users/me", headers=admin_headers)).status_code == 200
    assert (
        await client.get(f"{API}/users/me", headers=bearer(own["access_token"]))
    ).status_code == 200
    audit = await client.get(
        f"{API}/audit", params={"action": "user.impersonation_stop"}, headers=admin_headers
    )
    admin = await admin_id(client, admin_headers)
    assert [(e["actor_id"], e["target_id"]) for e in audit.json()] == [(admin, user_id)]


@pytest.mark.parametrize("change", ["deactivate", "delete", "logout-all"])
async def test_it_ends_when_its_admin_can_no_longer_act(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser, change: str
) -> None:
    user_id = (await register())["user"]["id"]
    second = await create_user(
        client,
        admin_headers,
        email="second@example.com",
        name="Second",
        password=ADMIN_PASSWORD,
        role="admin",
    )
    second_headers = bearer(
        (await login(client, "second@example.com", ADMIN_PASSWORD))["access_token"]
    )
    tokens = (await impersonate(client, second_headers, user_id)).json()
    headers = bearer(tokens["access_token"])
    assert (await client.get(f"{API}/users/me", headers=headers)).status_code == 200
    target = f"{API}/users/{second.json()['id']}"
    if change == "deactivate":
        done = await client.patch(target, json={"is_active": False}, headers=admin_headers)
    elif change == "delete":
        done = await client.delete(target, headers=admin_headers)
    else:  # the admin stays an admin: their sessions end, the impersonation with them
        done = await client.post(f"{API}/auth/logout-all", headers=second_headers)
    assert done.status_code < 300
    assert (await client.get(f"{API}/users/me", headers=headers)).status_code == 401
