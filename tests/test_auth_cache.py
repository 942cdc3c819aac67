"""The auth cache in one worker: a cached check makes no query (PostgreSQL; SQLite has
the cache off), every write path refuses a revoked token at its very next request, a
write of any shape through the app's sessions is noticed, and a lost listener stops
the cache until it is back.

Here the worker ignores the notifications it receives: they would arrive while an HTTP
write is still answering and hide a write path the worker failed to notice itself.
Notifications are tested with two workers in tests/test_auth_cache_workers.py."""

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Executable, event, text, update
from sqlmodel import col, select

from backend.auth.authcache import LISTENER_NAME, AuthCache
from backend.clock import Clock
from backend.models import User
from backend.runtime import Runtime
from tests.helpers import API, USER_PASSWORD, RegisterUser, bearer, create_user, login
from tests.test_access_order import SIGN_IN_BATCH

pytestmark = pytest.mark.anyio

WARM_SECONDS = 5.0  # the listener connects in the background at start-up


@pytest.fixture(autouse=True)
def deaf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set up before the app (autouse), so its listener registers this instead."""
    monkeypatch.setattr(AuthCache, "_notified", lambda *_args: None)


@contextmanager
def counting_queries(app: FastAPI) -> Iterator[list[str]]:
    """The statements the app sends to its database meanwhile, the sign-in writer's
    batches aside (they are no token check's)."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        if not args[2].startswith(SIGN_IN_BATCH):
            statements.append(args[2])

    engine = app.state.runtime.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def caches(app: FastAPI) -> bool:
    runtime: Runtime = app.state.runtime
    return not runtime.settings.is_sqlite


async def me_from_cache(client: httpx.AsyncClient, app: FastAPI, headers: dict[str, str]) -> None:
    """GET /users/me until it is answered without a query (PostgreSQL), or check that
    every one queries (SQLite: the cache is off)."""
    deadline = time.monotonic() + WARM_SECONDS
    while True:
        with counting_queries(app) as statements:
            response = await client.get(f"{API}/users/me", headers=headers)
        assert response.status_code == 200, response.text
        if not caches(app):
            assert statements, "SQLite has no cache: each check reads the database"
            return
        if not statements:
            return
        assert time.monotonic() < deadline, f"still querying: {statements}"
        await asyncio.sleep(0.02)


async def test_a_cached_check_sends_no_query(
    client: httpx.AsyncClient, app: FastAPI, user_headers: dict[str, str]
) -> None:
    await me_from_cache(client, app, user_headers)
    if caches(app):
        runtime: Runtime = app.state.runtime
        hits = runtime.metrics.registry.get_sample_value("auth_checks_total", {"source": "cache"})
        assert hits is not None
        assert hits >= 1


# --- every write path: the next request in the same worker is refused -----------------

Victim = dict[str, Any]  # the victim's LoginResponse
Write = Callable[[httpx.AsyncClient, dict[str, str], Victim], Awaitable[httpx.Response]]


async def _deactivate(client: httpx.AsyncClient, admin: dict[str, str], victim: Victim) -> Any:
    return await client.patch(
        f"{API}/users/{victim['user']['id']}", json={"is_active": False}, headers=admin
    )


async def _role(client: httpx.AsyncClient, admin: dict[str, str], victim: Victim) -> Any:
    return await client.patch(
        f"{API}/users/{victim['user']['id']}", json={"role": "admin"}, headers=admin
    )


async def _admin_password(client: httpx.AsyncClient, admin: dict[str, str], victim: Victim) -> Any:
    return await client.patch(
        f"{API}/users/{victim['user']['id']}", json={"password": "Another-Pass-99"}, headers=admin
    )


async def _own_password(client: httpx.AsyncClient, _admin: dict[str, str], victim: Victim) -> Any:
    other = await login(client, victim["user"]["email"], USER_PASSWORD)
    body = {"current_password": USER_PASSWORD, "new_password": "Another-Pass-99"}
    return await client.post(
        f"{API}/users/me/password", json=body, headers=bearer(other["access_token"])
    )


async def _logout(client: httpx.AsyncClient, _admin: dict[str, str], victim: Victim) -> Any:
    return await client.post(f"{API}/auth/logout", json={"refresh_token": victim["refresh_token"]})


async def _logout_all(client: httpx.AsyncClient, _admin: dict[str, str], victim: Victim) -> Any:
    other = await login(client, victim["user"]["email"], USER_PASSWORD)
    return await client.post(f"{API}/auth/logout-all", headers=bearer(other["access_token"]))


async def _victim_session(client: httpx.AsyncClient, victim: Victim) -> str:
    response = await client.get(f"{API}/users/me/sessions", headers=bearer(victim["access_token"]))
    sessions = [found for found in response.json() if found["current"]]
    assert len(sessions) == 1, response.text
    session_id: str = sessions[0]["id"]
    return session_id


async def _end_session(client: httpx.AsyncClient, _admin: dict[str, str], victim: Victim) -> Any:
    session_id = await _victim_session(client, victim)
    other = await login(client, victim["user"]["email"], USER_PASSWORD)
    return await client.delete(
        f"{API}/users/me/sessions/{session_id}", headers=bearer(other["access_token"])
    )


async def _admin_ends_session(
    client: httpx.AsyncClient, admin: dict[str, str], victim: Victim
) -> Any:
    session_id = await _victim_session(client, victim)
    return await client.delete(
        f"{API}/users/{victim['user']['id']}/sessions/{session_id}", headers=admin
    )


async def _admin_ends_all(client: httpx.AsyncClient, admin: dict[str, str], victim: Victim) -> Any:
    return await client.delete(f"{API}/users/{victim['user']['id']}/sessions", headers=admin)


async def _ban(client: httpx.AsyncClient, admin: dict[str, str], victim: Victim) -> Any:
    return await client.post(
        f"{API}/users/{victim['user']['id']}/ban", json={"reason": "spam"}, headers=admin
    )


async def _delete(client: httpx.AsyncClient, admin: dict[str, str], victim: Victim) -> Any:
    return await client.delete(f"{API}/users/{victim['user']['id']}", headers=admin)


WRITES: dict[str, tuple[Write, int]] = {
    "deactivate": (_deactivate, 403),
    "ban": (_ban, 403),
    "role change": (_role, 401),
    "admin sets the password": (_admin_password, 401),
    "own password change": (_own_password, 401),
    "logout": (_logout, 401),
    "logout-all": (_logout_all, 401),
    "end a session": (_end_session, 401),
    "admin ends a session": (_admin_ends_session, 401),
    "admin ends every session": (_admin_ends_all, 401),
    "delete": (_delete, 401),
}


@pytest.mark.parametrize("write", WRITES)
async def test_a_write_refuses_the_cached_token_at_its_next_request(
    client: httpx.AsyncClient,
    app: FastAPI,
    admin_headers: dict[str, str],
    register: RegisterUser,
    write: str,
) -> None:
    do, refused = WRITES[write]
    victim = await register()
    headers = bearer(victim["access_token"])
    await me_from_cache(client, app, headers)
    response = await do(client, admin_headers, victim)
    assert response.status_code < 300, response.text
    assert (await client.get(f"{API}/users/me", headers=headers)).status_code == refused


async def test_reuse_of_a_refresh_token_refuses_the_cached_access_token(
    client: httpx.AsyncClient, app: FastAPI, register: RegisterUser, clock: Clock
) -> None:
    victim = await register()
    rotated = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": victim["refresh_token"]}
    )
    assert rotated.status_code == 200, rotated.text
    headers = bearer(rotated.json()["access_token"])
    await me_from_cache(client, app, headers)
    grace = app.state.runtime.settings.REFRESH_REUSE_GRACE_SECONDS
    clock.offset += timedelta(seconds=grace + 1)
    reused = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": victim["refresh_token"]}
    )
    assert reused.status_code == 401
    assert (await client.get(f"{API}/users/me", headers=headers)).status_code == 401


