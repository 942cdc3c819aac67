"""Personal API keys for scripts (issue 12, section 1): made with a login, shown once,
stored as a SHA-256, limited by scope and per key, and dead for good once expired,
revoked, or when the owner's role or password changes or the owner is deactivated or
deleted."""

import hashlib
import re
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import SQLModel, col, select

from backend.auth import api_keys
from backend.auth.models import ApiKey, ApiKeyCreate, ApiKeyScope
from backend.clock import Clock
from backend.config import Settings
from backend.errors import UnauthorizedError
from backend.main import create_app
from backend.models import User
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    USER_PASSWORD,
    RegisterUser,
    bearer,
    create_user,
    login,
    running,
)
from tests.test_access_order import counting_statements

KEY_SHAPE = re.compile(r"^uak_[A-Za-z0-9_-]{43}$")  # 32 random bytes in base64url
REFUSED = "The API key is invalid, expired or revoked."


async def make_key(
    client: httpx.AsyncClient, headers: dict[str, str], scope: str = "write", **fields: Any
) -> dict[str, Any]:
    body = {"name": f"{scope} script", "scope": scope, **fields}
    response = await client.post(f"{API}/users/me/tokens", json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def stored_keys(app: FastAPI) -> list[ApiKey]:
    async with app.state.runtime.sessionmaker() as db:
        return list((await db.exec(select(ApiKey).order_by(col(ApiKey.id)))).all())


async def test_a_key_is_shown_once_and_only_its_hash_is_stored(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    created = await make_key(client, user_headers, "read", expires_in_days=90)
    secret = created["secret"]
    assert KEY_SHAPE.match(secret)
    assert created["prefix"] == secret[:12]
    assert created["scope"] == "read"
    assert created["last_used_at"] is None
    lifetime = datetime.fromisoformat(created["expires_at"]) - datetime.fromisoformat(
        created["created_at"]
    )
    assert lifetime == timedelta(days=90)

    listed = await client.get(f"{API}/users/me/tokens", headers=user_headers)
    assert listed.status_code == 200
    assert listed.headers["x-total-count"] == "1"
    assert secret not in listed.text
    assert [key["id"] for key in listed.json()] == [created["id"]]
    assert "secret" not in listed.json()[0]

    (row,) = await stored_keys(app)
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in {str(value) for value in row.model_dump().values()}
    # The audit trail names the key, never its secret.
    assert secret not in (await client.get(f"{API}/audit", headers=user_headers)).text


async def test_two_keys_never_share_a_secret(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    secrets = {(await make_key(client, user_headers))["secret"] for _ in range(5)}
    assert len(secrets) == 5


async def test_a_key_acts_as_its_owner_with_the_owners_role(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_headers: dict[str, str]
) -> None:
    user_key = bearer((await make_key(client, user_headers))["secret"])
    me = await client.get(f"{API}/users/me", headers=user_key)
    assert me.status_code == 200
    assert me.json()["email"] == "user@example.com"
    assert (await client.get(f"{API}/users", headers=user_key)).status_code == 200
    # A plain user's write key is still a plain user's.
    forbidden = await client.get(f"{API}/audit", headers=user_key)
    assert forbidden.status_code == 403
    assert "admin role" in forbidden.json()["detail"]

    admin_key = bearer((await make_key(client, admin_headers))["secret"])
    created = await client.post(
        f"{API}/users",
        json={"email": "made@example.com", "name": "Made", "password": USER_PASSWORD},
        headers=admin_key,
    )
    assert created.status_code == 201
    renamed = await client.patch(f"{API}/users/me", json={"name": "Renamed"}, headers=admin_key)
    assert renamed.status_code == 200
    assert (await client.get(f"{API}/audit", headers=admin_key)).status_code == 200


async def test_a_read_key_may_only_read(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    read_key = bearer((await make_key(client, admin_headers, "read"))["secret"])
    assert (await client.get(f"{API}/users", headers=read_key)).status_code == 200
    me = (await client.get(f"{API}/users/me", headers=read_key)).json()
    writes = [
        (
            "POST",
            f"{API}/users",
            {"email": "x@example.com", "name": "X", "password": USER_PASSWORD},
        ),
        ("PATCH", f"{API}/users/me", {"name": "Changed"}),
        ("PUT", f"{API}/users/{me['id']}", {**me, "name": "Changed"}),
        ("DELETE", f"{API}/users/{me['id']}", None),
    ]
    for method, url, body in writes:
        response = await client.request(method, url, json=body, headers=read_key)
        assert response.status_code == 403, method
        assert response.headers["content-type"] == "application/problem+json"
        assert (
            f"read scope: it may only send GET and HEAD, not {method}"
            in (response.json()["detail"])
        )
    assert (await client.get(f"{API}/users/me", headers=read_key)).json()["name"] == me["name"]


async def test_the_request_is_validated_with_the_field_named(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    cases = [
        ({"name": "n", "scope": "read", "expires_in_days": 0}, "expires_in_days"),
        ({"name": "n", "scope": "read", "expires_in_days": 367}, "expires_in_days"),
        ({"name": "n", "scope": "read", "expires_in_days": 7.5}, "expires_in_days"),
        ({"name": "n", "scope": "read", "expires_in_days": "30"}, "expires_in_days"),
        ({"name": "n", "scope": "read", "expires_in_days": True}, "expires_in_days"),
        ({"name": "n", "scope": "admin"}, "scope"),
        ({"name": "n"}, "scope"),
        ({"name": " ", "scope": "read"}, "name"),
        ({"name": "x" * 101, "scope": "read"}, "name"),
        ({"scope": "read"}, "name"),
    ]
    for body, field in cases:
        response = await client.post(f"{API}/users/me/tokens", json=body, headers=user_headers)
        assert response.status_code == 422, body
        assert [error["field"] for error in response.json()["errors"]] == [field], body
    # The bounds themselves are accepted; 30 days when none is said.
    for days in (1, 366, 7.0):  # 7.0 is an integer to JSON Schema, and so here
        await make_key(client, user_headers, expires_in_days=days)
    default = await make_key(client, user_headers)
    lifetime = datetime.fromisoformat(default["expires_at"]) - datetime.fromisoformat(
        default["created_at"]
    )
    assert lifetime == timedelta(days=30)


async def test_an_expired_key_is_refused(
    client: httpx.AsyncClient, user_headers: dict[str, str], clock: Clock
) -> None:
    key = bearer((await make_key(client, user_headers, expires_in_days=1))["secret"])
    clock.offset += timedelta(hours=23, minutes=59)
    assert (await client.get(f"{API}/users/me", headers=key)).status_code == 200
    clock.offset += timedelta(minutes=1)
    expired = await client.get(f"{API}/users/me", headers=key)
    assert expired.status_code == 401
    assert expired.json()["detail"] == REFUSED
    assert expired.headers["www-authenticate"] == "Bearer"


async def test_a_revoked_key_is_refused_and_leaves_the_list(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    kept = await make_key(client, user_headers)
    revoked = await make_key(client, user_headers)
    response = await client.delete(f"{API}/users/me/tokens/{revoked['id']}", headers=user_headers)
    assert response.status_code == 204
    refused = await client.get(f"{API}/users/me", headers=bearer(revoked["secret"]))
    assert refused.status_code == 401
    assert (await client.get(f"{API}/users/me", headers=bearer(kept["secret"]))).status_code == 200
    listed = (await client.get(f"{API}/users/me/tokens", headers=user_headers)).json()
    assert [key["id"] for key in listed] == [kept["id"]]
    again = await client.delete(f"{API}/users/me/tokens/{revoked['id']}", headers=user_headers)
    assert again.status_code == 404


async def test_a_role_change_ends_the_owners_keys(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    user_headers: dict[str, str],
) -> None:
    key = bearer((await make_key(client, user_headers))["secret"])
    user_id = (await client.get(f"{API}/users/me", headers=key)).json()["id"]
    promoted = await client.patch(
        f"{API}/users/{user_id}", json={"role": "admin"}, headers=admin_headers
    )
    assert promoted.status_code == 200
    # The key does not come back with the new role: it is gone for good.
    assert (await client.get(f"{API}/users/me", headers=key)).status_code == 401
    assert [row.revoked_reason for row in await stored_keys(app)] == ["role_change"]


async def test_a_password_change_ends_the_owners_keys(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    key = bearer((await make_key(client, user_headers))["secret"])
    changed = await client.post(
        f"{API}/users/me/password",
        json={"current_password": USER_PASSWORD, "new_password": "Another-Password-2"},
        headers=user_headers,
    )
    assert changed.status_code == 200
    assert (await client.get(f"{API}/users/me", headers=key)).status_code == 401
    assert [row.revoked_reason for row in await stored_keys(app)] == ["password_change"]


async def test_a_password_set_by_an_admin_ends_the_owners_keys(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_headers: dict[str, str]
) -> None:
    key = bearer((await make_key(client, user_headers))["secret"])
    user_id = (await client.get(f"{API}/users/me", headers=key)).json()["id"]
    reset = await client.patch(
        f"{API}/users/{user_id}", json={"password": "Another-Password-2"}, headers=admin_headers
    )
    assert reset.status_code == 200
    assert (await client.get(f"{API}/users/me", headers=key)).status_code == 401


async def test_deactivation_ends_the_owners_keys_for_good(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_headers: dict[str, str]
) -> None:
    key = bearer((await make_key(client, user_headers))["secret"])
    user_id = (await client.get(f"{API}/users/me", headers=key)).json()["id"]
    url = f"{API}/users/{user_id}"
    assert (await client.patch(url, json={"is_active": False}, headers=admin_headers)).is_success
    refused = await client.get(f"{API}/users/me", headers=key)
    assert refused.status_code == 401
    assert refused.json()["detail"] == REFUSED
    # Reactivated, the account logs in again; its old keys stay dead.
    assert (await client.patch(url, json={"is_active": True}, headers=admin_headers)).is_success
    assert (await client.get(f"{API}/users/me", headers=key)).status_code == 401


async def test_deleting_the_owner_deletes_the_keys(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    user_headers: dict[str, str],
) -> None:
    key = bearer((await make_key(client, user_headers))["secret"])
    user_id = (await client.get(f"{API}/users/me", headers=key)).json()["id"]
    assert (await client.delete(f"{API}/users/{user_id}", headers=admin_headers)).is_success
    assert (await client.get(f"{API}/users/me", headers=key)).status_code == 401
    assert await stored_keys(app) == []


async def test_logout_everywhere_leaves_the_keys_alone(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    key = bearer((await make_key(client, user_headers))["secret"])
    assert (await client.post(f"{API}/auth/logout-all", headers=user_headers)).status_code == 204
    assert (await client.get(f"{API}/users/me", headers=user_headers)).status_code == 401
    assert (await client.get(f"{API}/users/me", headers=key)).status_code == 200


async def test_a_key_reaches_no_session_or_key_route(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    user = await register()
    user_id = user["user"]["id"]
    own = await make_key(client, admin_headers)
    key = bearer(own["secret"])
    session_id = "0" * 32
    refused = [
        ("POST", f"{API}/auth/logout-all", None),
        ("POST", f"{API}/users/me/password", {"current_password": "x", "new_password": "y"}),
        ("GET", f"{API}/users/me/sessions", None),
        ("DELETE", f"{API}/users/me/sessions/{session_id}", None),
        ("GET", f"{API}/users/{user_id}/sessions", None),
        ("DELETE", f"{API}/users/{user_id}/sessions/{session_id}", None),
        ("DELETE", f"{API}/users/{user_id}/sessions", None),
        ("POST", f"{API}/users/me/tokens", {"name": "minted", "scope": "write"}),
        ("GET", f"{API}/users/me/tokens", None),
        ("DELETE", f"{API}/users/me/tokens/{own['id']}", None),
        ("GET", f"{API}/users/{user_id}/tokens", None),
        ("DELETE", f"{API}/users/{user_id}/tokens/{own['id']}", None),
        # Refresh and logout take a refresh token: a key in the header or the body is
        # refused all the same.
        ("POST", f"{API}/auth/refresh", {"refresh_token": user["refresh_token"]}),
        ("POST", f"{API}/auth/logout", {"refresh_token": user["refresh_token"]}),
    ]
    for method, url, body in refused:
        response = await client.request(method, url, json=body, headers=key)
        assert response.status_code == 403, f"{method} {url}: {response.text}"
        assert "API keys cannot be used here" in response.json()["detail"]
    for path in ("refresh", "logout"):
        response = await client.post(f"{API}/auth/{path}", json={"refresh_token": own["secret"]})
        assert response.status_code == 403, path
    # Nothing was minted, revoked or ended meanwhile.
    listed = (await client.get(f"{API}/users/me/tokens", headers=admin_headers)).json()
    assert [item["id"] for item in listed] == [own["id"]]
    refreshed = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": user["refresh_token"]}
    )
    assert refreshed.status_code == 200


async def test_a_plain_user_cannot_see_or_revoke_anothers_keys(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    owner = bearer((await register("owner@example.com"))["access_token"])
    other = bearer((await register("other@example.com"))["access_token"])
    key = await make_key(client, owner)
    owner_id = (await client.get(f"{API}/users/me", headers=owner)).json()["id"]
    listed = await client.get(f"{API}/users/{owner_id}/tokens", headers=other)
    assert listed.status_code == 403
    revoked = await client.delete(f"{API}/users/{owner_id}/tokens/{key['id']}", headers=other)
    assert revoked.status_code == 403
    # Through their own route, another's key id is simply not theirs.
    mine = await client.delete(f"{API}/users/me/tokens/{key['id']}", headers=other)
    assert mine.status_code == 404
    assert (await client.get(f"{API}/users/me/tokens", headers=other)).json() == []
    assert (await client.get(f"{API}/users/me", headers=bearer(key["secret"]))).is_success


async def test_an_admin_lists_and_revokes_anyones_keys_with_audit(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_headers: dict[str, str]
) -> None:
    key = await make_key(client, user_headers, "read")
    user_id = (await client.get(f"{API}/users/me", headers=user_headers)).json()["id"]
    admin_id = (await client.get(f"{API}/users/me", headers=admin_headers)).json()["id"]
    listed = await client.get(f"{API}/users/{user_id}/tokens", headers=admin_headers)
    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()] == [key["id"]]
    assert key["secret"] not in listed.text

    # The key's id under another user is no key of that user's.
    wrong_owner = await client.delete(
        f"{API}/users/{admin_id}/tokens/{key['id']}", headers=admin_headers
    )
    assert wrong_owner.status_code == 404
    revoked = await client.delete(
        f"{API}/users/{user_id}/tokens/{key['id']}", headers=admin_headers
    )
    assert revoked.status_code == 204
    assert (await client.get(f"{API}/users/me", headers=bearer(key["secret"]))).status_code == 401
    missing = await client.get(f"{API}/users/2147483647/tokens", headers=admin_headers)
    assert missing.status_code == 404

    events = (
        await client.get(
            f"{API}/audit",
            params={"target_id": user_id, "sort": "id"},
            headers=admin_headers,
        )
    ).json()
    key_events = [event for event in events if event["action"].startswith("user.api_key")]
    expected_details = {"key_id": key["id"], "name": "read script", "prefix": key["prefix"]}
    assert [(e["action"], e["actor_id"]) for e in key_events] == [
        ("user.api_key_create", user_id),
        ("user.api_key_revoke", admin_id),
    ]
    for event in key_events:
        assert expected_details.items() <= event["details"].items()
    assert key_events[1]["details"]["reason"] == "admin"


async def test_revoking_ones_own_key_is_audited(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_headers: dict[str, str]
) -> None:
    key = await make_key(client, user_headers)
    await client.delete(f"{API}/users/me/tokens/{key['id']}", headers=user_headers)
    events = (
        await client.get(
            f"{API}/audit", params={"action": "user.api_key_revoke"}, headers=admin_headers
        )
    ).json()
    assert [(event["details"]["key_id"], event["details"]["reason"]) for event in events] == [
        (key["id"], "revoked")
    ]


async def test_path_ids_are_bounded(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    for url in (f"{API}/users/me/tokens/0", f"{API}/users/me/tokens/2147483648"):
        response = await client.delete(url, headers=admin_headers)
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "token_id"


async def test_last_used_is_written_at_most_once_a_minute(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str], clock: Clock
) -> None:
    created = await make_key(client, user_headers, "read")
    key = bearer(created["secret"])

    async def last_used() -> datetime | None:
        (row,) = await stored_keys(app)
        return row.last_used_at

    assert await last_used() is None
    await client.get(f"{API}/users/me", headers=key)
    first = await last_used()
    assert first is not None
    clock.offset += timedelta(seconds=59)
    await client.get(f"{API}/users/me", headers=key)
    assert await last_used() == first
    clock.offset += timedelta(seconds=1)
    await client.get(f"{API}/users/me", headers=key)
    second = await last_used()
    assert second is not None
    assert second - first >= timedelta(minutes=1)
    listed = (await client.get(f"{API}/users/me/tokens", headers=user_headers)).json()
    assert datetime.fromisoformat(listed[0]["last_used_at"]) == second


async def test_requests_within_the_minute_write_nothing(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    key = bearer((await make_key(client, user_headers, "read"))["secret"])
    await client.get(f"{API}/users/me", headers=key)  # the first use is written
    with counting_statements(app.state.runtime.engine) as statements:
        for _ in range(3):
            assert (await client.get(f"{API}/users/me", headers=key)).status_code == 200
    assert not [sql for sql in statements if sql.lstrip().upper().startswith("UPDATE")]


async def test_each_key_has_its_own_rate_limit(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"RATE_LIMIT_API_KEY": "3/minute"}))
    async with running(app) as client:
        headers = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
        first = bearer((await make_key(client, headers, "read"))["secret"])
        second = bearer((await make_key(client, headers, "read"))["secret"])
        statuses = [
            (await client.get(f"{API}/users/me", headers=first)).status_code for _ in range(4)
        ]
        assert statuses == [200, 200, 200, 429]
        limited = await client.get(f"{API}/users/me", headers=first)
        assert limited.headers["content-type"] == "application/problem+json"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert "at most 3 per 1 minute" in limited.json()["detail"]
        # Another key of the same owner, and the owner's login, are not held back.
        assert (await client.get(f"{API}/users/me", headers=second)).status_code == 200
        assert (await client.get(f"{API}/users/me", headers=headers)).status_code == 200
        # Emptied as the app fixture leaves the database, for the tests after this one.
        async with app.state.runtime.engine.begin() as connection:
            for table in reversed(SQLModel.metadata.sorted_tables):
                await connection.execute(table.delete())


async def test_malformed_keys_are_401_never_500(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    real = (await make_key(client, user_headers))["secret"]
    malformed = [
        "uak_",
        "uak_short",
        real + "x",  # one character too long
        real[:-1],  # one too short
        "uak_" + "A" * 5000,
        real[:-1] + "!",
        real[:-1] + "é",
        real[:-1] + "\x7f",
        "uak_" + "/" * 43,
        real[:-1] + ("B" if real.endswith("A") else "A"),  # a near miss of a real key
    ]
    for value in malformed:
        headers = {"Authorization": f"Bearer {value}".encode("latin-1")}
        with counting_statements(app.state.runtime.engine) as statements:
            response = await client.get(f"{API}/users/me", headers=headers)  # type: ignore[arg-type]
        # What cannot be a key is refused before any table is read; a near miss is looked up.
        assert len(statements) == (1 if KEY_SHAPE.match(value) else 0), value
        assert response.status_code == 401, value
        assert response.json()["detail"] == REFUSED
        assert response.headers["www-authenticate"] == "Bearer"
    unknown = "uak_" + "A" * 43
    assert (await client.get(f"{API}/users/me", headers=bearer(unknown))).status_code == 401


async def test_keys_are_listed_newest_first_with_paging(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    ids = [(await make_key(client, user_headers))["id"] for _ in range(3)]
    page = await client.get(f"{API}/users/me/tokens", params={"per_page": 2}, headers=user_headers)
    assert [key["id"] for key in page.json()] == ids[::-1][:2]
    assert page.headers["x-total-count"] == "3"
    assert page.headers["content-range"] == "tokens 0-1/3"


async def test_an_admin_can_create_a_key_for_themselves_and_use_it_on_others(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    made = await create_user(
        client, admin_headers, email="target@example.com", name="Target", password=USER_PASSWORD
    )
    key = bearer((await make_key(client, admin_headers))["secret"])
    deactivated = await client.patch(
        made.headers["location"], json={"is_active": False}, headers=key
    )
    assert deactivated.status_code == 200
    assert deactivated.json()["is_active"] is False


async def test_no_key_is_minted_for_an_owner_changed_since_the_caller_was_checked(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    """The race a request loses when the owner's password changes between its token
    check and the key's creation: the stale view of the owner mints nothing."""
    async with app.state.runtime.sessionmaker() as db:
        user = (await db.exec(select(User).where(User.email == "user@example.com"))).one()
    stale = user.model_copy()
    changed = await client.post(
        f"{API}/users/me/password",
        json={"current_password": USER_PASSWORD, "new_password": "Another-Password-2"},
        headers=user_headers,
    )
    assert changed.status_code == 200
    data = ApiKeyCreate(name="late", scope=ApiKeyScope.WRITE)
    async with app.state.runtime.sessionmaker() as db:
        with pytest.raises(UnauthorizedError, match="changed meanwhile"):
            await api_keys.create(db, user=stale, data=data, actor_id=stale.id)
    assert await stored_keys(app) == []
