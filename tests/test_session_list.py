"""The session list and ending sessions: your own, and any user's as an admin (audited)."""

from typing import Any

import httpx

from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, USER_PASSWORD, RegisterUser, bearer
from tests.test_sessions import refresh

MINE = f"{API}/users/me/sessions"
ELSEWHERE = "0" * 32


async def login_as(client: httpx.AsyncClient, email: str, password: str, agent: str) -> Any:
    response = await client.post(
        f"{API}/auth/login",
        data={"username": email, "password": password},
        headers={"User-Agent": agent},
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_my_sessions_are_listed_newest_first_with_the_current_one_marked(
    client: httpx.AsyncClient, register: RegisterUser
) -> None:
    await register()
    phone = await login_as(client, "user@example.com", USER_PASSWORD, "Phone/1.0")
    laptop = await login_as(client, "user@example.com", USER_PASSWORD, "Laptop/2.0")
    response = await client.get(MINE, headers=bearer(laptop["access_token"]))
    assert response.status_code == 200
    listed = response.json()
    assert [entry["user_agent"] for entry in listed][:2] == ["Laptop/2.0", "Phone/1.0"]
    assert [entry["current"] for entry in listed] == [True, False, False]
    assert {entry["ip_address"] for entry in listed} == {"127.0.0.1"}
    assert set(listed[0]) == {
        "id", "name", "created_at", "last_used_at", "expires_at", "user_agent", "ip_address",
        "current", "impersonator_id",
    }  # fmt: skip
    assert response.headers["X-Total-Count"] == "3"
    assert response.headers["Content-Range"] == "sessions 0-2/3"
    paged = await client.get(
        MINE, params={"per_page": 1, "page": 2}, headers=bearer(phone["access_token"])
    )
    assert [entry["user_agent"] for entry in paged.json()] == ["Phone/1.0"]
    assert paged.json()[0]["current"] is True
    assert 'rel="next"' in paged.headers["Link"]
    bad = await client.get(
        MINE, params={"sort": "user_agent"}, headers=bearer(phone["access_token"])
    )
    assert bad.status_code == 422


async def test_the_user_agent_is_kept_bounded(
    client: httpx.AsyncClient, register: RegisterUser
) -> None:
    await register()
    tokens = await login_as(client, "user@example.com", USER_PASSWORD, "A" * 600 + "\t")
    listed = (await client.get(MINE, headers=bearer(tokens["access_token"]))).json()
    assert listed[0]["user_agent"] == "A" * 512


async def test_ending_one_of_my_sessions(client: httpx.AsyncClient, register: RegisterUser) -> None:
    mine = await register()
    other = await login_as(client, "user@example.com", USER_PASSWORD, "Other")
    stranger = await register(email="stranger@example.com")
    headers = bearer(mine["access_token"])
    listed = (await client.get(MINE, headers=headers)).json()
    other_id = next(entry["id"] for entry in listed if not entry["current"])
    ended = await client.delete(f"{MINE}/{other_id}", headers=headers)
    assert ended.status_code == 204
    assert (
        await client.get(f"{API}/users/me", headers=bearer(other["access_token"]))
    ).status_code == 401
    assert (await refresh(client, other["refresh_token"])).status_code == 401
    again = await client.delete(f"{MINE}/{other_id}", headers=headers)
    assert again.status_code == 404
    # Someone else's session: the same 404 as one that does not exist.
    stranger_id = (await client.get(MINE, headers=bearer(stranger["access_token"]))).json()[0]["id"]
    theirs = await client.delete(f"{MINE}/{stranger_id}", headers=headers)
    nobody = await client.delete(f"{MINE}/{ELSEWHERE}", headers=headers)
    assert theirs.status_code == nobody.status_code == 404
    assert theirs.headers["content-type"] == "application/problem+json"
    assert (
        await client.get(f"{API}/users/me", headers=bearer(stranger["access_token"]))
    ).is_success
    malformed = await client.delete(f"{MINE}/not-a-session", headers=headers)
    assert malformed.status_code == 422
    # Ending the current one is a logout.
    current_id = next(entry["id"] for entry in listed if entry["current"])
    assert (await client.delete(f"{MINE}/{current_id}", headers=headers)).status_code == 204
    assert (await client.get(MINE, headers=headers)).status_code == 401


async def test_admins_list_and_end_a_users_sessions_in_the_audit_trail(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    first = await register()
    second = await login_as(client, "user@example.com", USER_PASSWORD, "Second")
    user_id = first["user"]["id"]
    url = f"{API}/users/{user_id}/sessions"
    listed = await client.get(url, headers=admin_headers)
    assert listed.status_code == 200
    assert listed.headers["X-Total-Count"] == "2"
    assert [entry["current"] for entry in listed.json()] == [False, False]
    second_id = listed.json()[0]["id"]
    assert (await client.delete(f"{url}/{second_id}", headers=admin_headers)).status_code == 204
    assert (await refresh(client, second["refresh_token"])).status_code == 401
    assert (await client.get(f"{API}/users/me", headers=bearer(first["access_token"]))).is_success
    admins_own = (await client.get(MINE, headers=admin_headers)).json()[0]["id"]
    assert (await client.delete(f"{url}/{admins_own}", headers=admin_headers)).status_code == 404
    assert (await client.delete(url, headers=admin_headers)).status_code == 204
    assert (
        await client.get(f"{API}/users/me", headers=bearer(first["access_token"]))
    ).status_code == 401
    assert (await client.get(url, headers=admin_headers)).json() == []
    assert (
        await client.get(f"{API}/users/99999/sessions", headers=admin_headers)
    ).status_code == 404
    audit = await client.get(
        f"{API}/audit", params={"target_id": user_id, "sort": "id"}, headers=admin_headers
    )
    events = [(event["action"], event["details"]) for event in audit.json()]
    assert events[-2:] == [
        ("user.session_end", {"session_id": second_id}),
        ("user.sessions_end_all", {"sessions": 1}),
    ]


async def test_plain_users_cannot_see_others_sessions(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    admin = await login_as(client, ADMIN_EMAIL, ADMIN_PASSWORD, "Admin")
    url = f"{API}/users/{admin['user']['id']}/sessions"
    assert (await client.get(url, headers=user_headers)).status_code == 403
    assert (await client.delete(url, headers=user_headers)).status_code == 403


async def test_password_change_and_deactivation_end_the_sessions(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    first = await register()
    second = await login_as(client, "user@example.com", USER_PASSWORD, "Second")
    changed = await client.post(
        f"{API}/users/me/password",
        json={"current_password": USER_PASSWORD, "new_password": "Another-Pass-3"},
        headers=bearer(first["access_token"]),
    )
    assert changed.status_code == 200
    fresh = changed.json()
    listed = (await client.get(MINE, headers=bearer(fresh["access_token"]))).json()
    assert [entry["current"] for entry in listed] == [True]
    assert (await refresh(client, second["refresh_token"])).status_code == 401
    url = f"{API}/users/{fresh['user']['id']}"
    assert (await client.patch(url, json={"is_active": False}, headers=admin_headers)).is_success
    assert (await client.get(f"{url}/sessions", headers=admin_headers)).json() == []


async def test_the_id_filter_takes_session_ids_only(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    listed = (await client.get(MINE, headers=user_headers)).json()
    found = await client.get(MINE, params={"id": listed[0]["id"]}, headers=user_headers)
    assert [entry["id"] for entry in found.json()] == [listed[0]["id"]]
    for bad in ("a\x00b", "not-a-session"):
        refused = await client.get(MINE, params={"id": bad}, headers=user_headers)
        assert refused.status_code == 422, bad