async def test_a_changed_name_shows_at_once(
    client: httpx.AsyncClient, app: FastAPI, user_headers: dict[str, str]
) -> None:
    await me_from_cache(client, app, user_headers)
    changed = await client.patch(f"{API}/users/me", json={"name": "New Name"}, headers=user_headers)
    assert changed.status_code == 200, changed.text
    assert (await client.get(f"{API}/users/me", headers=user_headers)).json()["name"] == "New Name"


# --- a write path written without the cache in mind is still noticed ------------------

SHAPES: dict[str, Executable] = {
    # Neither names a user id: every entry is dropped.
    "UPDATE by email": update(User)
    .where(col(User.email) == "user@example.com")
    .values(is_active=False),
    "SQL text": text("UPDATE users SET is_active = false WHERE email = 'user@example.com'"),
}


@pytest.mark.parametrize("shape", [*SHAPES, "unit of work"])
async def test_any_write_through_the_apps_sessions_is_noticed(
    client: httpx.AsyncClient, app: FastAPI, register: RegisterUser, shape: str
) -> None:
    victim = await register()
    headers = bearer(victim["access_token"])
    await me_from_cache(client, app, headers)
    runtime: Runtime = app.state.runtime
    async with runtime.sessionmaker() as db:
        if shape == "unit of work":
            user = (await db.exec(select(User).where(User.email == "user@example.com"))).one()
            user.is_active = False
            db.add(user)
        else:
            await db.exec(SHAPES[shape])  # type: ignore[call-overload]
        await db.commit()
    assert (await client.get(f"{API}/users/me", headers=headers)).status_code == 403


# --- the listener: lost, the cache answers nothing; back, it answers again ------------


async def test_a_lost_listener_stops_the_cache_until_it_is_back(
    client: httpx.AsyncClient, app: FastAPI, settings: Any, admin_headers: dict[str, str]
) -> None:
    if not caches(app):
        pytest.skip("SQLite has no auth cache")
    created = await create_user(
        client, admin_headers, email="quiet@example.com", name="Quiet", password=USER_PASSWORD
    )
    victim = await login(client, "quiet@example.com", USER_PASSWORD)
    headers = bearer(victim["access_token"])
    await me_from_cache(client, app, headers)
    dsn = settings.DATABASE_URL
    outsider = await asyncpg.connect(dsn)
    try:
        killed = await outsider.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()",
            LISTENER_NAME,
        )
        assert killed == 1
        # Nobody hears this one: the listener is gone.
        await outsider.execute(
            "UPDATE users SET is_active = false WHERE id = $1", created.json()["id"]
        )
        written = time.monotonic()
        while (await client.get(f"{API}/users/me", headers=headers)).status_code == 200:
            assert time.monotonic() - written <= 0.1, "served from the cache while deaf"
        await outsider.execute(
            "UPDATE users SET is_active = true WHERE id = $1", created.json()["id"]
        )
    finally:
        await outsider.close()
    # It reconnects by itself, starting empty, and answers from memory again.
    await me_from_cache(client, app, headers)
