"""GET /users list queries in our dialect and the dashboards' ones; PUT /users/{id}."""

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from sqlmodel import SQLModel

from backend.auth.models import SessionPublic, UserSession
from backend.http.listing import Resource
from backend.models import AuditEvent, AuditEventPublic, User, UserPublic
from backend.routers.audit import AUDIT_EVENTS
from backend.routers.sessions import SESSIONS
from backend.routers.users import USERS
from backend.routers.webhooks import DELIVERIES, WEBHOOKS
from backend.webhooks.models import (
    WebhookDelivery,
    WebhookDeliveryPublic,
    WebhookEndpoint,
    WebhookEndpointPublic,
)
from tests.helpers import API, create_user

PEOPLE = [
    ("carol@example.com", "Carol 100%", "user"),
    ("alice@example.com", "alice_smith", "admin"),
    ("bob@example.com", "Bob", "user"),
    ("dave@example.com", "Dave", "user"),
]


@pytest.fixture
async def people(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> list[dict[str, Any]]:
    created = []
    for email, name, role in PEOPLE:
        fields = {"email": email, "name": name, "role": role, "password": "Sturdy-Kettle-123"}
        created.append((await create_user(client, admin_headers, **fields)).json())
    return created


async def get(client: httpx.AsyncClient, headers: dict[str, str], query: str) -> httpx.Response:
    return await client.get(f"{API}/users?{query}", headers=headers)


def names(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [user["name"] for user in response.json()]


# Sorting by name depends on the database's collation (is "alice" before "Bob"?), so
# the tests sort by email, which is stored lower-case.
async def test_sorting(
    client: httpx.AsyncClient, admin_headers: dict[str, str], people: list[dict[str, Any]]
) -> None:
    everyone = ["Admin", "alice_smith", "Bob", "Carol 100%", "Dave"]
    assert names(await get(client, admin_headers, "sort=email")) == everyone
    assert names(await get(client, admin_headers, "sort=-email")) == everyone[::-1]
    by_role = names(await get(client, admin_headers, "sort=role,-email"))
    assert by_role == ["alice_smith", "Admin", "Dave", "Carol 100%", "Bob"]
    newest_first = names(await get(client, admin_headers, "sort=-created_at"))
    assert newest_first == ["Dave", "Bob", "alice_smith", "Carol 100%", "Admin"]


async def test_sorting_on_equal_values_is_stable_by_id(
    client: httpx.AsyncClient, admin_headers: dict[str, str], people: list[dict[str, Any]]
) -> None:
    response = await get(client, admin_headers, "sort=is_active&per_page=100")
    ids = [user["id"] for user in response.json()]
    assert ids == sorted(ids)


async def test_unknown_sort_field_names_the_allowed_ones(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    for query, field in [("sort=password", "sort"), ("_sort=hashed_password", "_sort")]:
        response = await get(client, admin_headers, query)
        assert response.status_code == 422
        error = response.json()["errors"][0]
        assert error["field"] == field
        assert (
            "sortable: id, email, name, role, is_active, is_verified, created_at, updated_at"
            in (error["message"])
        )


async def test_filters(
    client: httpx.AsyncClient, admin_headers: dict[str, str], people: list[dict[str, Any]]
) -> None:
    bob, dave = people[2], people[3]
    assert names(await get(client, admin_headers, "role=admin&sort=email")) == [
        "Admin",
        "alice_smith",
    ]
    query = f"id={bob['id']}&id={dave['id']}"
    assert names(await get(client, admin_headers, query)) == ["Bob", "Dave"]
    await client.patch(
        f"{API}/users/{dave['id']}", json={"is_active": False}, headers=admin_headers
    )
    assert names(await get(client, admin_headers, "is_active=false")) == ["Dave"]
    after = bob["created_at"]
    later = await get(client, admin_headers, f"created_after={after.replace('+00:00', 'Z')}")
    assert names(later) == ["Dave"]
    earlier = await get(client, admin_headers, "created_before=" + people[0]["created_at"])
    assert names(earlier) == ["Admin"]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert (
        names(
            await client.get(
                f"{API}/users", params={"created_after": future}, headers=admin_headers
            )
        )
        == []
    )


async def test_search_is_case_insensitive_and_literal(
    client: httpx.AsyncClient, admin_headers: dict[str, str], people: list[dict[str, Any]]
) -> None:
    def search(term: str) -> Any:
        return client.get(f"{API}/users", params={"q": term}, headers=admin_headers)

    assert names(await search("ALICE")) == ["alice_smith"]
    assert names(await search("bob@EXAMPLE")) == ["Bob"]
    assert names(await search("100%")) == ["Carol 100%"]
    assert names(await search("%")) == ["Carol 100%"]  # not a wildcard
    assert names(await search("e_s")) == ["alice_smith"]  # not a wildcard either
    assert names(await search("_")) == ["alice_smith"]
    assert names(await search("nobody")) == []


async def test_paging_headers(
    client: httpx.AsyncClient, admin_headers: dict[str, str], people: list[dict[str, Any]]
) -> None:
    response = await get(client, admin_headers, "page=2&per_page=2&role=user")
    assert names(response) == ["Dave"]
    assert response.headers["x-total-count"] == "3"
    assert response.headers["content-range"] == "users 2-2/3"
    links = {
        rel: url for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', response.headers["link"])
    }
    assert set(links) == {"first", "prev", "last"}
    first = await client.get(links["first"], headers=admin_headers)
    assert names(first) == ["Carol 100%", "Bob"]
    assert "role=user" in links["first"]
    assert "page=2" in links["last"]
    empty = await get(client, admin_headers, "page=9&per_page=2")
    assert empty.json() == []
    assert empty.headers["content-range"] == "users */5"


async def test_cors_exposes_the_paging_headers(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get(
        f"{API}/users", headers={**admin_headers, "Origin": "https://dashboard.example.com"}
    )
    exposed = response.headers["access-control-expose-headers"]
    for header in ("X-Total-Count", "Content-Range", "Link"):
        assert header in exposed


async def test_json_server_and_refine_conventions(
    client: httpx.AsyncClient, admin_headers: dict[str, str], people: list[dict[str, Any]]
) -> None:
    page = await get(client, admin_headers, "_start=1&_end=3&_sort=email&_order=desc")
    assert names(page) == ["Carol 100%", "Bob"]
    assert page.headers["x-total-count"] == "5"
    assert page.headers["content-range"] == "users 1-2/5"
    assert "_start=3" in page.headers["link"]
    multi = await get(client, admin_headers, "_sort=role,email&_order=asc,desc&_end=2")
    assert names(multi) == ["alice_smith", "Admin"]
    assert names(await get(client, admin_headers, "name_like=AL&_sort=id")) == ["alice_smith"]
    assert names(await get(client, admin_headers, "role_ne=user&_sort=id")) == [
        "Admin",
        "alice_smith",
    ]
    bob = people[2]
    query = f"id_gte={bob['id']}&id_lte={bob['id']}"
    assert names(await get(client, admin_headers, query)) == ["Bob"]
    ids = f"id={people[0]['id']}&id={bob['id']}"
    assert names(await get(client, admin_headers, ids + "&_sort=id")) == ["Carol 100%", "Bob"]
    assert names(await get(client, admin_headers, "q=dave&_start=0&_end=10")) == ["Dave"]


async def test_get_many_by_ids_returns_every_id_asked_for(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    ids = []
    for number in range(13):
        response = await client.post(
            f"{API}/users",
            json={"email": f"m{number}@example.com", "name": "M", "password": "Sturdy-Kettle-123"},
            headers=admin_headers,
        )
        ids.append(response.json()["id"])
    response = await get(client, admin_headers, "&".join(f"id={user_id}" for user_id in ids))
    assert sorted(user["id"] for user in response.json()) == ids
    assert response.headers["x-total-count"] == "13"
    paged = await get(client, admin_headers, "per_page=5&" + "&".join(f"id={i}" for i in ids))
    assert len(paged.json()) == 5


async def test_react_admin_simple_rest_conventions(
    client: httpx.AsyncClient, admin_headers: dict[str, str], people: list[dict[str, Any]]
) -> None:
    params = {"range": "[0,1]", "sort": '["name","DESC"]', "filter": '{"role":"user"}'}
    page = await client.get(f"{API}/users", params=params, headers=admin_headers)
    assert names(page) == ["Dave", "Carol 100%"]
    assert page.headers["content-range"] == "users 0-1/3"
    assert "range=%5B2%2C+3%5D" in page.headers["link"]
    ids = [people[1]["id"], people[3]["id"]]
    many = await client.get(
        f"{API}/users", params={"filter": json.dumps({"id": ids})}, headers=admin_headers
    )
    assert sorted(user["id"] for user in many.json()) == sorted(ids)
    search = await client.get(
        f"{API}/users",
        params={"filter": json.dumps({"q": "BOB", "is_active": True})},
        headers=admin_headers,
    )
    assert names(search) == ["Bob"]


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"page": "1", "_start": "0"}, "query", "mixes"),
        ({"range": "[0,9]", "role": "user"}, "role", "inside filter"),
        ({"sort": '["name","ASC"]', "per_page": "5"}, "per_page", "inside filter"),
        ({"password": "x"}, "password", "unknown filter field"),
        ({"filter": '{"hashed_password": "x"}'}, "filter.hashed_password", "unknown filter"),
        ({"role_like": "adm"}, "role_like", "_like works on email and name only"),
        ({"filter": "{not json"}, "filter", "valid JSON"),
        ({"filter": "[1]"}, "filter", "JSON object"),
        ({"range": "[5,1]"}, "range", "start <= end"),
        ({"range": "[0,1000]"}, "range", "at most 1000"),
        ({"sort": '["name","UP"]'}, "sort", "ASC"),
        ({"_start": "0", "_end": "1001"}, "_end", "at most 1000"),
        ({"_sort": "name", "_order": "sideways"}, "_order", "asc or desc"),
        ({"role": "owner"}, "role", "admin"),
        ({"is_active": "maybe"}, "is_active", "boolean"),
        ({"id": "abc"}, "id", "integer"),
        ({"id": str(2**40)}, "id", "out of range"),
        ({"created_after": "yesterday"}, "created_after", "ISO 8601"),
        ({"created_before": "0.5"}, "created_before", "ISO 8601"),
        ({"q": "a\x00b"}, "q", "NUL"),
        ({"q": "x" * 201}, "q", "at most 200"),
        ({"page": "0"}, "page", "integer from 1"),
        ({"sort": ""}, "sort", "at least one field"),
        ({"per_page": "1001"}, "per_page", "integer from 1 to 1000"),
    ],
)
async def test_bad_list_queries_are_422_naming_the_parameter(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    params: dict[str, str],
    field: str,
    message: str,
) -> None:
    response = await client.get(f"{API}/users", params=params, headers=admin_headers)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    matching = [error for error in errors if error["field"] == field]
    assert matching, errors
    assert message in matching[0]["message"], errors


async def test_put_saves_the_record_a_dashboard_sends_back(
    client: httpx.AsyncClient, admin_headers: dict[str, str], people: list[dict[str, Any]]
) -> None:
    bob = people[2]
    edited = {**bob, "name": "Robert", "role": "admin", "extra": "ignored"}
    response = await client.put(f"{API}/users/{bob['id']}", json=edited, headers=admin_headers)
    assert response.status_code == 200, response.text
    saved = response.json()
    assert (saved["name"], saved["role"]) == ("Robert", "admin")
    assert saved["created_at"] == bob["created_at"]

    stale = await client.put(f"{API}/users/{bob['id']}", json=edited, headers=admin_headers)
    assert stale.status_code == 409
    assert "updated_at differs" in stale.json()["detail"]

    moved = await client.put(
        f"{API}/users/{bob['id']}", json={**saved, "id": bob["id"] + 1}, headers=admin_headers
    )
    assert moved.status_code == 422
    assert moved.json()["errors"] == [
        {"field": "id", "message": "is read-only", "code": "value_error"}
    ]

    partial = {key: saved[key] for key in ("email", "name")}
    missing = await client.put(f"{API}/users/{bob['id']}", json=partial, headers=admin_headers)
    assert missing.status_code == 422
    assert {error["field"] for error in missing.json()["errors"]} == {"role", "is_active"}

    with_password = {**saved, "password": "Another-Pass-9"}
    changed = await client.put(
        f"{API}/users/{bob['id']}", json=with_password, headers=admin_headers
    )
    assert changed.status_code == 200
    login = await client.post(
        f"{API}/auth/login", data={"username": bob["email"], "password": "Another-Pass-9"}
    )
    assert login.status_code == 200


async def test_put_is_admin_only_and_404s(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_headers: dict[str, str]
) -> None:
    me = (await client.get(f"{API}/users/me", headers=user_headers)).json()
    forbidden = await client.put(f"{API}/users/{me['id']}", json=me, headers=user_headers)
    assert forbidden.status_code == 403
    missing = await client.put(f"{API}/users/99999", json=me, headers=admin_headers)
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("resource", "table", "public"),
    [
        (USERS, User, UserPublic),
        (AUDIT_EVENTS, AuditEvent, AuditEventPublic),
        (SESSIONS, UserSession, SessionPublic),
        (WEBHOOKS, WebhookEndpoint, WebhookEndpointPublic),
        (DELIVERIES, WebhookDelivery, WebhookDeliveryPublic),
    ],
)
def test_list_fields_are_public_columns_of_their_model(
    resource: Resource, table: type[SQLModel], public: type[BaseModel]
) -> None:
    columns = set(table.__table__.columns.keys())  # type: ignore[attr-defined]
    # Every field a list filters or sorts on is a column that the API also shows.
    assert set(resource.fields) <= columns & set(public.model_fields)
    assert set(resource.text_fields) <= set(resource.fields)
    assert set(resource.repeatable) <= set(resource.fields)


async def test_a_query_too_long_to_repeat_in_link_leaves_it_out(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """Up to MAX_PER_PAGE ids may be asked for; the Link header would repeat them four
    times (a 100 KB header line from 1,000 session ids, which clients refuse)."""
    admin_id = (await client.get(f"{API}/users/me", headers=admin_headers)).json()["id"]
    ids = "&".join(f"id={number}" for number in range(admin_id, admin_id + 1000))
    response = await client.get(f"{API}/users?per_page=1&{ids}", headers=admin_headers)
    assert response.status_code == 200
    assert "link" not in response.headers
    assert response.headers["x-total-count"] == "1"  # the admin alone exists
    assert response.headers["content-range"] == "users 0-0/1"
    short = await client.get(f"{API}/users?per_page=1&id={admin_id}", headers=admin_headers)
    assert 'rel="first"' in short.headers["link"]
