"""The sign-in history: which auth events are recorded, GET /auth-events and
GET /users/me/sign-ins, the batching writer, and `backend purge`."""

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlmodel import col
from typer.testing import CliRunner

from backend.auth import events as events_module
from backend.auth.events import AuthEventWriter
from backend.cli import app as cli_app
from backend.clock import Clock
from backend.config import get_settings
from backend.db.engine import create_engine
from backend.db.migrate import upgrade_to_head
from backend.http.observability import Metrics
from backend.main import create_app
from backend.models import AuthEvent, AuthEventKind
from tests.helpers import (
    ADMIN_EMAIL,
    API,
    USER_PASSWORD,
    RegisterUser,
    bearer,
    login,
    make_settings,
    post_login,
    running,
)

UA = {"User-Agent": "HistoryTest/1.0"}


async def _list(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    response = await client.get(f"{API}{path}", params=params, headers=headers)
    assert response.status_code == 200, response.text
    body: list[dict[str, Any]] = response.json()
    assert response.headers["x-total-count"] == str(len(body))
    return body


async def test_each_kind_is_recorded_and_listed(
    client: httpx.AsyncClient, admin_headers: dict[str, str], register: RegisterUser
) -> None:
    registered = await register(email="hist@example.com")
    user_id = registered["user"]["id"]
    tokens = await login(client, "hist@example.com", USER_PASSWORD)
    wrong = await client.post(
        f"{API}/auth/login",
        data={"username": "hist@example.com", "password": "Not-The-Password-9"},
        headers=UA,
    )
    assert wrong.status_code == 401
    unknown = await client.post(
        f"{API}/auth/login",
        data={"username": "Nobody@Example.com", "password": "Whatever-Pass-9"},
        headers=UA,
    )
    assert unknown.status_code == 401
    garbage = await client.post(f"{API}/auth/refresh", json={"refresh_token": "x.y.z"}, headers=UA)
    assert garbage.status_code == 401
    rotated = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert rotated.status_code == 200
    reused = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}, headers=UA
    )
    assert reused.status_code == 401
    fresh = await login(client, "hist@example.com", USER_PASSWORD)
    logged_out = await client.post(
        f"{API}/auth/logout", json={"refresh_token": fresh["refresh_token"]}, headers=UA
    )
    assert logged_out.status_code == 204
    user_headers = bearer((await login(client, "hist@example.com", USER_PASSWORD))["access_token"])

    mine = await _list(client, "/users/me/sign-ins", user_headers)
    assert [(event["kind"], event["reason"]) for event in mine] == [
        ("login_succeeded", None),
        ("logout", None),
        ("login_succeeded", None),
        ("refresh_failed", "refresh_token_rotated"),  # within the grace window
        ("login_failed", "credentials_invalid"),
        ("login_succeeded", None),
        ("registered", None),
    ]
    assert {event["user_id"] for event in mine} == {user_id}
    assert mine[1]["user_agent"] == "HistoryTest/1.0"
    assert mine[1]["ip_address"] == "127.0.0.1"
    assert mine[4]["email"] == "hist@example.com"
    assert [
        e["kind"] for e in await _list(client, "/users/me/sign-ins", user_headers, kind="logout")
    ] == ["logout"]

    everyone = await _list(client, "/auth-events", admin_headers, per_page=100)
    anonymous = [event for event in everyone if event["user_id"] is None]
    assert sorted((event["kind"], event["email"], event["reason"]) for event in anonymous) == [
        ("login_failed", "nobody@example.com", "credentials_invalid"),
        ("refresh_failed", None, "token_invalid"),
    ]
    by_user = await _list(client, "/auth-events", admin_headers, user_id=user_id, sort="id")
    assert [event["id"] for event in by_user] == sorted(event["id"] for event in mine)
    failed = await _list(
        client, "/auth-events", admin_headers, kind=["login_failed", "refresh_failed"]
    )
    assert len(failed) == 4
    assert len(await _list(client, "/auth-events", admin_headers, email_like="NOBODY")) == 1
    assert len(await _list(client, "/auth-events", admin_headers, ip_address="10.0.0.1")) == 0
    later = await _list(
        client, "/auth-events", admin_headers, created_after=everyone[0]["created_at"]
    )
    assert later == []
    paged = await client.get(
        f"{API}/auth-events", params={"per_page": 2, "user_id": user_id}, headers=admin_headers
    )
    assert paged.headers["x-total-count"] == str(len(mine))
    assert len(paged.json()) == 2
    assert 'rel="next"' in paged.headers["link"]
    react_admin = await client.get(
        f"{API}/auth-events",
        params={"range": "[0,1]", "filter": '{"kind":"registered"}'},
        headers=admin_headers,
    )
    assert react_admin.headers["content-range"] == "auth-events 0-0/1"

    refused = await client.get(f"{API}/auth-events", headers=user_headers)
    assert refused.status_code == 403
    bad = await client.get(f"{API}/auth-events", params={"kind": "nope"}, headers=admin_headers)
    assert bad.status_code == 422
    other = await client.get(
        f"{API}/users/me/sign-ins", params={"user_id": 1}, headers=user_headers
    )
    assert other.status_code == 422  # no reading another's history by filter


