"""ETag / If-Match on user edits, and atomic field updates under concurrency."""

import asyncio
from datetime import datetime
from typing import Any

import httpx

from tests.helpers import API, create_user

NEW_USER = {"email": "target@example.com", "name": "Target", "password": "Quiet-Harbour-51"}


async def make_user(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> dict[str, Any]:
    response = await create_user(client, admin_headers, **NEW_USER)
    return dict(response.json(), etag=response.headers["etag"])


async def test_get_returns_an_etag_that_changes_with_every_edit(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    user = await make_user(client, admin_headers)
    url = f"{API}/users/{user['id']}"
    first = await client.get(url, headers=admin_headers)
    assert first.headers["etag"] == user["etag"] == '"1"'
    patched = await client.patch(url, json={"name": "Renamed"}, headers=admin_headers)
    assert patched.headers["etag"] == '"2"'
    second = await client.get(url, headers=admin_headers)
    assert second.headers["etag"] == '"2"'
    assert (
        "ETag"
        in (
            await client.get(
                url, headers={**admin_headers, "Origin": "https://dashboard.example.com"}
            )
        ).headers["access-control-expose-headers"]
    )


async def test_if_match_refuses_stale_edits_with_412(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    user = await make_user(client, admin_headers)
    url = f"{API}/users/{user['id']}"
    stale = user["etag"]
    first = await client.patch(
        url, json={"name": "First"}, headers={**admin_headers, "If-Match": stale}
    )
    assert first.status_code == 200
    second = await client.patch(
        url, json={"name": "Second"}, headers={**admin_headers, "If-Match": stale}
    )
    assert second.status_code == 412
    assert second.headers["content-type"] == "application/problem+json"
    put = await client.put(
        url,
        json={key: user[key] for key in ("email", "name", "role", "is_active")},
        headers={**admin_headers, "If-Match": stale},
    )
    assert put.status_code == 412
    delete = await client.delete(url, headers={**admin_headers, "If-Match": stale})
    assert delete.status_code == 412
    kept = await client.get(url, headers=admin_headers)
    assert kept.json()["name"] == "First"

    current = first.headers["etag"]
    for if_match in (f'"999", {current}', "*"):
        response = await client.patch(
            url, json={"name": "Third"}, headers={**admin_headers, "If-Match": if_match}
        )
        assert response.status_code == 200, if_match
    weak = await client.patch(
        url, json={"name": "Weak"}, headers={**admin_headers, "If-Match": "W/" + current}
    )
    assert weak.status_code == 412
    fresh = (await client.get(url, headers=admin_headers)).headers["etag"]
    deleted = await client.delete(url, headers={**admin_headers, "If-Match": fresh})
    assert deleted.status_code == 200


async def test_without_if_match_edits_behave_as_before(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    user = await make_user(client, admin_headers)
    url = f"{API}/users/{user['id']}"
    for name in ("One", "Two"):
        response = await client.patch(url, json={"name": name}, headers=admin_headers)
        assert response.status_code == 200
    assert (await client.get(url, headers=admin_headers)).json()["name"] == "Two"


async def test_concurrent_patches_of_different_fields_all_survive(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    user = await make_user(client, admin_headers)
    url = f"{API}/users/{user['id']}"
    # 20 edits at once: 19 renames would race for one column, so each goes to its own
    # field where it can: name, email, role and is_active, then more names.
    changes: list[dict[str, Any]] = [
        {"email": "moved@example.com"},
        {"role": "admin"},
        {"is_active": False},
    ]
    changes += [{"name": f"Name {number:02d}"} for number in range(17)]
    responses = await asyncio.gather(
        *(client.patch(url, json=change, headers=admin_headers) for change in changes)
    )
    assert [response.status_code for response in responses] == [200] * 20
    final = (await client.get(url, headers=admin_headers)).json()
    assert final["email"] == "moved@example.com"
    assert final["role"] == "admin"
    assert final["is_active"] is False
    assert final["name"].startswith("Name ")
    assert datetime.fromisoformat(final["updated_at"]) > datetime.fromisoformat(user["updated_at"])
    etag = (await client.get(url, headers=admin_headers)).headers["etag"]
    assert etag == '"21"'  # every edit bumped the version exactly once
