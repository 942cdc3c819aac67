import asyncio
from datetime import datetime
from typing import Any

import httpx

from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    USER_PASSWORD,
    RegisterUser,
    bearer,
    create_user,
    login,
)

NEW_USER = {"email": "new@example.com", "name": "New User", "password": "New-Password-1"}


async def create_new_user(
    client: httpx.AsyncClient, headers: dict[str, str], **fields: Any
) -> dict[str, Any]:
    """NEW_USER, with these fields changed, created by an admin."""
    body: dict[str, Any] = (await create_user(client, headers, **{**NEW_USER, **fields})).json()
    return body


async def new_user_headers(client: httpx.AsyncClient) -> dict[str, str]:
    return bearer((await login(client, NEW_USER["email"], NEW_USER["password"]))["access_token"])


async def test_list_requires_a_token(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{API}/users")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/problem+json"


async def test_list_pages_through_users_in_id_order(
    client: httpx.AsyncClient, user_headers: dict[str, str], register: RegisterUser
) -> None:
    for number in range(4):
        await register(email=f"user{number}@example.com")
    first = await client.get(f"{API}/users", params={"per_page": 2}, headers=user_headers)
    second = await client.get(
        f"{API}/users", params={"page": 2, "per_page": 2}, headers=user_headers
    )
    far = await client.get(f"{API}/users", params={"page": 50}, headers=user_headers)
    assert first.status_code == second.status_code == 200
    ids = [user["id"] for user in first.json() + second.json()]
    assert len(ids) == 4
    assert ids == sorted(ids)
    assert far.json() == []
    everyone = await client.get(f"{API}/users", headers=user_headers)
    assert len(everyone.json()) == 6  # admin + the fixture's user + 4
    assert all("hashed_password" not in user for user in everyone.json())


async def test_list_rejects_bad_paging(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"page": 0}, "page"),
        ({"per_page": 0}, "per_page"),
        ({"per_page": 1001}, "per_page"),
        ({"page": "x"}, "page"),
        ({"page": 10**20}, "page"),
    ]
    for params, field in cases:
        response = await client.get(f"{API}/users", params=params, headers=user_headers)
        assert response.status_code == 422, params
        assert response.json()["errors"][0]["field"] == field


