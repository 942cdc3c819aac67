"""user_metadata (the owner's) and app_metadata (the admins'): edits, caps, who may set
which, the list's key filters, and the version rules of the users routes."""

import json
from typing import Any

import httpx

from backend.models import METADATA_MAX_BYTES, METADATA_MAX_DEPTH
from tests.helpers import API, RegisterUser, bearer


async def _me(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.get(f"{API}/users/me", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _field_errors(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_failed"
    return {error["field"]: error["message"] for error in response.json()["errors"]}


async def test_owner_edits_user_metadata_and_admin_app_metadata(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_headers: dict[str, str]
) -> None:
    me = await _me(client, user_headers)
    assert (me["user_metadata"], me["app_metadata"]) == ({}, {})

    data = {"team": "blue", "prefs": {"theme": "dark", "langs": ["en", "fr"]}, "n": 1.5}
    edited = await client.patch(
        f"{API}/users/me", json={"user_metadata": data}, headers=user_headers
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["user_metadata"] == data
    assert edited.json()["name"] == me["name"]  # fields not sent are left alone
    assert edited.headers["etag"] == f'"{me_version(edited)}"'

    # Sent again, the object is replaced whole, not merged.
    replaced = await client.patch(
        f"{API}/users/me", json={"user_metadata": {"team": "red"}}, headers=user_headers
    )
    assert replaced.json()["user_metadata"] == {"team": "red"}

    refused = await client.patch(
        f"{API}/users/me", json={"app_metadata": {"plan": "pro"}}, headers=user_headers
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "admin_required"
    assert "app_metadata" in refused.json()["detail"]

    by_admin = await client.patch(
        f"{API}/users/{me['id']}",
        json={"app_metadata": {"plan": "pro"}, "user_metadata": {"team": "green"}},
        headers=admin_headers,
    )
    assert by_admin.status_code == 200, by_admin.text
    read = await client.get(f"{API}/users/{me['id']}", headers=admin_headers)
    assert read.json()["app_metadata"] == {"plan": "pro"}
    assert read.json()["user_metadata"] == {"team": "green"}
    assert (await _me(client, user_headers))["app_metadata"] == {"plan": "pro"}

    # An admin may set their own app_metadata at /users/me too.
    own = await client.patch(
        f"{API}/users/me", json={"app_metadata": {"tier": 1}}, headers=admin_headers
    )
    assert own.status_code == 200, own.text
    assert own.json()["app_metadata"] == {"tier": 1}

    trail = await client.get(
        f"{API}/audit",
        params={"target_id": me["id"], "action": "user.update"},
        headers=admin_headers,
    )
    assert [event["details"] for event in trail.json()][-1] == {
        "fields": ["app_metadata", "user_metadata"]
    }


def me_version(response: httpx.Response) -> int:
    return int(response.headers["etag"].strip('"'))


async def test_caps_and_shapes_are_422s_naming_the_field(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_headers: dict[str, str]
) -> None:
    deep: dict[str, Any] = {}
    level = deep
    for _ in range(METADATA_MAX_DEPTH - 1):
        level["x"] = {}
        level = level["x"]
    ok = await client.patch(f"{API}/users/me", json={"user_metadata": deep}, headers=user_headers)
    assert ok.status_code == 200, ok.text
    level["x"] = {}  # one level too many
    too_deep = await client.patch(
        f"{API}/users/me", json={"user_metadata": deep}, headers=user_headers
    )
    assert "levels deep" in _field_errors(too_deep)["user_metadata"]
    in_list = await client.patch(
        f"{API}/users/me", json={"user_metadata": {"a": [[[[1]]]]}}, headers=user_headers
    )
    assert "levels deep" in _field_errors(in_list)["user_metadata"]

    # 8 KB exactly fits; one byte more does not (counted in UTF-8: é is two bytes).
    overhead = len(json.dumps({"k": ""}, separators=(",", ":")))
    fits = {"k": "é" * ((METADATA_MAX_BYTES - overhead) // 2)}
    fits_response = await client.patch(
        f"{API}/users/me", json={"user_metadata": fits}, headers=user_headers
    )
    assert fits_response.status_code == 200, fits_response.text
    fits["k"] += "a"
    big = await client.patch(f"{API}/users/me", json={"user_metadata": fits}, headers=user_headers)
    assert "bytes" in _field_errors(big)["user_metadata"]

    for not_object in ([1, 2], "text", 3):
        refused = await client.patch(
            f"{API}/users/me", json={"user_metadata": not_object}, headers=user_headers
        )
        assert "user_metadata" in _field_errors(refused)
    null = await client.patch(f"{API}/users/me", json={"user_metadata": None}, headers=user_headers)
    assert "must not be null" in _field_errors(null)["user_metadata"]
    nul = await client.patch(
        f"{API}/users/me", json={"user_metadata": {"a\u0000": 1}}, headers=user_headers
    )
    assert "NUL" in _field_errors(nul)["user_metadata"]
    nan = await client.patch(
        f"{API}/users/me",
        content='{"user_metadata": {"a": NaN}}',
        headers={**user_headers, "Content-Type": "application/json"},
    )
    assert nan.status_code == 422, nan.text

    me = await _me(client, user_headers)
    app = await client.patch(
        f"{API}/users/{me['id']}", json={"app_metadata": {"a": [1] * 5000}}, headers=admin_headers
    )
    assert "bytes" in _field_errors(app)["app_metadata"]
    # Nothing refused was stored.
    assert (await _me(client, user_headers))["user_metadata"] == {
        "k": "é" * ((METADATA_MAX_BYTES - overhead) // 2)
    }


async def test_if_match_and_put_keep_their_rules(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_headers: dict[str, str]
) -> None:
    url = f"{API}/users/{(await _me(client, user_headers))['id']}"
    me = await client.get(url, headers=admin_headers)
    version = me.headers["etag"]

    first = await client.patch(
        f"{API}/users/me",
        json={"user_metadata": {"a": 1}},
        headers={**user_headers, "If-Match": version},
    )
    assert first.status_code == 200, first.text
    stale = await client.patch(
        f"{API}/users/me",
        json={"user_metadata": {"a": 2}},
        headers={**user_headers, "If-Match": version},
    )
    assert stale.status_code == 412
    assert stale.json()["code"] == "version_mismatch"
    stale_admin = await client.patch(
        url, json={"app_metadata": {"b": 1}}, headers={**admin_headers, "If-Match": version}
    )
    assert stale_admin.status_code == 412

    # PUT of the record as read: metadata sent back unchanged, or left out, keeps it.
    record = (await client.get(url, headers=admin_headers)).json()
    record["name"] = "Renamed"
    put = await client.put(url, json=record, headers=admin_headers)
    assert put.status_code == 200, put.text
    assert put.json()["user_metadata"] == {"a": 1}
    without = {k: v for k, v in put.json().items() if not k.endswith("_metadata")}
    put_again = await client.put(url, json=without, headers=admin_headers)
    assert put_again.status_code == 200, put_again.text
    assert put_again.json()["user_metadata"] == {"a": 1}
    changed = {**put_again.json(), "app_metadata": {"plan": "team"}}
    put_changed = await client.put(url, json=changed, headers=admin_headers)
    assert put_changed.json()["app_metadata"] == {"plan": "team"}
    bad = {**put_changed.json(), "app_metadata": [1]}
    assert "app_metadata" in _field_errors(await client.put(url, json=bad, headers=admin_headers))


async def test_list_filters_by_metadata_key(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    values: dict[str, dict[str, Any]] = {
        "blue@example.com": {"team": "blue", "level": 3, "beta": True},
        "blue2@example.com": {"team": "blue", "level": 3.0, "beta": False},
        "red@example.com": {"team": "red", "level": "3", "beta": 1},
        "list@example.com": {"team": ["blue"], "nested": {"team": "blue"}},
    }
    ids = {}
    for email, data in values.items():
        headers = bearer((await register(email=email))["access_token"])
        response = await client.patch(
            f"{API}/users/me", json={"user_metadata": data}, headers=headers
        )
        assert response.status_code == 200, response.text
        ids[email] = response.json()["id"]
    pro = await client.patch(
        f"{API}/users/{ids['red@example.com']}",
        json={"app_metadata": {"plan": "pro"}},
        headers=admin_headers,
    )
    assert pro.status_code == 200

    async def emails(params: dict[str, str]) -> set[str]:
        response = await client.get(f"{API}/users", params=params, headers=admin_headers)
        assert response.status_code == 200, response.text
        assert response.headers["x-total-count"] == str(len(response.json()))
        return {user["email"] for user in response.json()}

    assert await emails({"user_metadata.team": "blue"}) == {"blue@example.com", "blue2@example.com"}
    assert await emails({"user_metadata.level": "3"}) == {"blue@example.com", "blue2@example.com"}
    assert await emails({"user_metadata.level": '"3"'}) == {"red@example.com"}
    assert await emails({"user_metadata.beta": "true"}) == {"blue@example.com"}
    assert await emails({"user_metadata.beta": "1"}) == {"red@example.com"}
    assert await emails({"app_metadata.plan": "pro"}) == {"red@example.com"}
    assert await emails({"user_metadata.team": "blue", "app_metadata.plan": "pro"}) == set()
    assert await emails({"user_metadata.nope": "blue"}) == set()
    # The react-admin form, and json-server's.
    assert await emails({"filter": json.dumps({"user_metadata.level": 3})}) == {
        "blue@example.com",
        "blue2@example.com",
    }
    assert await emails({"filter": json.dumps({"user_metadata.beta": False})}) == {
        "blue2@example.com"
    }
    assert await emails({"_start": "0", "_end": "10", "app_metadata.plan": "pro"}) == {
        "red@example.com"
    }

    for params, field in (
        ({"user_metadata.a.b": "x"}, "user_metadata.a.b"),
        ({"user_metadata.": "x"}, "user_metadata."),
        ({"user_metadata.team": "null"}, "user_metadata.team"),
        ({"user_metadata.team": "[1]"}, "user_metadata.team"),
        ({"user_metadata.n": str(2**64)}, "user_metadata.n"),
        ({"filter": json.dumps({"user_metadata.team": ["a"]})}, "filter.user_metadata.team"),
        ({"filter": json.dumps({"user_metadata.team": None})}, "filter.user_metadata.team"),
        ({"other_metadata.team": "x"}, "other_metadata.team"),
    ):
        response = await client.get(f"{API}/users", params=params, headers=admin_headers)
        assert field in _field_errors(response), (params, response.text)
    repeated = await client.get(
        f"{API}/users?user_metadata.team=a&user_metadata.team=b", headers=admin_headers
    )
    assert "user_metadata.team" in _field_errors(repeated)
