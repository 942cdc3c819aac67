"""The audit trail of account changes, and GET /audit."""

from typing import Any

import httpx

from tests.helpers import API, RegisterUser


async def events(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    response = await client.get(f"{API}/audit", params=params, headers=headers)
    assert response.status_code == 200, response.text
    body: list[dict[str, Any]] = response.json()
    return body


async def test_admin_actions_are_recorded(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    admin = (await client.get(f"{API}/users/me", headers=admin_headers)).json()
    created = await client.post(
        f"{API}/users",
        json={"email": "audited@example.com", "name": "A", "password": "Copper-Meadow-38"},
        headers=admin_headers,
    )
    target = created.json()["id"]
    url = f"{API}/users/{target}"
    await client.patch(url, json={"name": "B", "password": "Secret-Pass-2"}, headers=admin_headers)
    await client.patch(url, json={"role": "admin"}, headers=admin_headers)
    await client.patch(url, json={"is_active": False}, headers=admin_headers)
    await client.delete(url, headers=admin_headers)

    trail = await events(client, admin_headers, target_id=target)
    assert [(event["action"], event["details"]) for event in trail] == [
        ("user.create", {"email": "audited@example.com", "role": "user"}),
        ("user.update", {"fields": ["name", "password"]}),
        ("user.role_change", {"from": "user", "to": "admin"}),
        ("user.deactivate", {}),
        ("user.delete", {"email": "audited@example.com"}),
    ]
    assert {event["actor_id"] for event in trail} == {admin["id"]}
    assert "Secret-Pass-2" not in str(trail)


async def test_a_refused_change_leaves_no_event(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    admin = (await client.get(f"{API}/users/me", headers=admin_headers)).json()
    refused = await client.patch(
        f"{API}/users/{admin['id']}", json={"role": "user"}, headers=admin_headers
    )
    assert refused.status_code == 409
    trail = await events(client, admin_headers, target_id=admin["id"])
    # Only start-up's creation of the first admin (no actor); no trace of the refusal.
    assert [(event["action"], event["actor_id"]) for event in trail] == [("user.create", None)]


async def test_audit_list_filters_and_pages(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    ids = []
    for number in range(3):
        response = await client.post(
            f"{API}/users",
            json={"email": f"u{number}@example.com", "name": "U", "password": "Copper-Meadow-38"},
            headers=admin_headers,
        )
        ids.append(response.json()["id"])
    await client.patch(f"{API}/users/{ids[0]}", json={"role": "admin"}, headers=admin_headers)
    await register()  # a self-registration is not an admin action

    admin = (await client.get(f"{API}/users/me", headers=admin_headers)).json()
    page = await client.get(
        f"{API}/audit",
        params={"per_page": 2, "sort": "-id", "actor_id": admin["id"]},
        headers=admin_headers,
    )
    assert page.headers["x-total-count"] == "4"
    assert page.headers["content-range"] == "audit 0-1/4"
    assert [event["action"] for event in page.json()] == ["user.role_change", "user.create"]
    creates = await events(client, admin_headers, action="user.create", actor_id=admin["id"])
    assert [event["target_id"] for event in creates] == ids
    first = creates[0]["created_at"]
    later = await events(
        client, admin_headers, created_after=first, action="user.create", actor_id=admin["id"]
    )
    assert [event["target_id"] for event in later] == ids[1:]
    dashboard = await client.get(
        f"{API}/audit",
        params={"_start": 0, "_end": 10, "action": "user.role_change"},
        headers=admin_headers,
    )
    assert len(dashboard.json()) == 1
    bad = await client.get(f"{API}/audit", params={"q": "x"}, headers=admin_headers)
    assert bad.status_code == 422
    unknown = await client.get(
        f"{API}/audit", params={"action": "user.hack"}, headers=admin_headers
    )
    assert unknown.status_code == 422


async def test_audit_is_admin_only(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    assert (await client.get(f"{API}/audit", headers=user_headers)).status_code == 403
    assert (await client.get(f"{API}/audit")).status_code == 401