async def test_admin_creates_a_user_with_location(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.post(
        f"{API}/users", json={**NEW_USER, "role": "admin"}, headers=admin_headers
    )
    assert response.status_code == 201
    user = response.json()
    assert user["role"] == "admin"
    assert response.headers["location"] == f"http://testserver{API}/users/{user['id']}"
    fetched = await client.get(response.headers["location"], headers=admin_headers)
    assert fetched.json() == user
    assert (await login(client, NEW_USER["email"], NEW_USER["password"]))["access_token"]


async def test_create_is_admin_only(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await client.post(f"{API}/users", json=NEW_USER, headers=user_headers)
    assert response.status_code == 403
    assert response.json()["detail"] == "This action requires the admin role."


async def test_create_conflict_and_validation(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await create_new_user(client, admin_headers)
    duplicate = await client.post(
        f"{API}/users", json={**NEW_USER, "email": "NEW@example.com"}, headers=admin_headers
    )
    assert duplicate.status_code == 409
    invalid = await client.post(
        f"{API}/users", json={**NEW_USER, "role": "owner"}, headers=admin_headers
    )
    assert invalid.status_code == 422
    assert invalid.json()["errors"][0]["field"] == "role"


async def test_get_user_and_404(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    me = (await client.get(f"{API}/users/me", headers=user_headers)).json()
    assert me.pop("impersonated_by") is None  # /users/me's own: who acts as you, if anyone
    response = await client.get(f"{API}/users/{me['id']}", headers=user_headers)
    assert response.status_code == 200
    assert response.json() == me
    missing = await client.get(f"{API}/users/999999", headers=user_headers)
    assert missing.status_code == 404
    assert missing.json()["detail"] == "User 999999 does not exist."
    for bad_id in ("0", str(2**31)):
        response = await client.get(f"{API}/users/{bad_id}", headers=user_headers)
        assert response.status_code == 422, bad_id
        assert response.json()["errors"][0]["field"] == "user_id"
    not_an_id = await client.get(f"{API}/users/abc", headers=user_headers)
    assert not_an_id.status_code == 404


async def test_me_and_update_me(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    before = (await client.get(f"{API}/users/me", headers=user_headers)).json()
    response = await client.patch(
        f"{API}/users/me", json={"name": "  Renamed  ", "role": "admin"}, headers=user_headers
    )
    assert response.status_code == 200
    after = response.json()
    assert after["name"] == "Renamed"
    assert after["role"] == "user"  # only the name is yours to change
    assert datetime.fromisoformat(after["updated_at"]) > datetime.fromisoformat(
        before["updated_at"]
    )
    assert after["created_at"] == before["created_at"]
    empty = await client.patch(f"{API}/users/me", json={"name": ""}, headers=user_headers)
    assert empty.status_code == 422


async def test_timestamps_are_utc(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    me = (await client.get(f"{API}/users/me", headers=user_headers)).json()
    for field in ("created_at", "updated_at"):
        assert datetime.fromisoformat(me[field]).utcoffset() is not None
        assert me[field].endswith(("Z", "+00:00"))


async def test_admin_updates_fields(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    user = await create_new_user(client, admin_headers)
    response = await client.patch(
        f"{API}/users/{user['id']}",
        json={"name": "Changed", "email": "Changed@Example.com"},
        headers=admin_headers,
    )
    assert response.status_code == 200
    assert response.json()["name"] == "Changed"
    assert response.json()["email"] == "changed@example.com"
    assert response.json()["role"] == "user"


async def test_update_conflicts_404_and_nulls(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    user = await create_new_user(client, admin_headers)
    taken = await client.patch(
        f"{API}/users/{user['id']}", json={"email": ADMIN_EMAIL}, headers=admin_headers
    )
    assert taken.status_code == 409
    missing = await client.patch(f"{API}/users/999999", json={"name": "x"}, headers=admin_headers)
    assert missing.status_code == 404
    null = await client.patch(
        f"{API}/users/{user['id']}", json={"name": None}, headers=admin_headers
    )
    assert null.status_code == 422
    assert null.json()["errors"][0]["field"] == "name"
    unchanged = await client.get(f"{API}/users/{user['id']}", headers=admin_headers)
    assert unchanged.json()["email"] == NEW_USER["email"]


async def test_update_is_admin_only(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    me = (await client.get(f"{API}/users/me", headers=user_headers)).json()
    response = await client.patch(
        f"{API}/users/{me['id']}", json={"role": "admin"}, headers=user_headers
    )
    assert response.status_code == 403


async def test_admin_sets_a_password_and_old_tokens_die(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    user = await create_new_user(client, admin_headers)
    tokens = await login(client, NEW_USER["email"], NEW_USER["password"])
    response = await client.patch(
        f"{API}/users/{user['id']}", json={"password": "Brand-New-Pass-2"}, headers=admin_headers
    )
    assert response.status_code == 200
    old = await client.get(f"{API}/users/me", headers=bearer(tokens["access_token"]))
    assert old.status_code == 401
    refused = await client.post(
        f"{API}/auth/login", data={"username": NEW_USER["email"], "password": NEW_USER["password"]}
    )
    assert refused.status_code == 401
    assert await login(client, NEW_USER["email"], "Brand-New-Pass-2")


async def test_role_change_and_deactivation_revoke_tokens(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    user = await create_new_user(client, admin_headers)
    for change, status in (({"role": "admin"}, 401), ({"is_active": False}, 403)):
        token = (await login(client, NEW_USER["email"], NEW_USER["password"]))["access_token"]
        response = await client.patch(
            f"{API}/users/{user['id']}", json=change, headers=admin_headers
        )
        assert response.status_code == 200
        assert (await client.get(f"{API}/users/me", headers=bearer(token))).status_code == status
    # A name change revokes nothing.
    await client.patch(f"{API}/users/{user['id']}", json={"is_active": True}, headers=admin_headers)
    token = (await login(client, NEW_USER["email"], NEW_USER["password"]))["access_token"]
    await client.patch(f"{API}/users/{user['id']}", json={"name": "Same"}, headers=admin_headers)
    assert (await client.get(f"{API}/users/me", headers=bearer(token))).status_code == 200


async def test_deactivated_user_with_a_current_token_gets_403(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    from backend import crud

    body = await register()
    # Flip the flag behind the API's back: the token stays valid, the account does not.
    app = client._transport.app  # type: ignore[attr-defined]
    async with app.state.runtime.sessionmaker() as db:
        user = await crud.get_user(db, user_id=body["user"]["id"])
        assert user is not None
        user.is_active = False
        db.add(user)
        await db.commit()
    response = await client.get(f"{API}/users/me", headers=bearer(body["access_token"]))
    assert response.status_code == 403
    assert response.json()["detail"] == "This account is deactivated."


async def test_last_active_admin_is_protected(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    admin = (await client.get(f"{API}/users/me", headers=admin_headers)).json()
    for change in ({"role": "user"}, {"is_active": False}):
        response = await client.patch(
            f"{API}/users/{admin['id']}", json=change, headers=admin_headers
        )
        assert response.status_code == 409, change
        assert "last active admin" in response.json()["detail"]
    second = await create_new_user(client, admin_headers, role="admin")
    demoted = await client.patch(
        f"{API}/users/{admin['id']}", json={"role": "user"}, headers=admin_headers
    )
    assert demoted.status_code == 200
    second_headers = bearer(
        (await login(client, NEW_USER["email"], NEW_USER["password"]))["access_token"]
    )
    response = await client.patch(
        f"{API}/users/{second['id']}", json={"is_active": False}, headers=second_headers
    )
    assert response.status_code == 409


async def test_two_admins_demoting_each_other_leave_one_admin(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    admin = (await client.get(f"{API}/users/me", headers=admin_headers)).json()
    second = await create_new_user(client, admin_headers, role="admin")
    second_headers = bearer(
        (await login(client, NEW_USER["email"], NEW_USER["password"]))["access_token"]
    )
    responses = await asyncio.gather(
        client.patch(f"{API}/users/{second['id']}", json={"role": "user"}, headers=admin_headers),
        client.patch(f"{API}/users/{admin['id']}", json={"role": "user"}, headers=second_headers),
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses[0] == 200
    assert statuses[1] in {401, 409, 503}  # refused, or the actor was demoted first
    users = await client.get(f"{API}/users", params={"per_page": 100}, headers=admin_headers)
    if users.status_code == 401:  # the first admin lost the role: use the second
        users = await client.get(f"{API}/users", headers=second_headers)
    assert sum(1 for user in users.json() if user["role"] == "admin") == 1


async def test_delete_returns_the_record_then_404(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    user = await create_new_user(client, admin_headers)
    response = await client.delete(f"{API}/users/{user['id']}", headers=admin_headers)
    assert response.status_code == 200
    assert response.json() == user
    assert (await client.get(f"{API}/users/{user['id']}", headers=admin_headers)).status_code == 404
    again = await client.delete(f"{API}/users/{user['id']}", headers=admin_headers)
    assert again.status_code == 404


async def test_delete_guards(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_headers: dict[str, str]
) -> None:
    admin = (await client.get(f"{API}/users/me", headers=admin_headers)).json()
    own = await client.delete(f"{API}/users/{admin['id']}", headers=admin_headers)
    assert own.status_code == 409
    assert own.json()["detail"] == "You cannot delete your own account."
    forbidden = await client.delete(f"{API}/users/{admin['id']}", headers=user_headers)
    assert forbidden.status_code == 403


async def test_deleted_users_tokens_stop_working(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    body = await register()
    await client.delete(f"{API}/users/{body['user']['id']}", headers=admin_headers)
    response = await client.get(f"{API}/users/me", headers=bearer(body["access_token"]))
    assert response.status_code == 401


async def test_paths_answer_with_a_trailing_slash_without_redirect(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    listed = await client.get(f"{API}/users/", headers=admin_headers)
    assert listed.status_code == 200
    created = await client.post(f"{API}/users/", json=NEW_USER, headers=admin_headers)
    assert created.status_code == 201
    me = await client.get(f"{API}/users/me/", headers=admin_headers)
    assert me.status_code == 200
    token = await client.post(
        f"{API}/auth/login/", data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert token.status_code == 200
    registered = await client.post(
        f"{API}/auth/register/",
        json={"email": "slash@example.com", "name": "S", "password": USER_PASSWORD},
    )
    assert registered.status_code == 200


async def test_is_active_takes_json_booleans_only(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    admin = (await client.get(f"{API}/users/me", headers=admin_headers)).json()
    for value in (0, "false", "no", None):
        response = await client.patch(
            f"{API}/users/{admin['id']}", json={"is_active": value}, headers=admin_headers
        )
        assert response.status_code == 422, value
    me = await client.get(f"{API}/users/me", headers=admin_headers)
    assert me.json()["is_active"] is True


async def test_method_not_allowed_lists_every_method_of_the_path(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    me = await client.put(f"{API}/users/me", headers=admin_headers)
    assert me.status_code == 405
    assert set(me.headers["allow"].split(", ")) >= {"GET", "PATCH", "DELETE"}
    one = await client.post(f"{API}/users/1", headers=admin_headers)
    assert one.status_code == 405
    assert set(one.headers["allow"].split(", ")) == {"GET", "PATCH", "PUT", "DELETE"}