async def test_logout_all_and_registration_are_recorded_for_their_account(
    client: httpx.AsyncClient, register: RegisterUser
) -> None:
    headers = bearer((await register(email="all@example.com"))["access_token"])
    ended = await client.post(f"{API}/auth/logout-all", headers=headers)
    assert ended.status_code == 204
    headers = bearer((await login(client, "all@example.com", USER_PASSWORD))["access_token"])
    kinds = [
        (event["kind"], event["reason"])
        for event in await _list(client, "/users/me/sign-ins", headers)
    ]
    assert kinds == [
        ("login_succeeded", None),
        ("logout", "logout_all"),
        ("registered", None),
    ]


async def test_rate_limit_refusals_of_auth_routes_are_recorded(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    # RATE_LIMIT_LOGIN: 10 a minute per address and email.
    statuses = [
        (await post_login(client, "limited@example.com", "Wrong-Password-9")).status_code
        for _ in range(11)
    ]
    assert statuses == [401] * 10 + [429]
    limited = await _list(client, "/auth-events", admin_headers, kind="rate_limited")
    assert [(event["reason"], event["ip_address"]) for event in limited] == [("login", "127.0.0.1")]
    # A 429 outside the auth routes is not a sign-in event (none here: the admin's
    # requests above were not limited).
    assert len(await _list(client, "/auth-events", admin_headers, kind="login_failed")) == 10


@pytest.fixture
async def writer_engine(tmp_path: Path) -> Any:
    settings = make_settings(f"sqlite:///{tmp_path / 'writer.db'}")
    await upgrade_to_head(settings)
    engine = create_engine(settings)
    yield engine
    await engine.dispose()


async def _rows(engine: Any) -> int:
    async with engine.connect() as connection:
        count: int = (
            await connection.execute(select(func.count()).select_from(AuthEvent))
        ).scalar_one()
        return count


def _sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(f"{name}_total")


def _record(writer: AuthEventWriter, count: int) -> None:
    for _ in range(count):
        writer.record(AuthEventKind.LOGIN_FAILED, ip_address="192.0.2.1", user_agent="x\x00y")


async def test_writer_batches_drops_when_full_and_drains_at_close(
    writer_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_module, "MAX_PENDING", 5)
    metrics = Metrics()
    writer = AuthEventWriter(writer_engine, metrics)
    _record(writer, 7)
    assert writer.pending == 5
    assert _sample(metrics, "auth_events_dropped") == 2
    # Not written until flushed or stopped: recording never touches the database.
    assert await _rows(writer_engine) == 0
    writer.start()
    await writer.close(within=5)
    assert await _rows(writer_engine) == 5
    assert _sample(metrics, "auth_events_written") == 5
    async with writer_engine.connect() as connection:
        agents = (await connection.execute(select(col(AuthEvent.user_agent)))).scalars().all()
    assert set(agents) == {"xy"}  # cleaned on the way in, as a session's


async def test_writer_flushes_a_full_batch_without_waiting_for_the_timer(
    writer_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_module, "BATCH_ROWS", 3)
    monkeypatch.setattr(events_module, "FLUSH_INTERVAL_SECONDS", 3600)
    writer = AuthEventWriter(writer_engine, Metrics())
    writer.start()
    _record(writer, 3)
    for _ in range(100):  # the writer's turn comes on the next loop iterations
        if await _rows(writer_engine) == 3:
            break
        await asyncio.sleep(0)
    assert await _rows(writer_engine) == 3
    await writer.close(within=5)


async def test_a_batch_the_database_refuses_is_dropped_and_counted(tmp_path: Path) -> None:
    engine = create_engine(make_settings(f"sqlite:///{tmp_path / 'empty.db'}"))  # no tables
    metrics = Metrics()
    writer = AuthEventWriter(engine, metrics)
    _record(writer, 3)
    await writer.flush()
    assert _sample(metrics, "auth_events_dropped") == 3
    assert writer.pending == 0
    await writer.close(within=1)
    await engine.dispose()


async def test_events_of_an_app_that_stops_are_written(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'stop.db'}", AUTO_MIGRATE=True)
    app = create_app(settings)
    async with running(app) as client:
        await post_login(client, ADMIN_EMAIL, "Wrong-Password-9")
    engine = create_engine(settings)
    assert await _rows(engine) == 1
    await engine.dispose()


def test_purge_deletes_events_past_the_retention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    database = tmp_path / "purge.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("AUTH_EVENTS_RETENTION_DAYS", "30")
    get_settings.cache_clear()
    settings = make_settings(f"sqlite:///{database}")

    async def seed() -> None:
        await upgrade_to_head(settings)
        engine = create_engine(settings)
        writer = AuthEventWriter(engine, Metrics())
        for days in (31, 29, 0):
            clock.offset = -timedelta(days=days)
            _record(writer, 1)
        clock.offset = timedelta(0)
        await writer.flush()
        await engine.dispose()

    asyncio.run(seed())
    try:
        result = CliRunner().invoke(cli_app, ["purge"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "sign-in events older than AUTH_EVENTS_RETENTION_DAYS: 1 removed\n" in result.output
    assert sqlite3.connect(database).execute("SELECT count(*) FROM auth_events").fetchone() == (2,)
