"""Webhooks: the admin routes, the events a change stages in its own transaction, and
their delivery to a real receiver that verifies each signature with the
`standardwebhooks` library: retries, disabling, concurrent dispatchers, and a kill -9
between the commit and the delivery."""

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlmodel import SQLModel, col, select
from standardwebhooks.webhooks import Webhook

from backend.clock import Clock
from backend.config import Settings
from backend.db.engine import create_engine
from backend.main import create_app
from backend.webhooks import outbox
from backend.webhooks.dispatcher import Dispatcher, claim, retry_delay
from backend.webhooks.models import WebhookDelivery, WebhookEventType
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    USER_PASSWORD,
    bearer,
    create_user,
    free_port,
    login,
    make_settings,
    running,
    server_env,
    wait_until_healthy,
)
from tests.webhook_receiver import STALL, Receiver, eventually, receiver_server

SERVER_START_SECONDS = 60  # imports alone took 15 s on a loaded 2-core machine

ALL_EVENTS = [str(event) for event in WebhookEventType]
FAST = {
    "WEBHOOK_RETRY_SCHEDULE": "0.05,0.05,0.05",
    "WEBHOOK_POLL_SECONDS": 0.05,
    # A lease (2 x this + 1 s) no round of these tests outlasts, even on a loaded
    # machine: an outcome recorded after its lease ran out may come with a second sending.
    "WEBHOOK_TIMEOUT_SECONDS": 10,
}


@pytest.fixture(scope="module")
def receiver_module() -> Iterator[Receiver]:
    with receiver_server() as receiver:
        yield receiver


@pytest.fixture
def receiver(receiver_module: Receiver) -> Iterator[Receiver]:
    receiver_module.reset()
    yield receiver_module
    receiver_module.reset()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, **FAST)


@asynccontextmanager
async def own_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app of the test's own settings, on the shared test database, left empty."""
    app = create_app(settings)
    async with running(app) as client:
        yield app, client
    await clear_database(settings)


async def clear_database(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
        async with engine.begin() as connection:
            for table in reversed(SQLModel.metadata.sorted_tables):
                await connection.execute(table.delete())
    finally:
        await engine.dispose()


async def admin_login(client: httpx.AsyncClient) -> dict[str, str]:
    return bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])


async def register_endpoint(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    receiver: Receiver,
    path: str = "/hook",
    events: list[str] | None = None,
) -> dict[str, Any]:
    response = await client.post(
        f"{API}/webhooks",
        json={"url": receiver.url(path), "events": events or ALL_EVENTS},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    receiver.secrets[path] = created["secret"]
    return created


async def deliveries(
    client: httpx.AsyncClient, headers: dict[str, str], endpoint_id: int
) -> list[dict[str, Any]]:
    response = await client.get(f"{API}/webhooks/{endpoint_id}/deliveries", headers=headers)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


async def settled_log(
    client: httpx.AsyncClient, headers: dict[str, str], endpoint_id: int, count: int
) -> list[dict[str, Any]]:
    """The endpoint's delivery log once it holds `count` deliveries none of which is
    pending: a receiver hears of a delivery before the dispatcher records its answer."""
    deadline = time.monotonic() + 10
    while True:
        log = await deliveries(client, headers, endpoint_id)
        if len(log) == count and all(entry["status"] != "pending" for entry in log):
            return log
        assert time.monotonic() < deadline, log
        await asyncio.sleep(0.05)


# --- the admin routes ------------------------------------------------------------------


async def test_admins_register_list_read_change_and_delete_endpoints(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_headers: dict[str, str]
) -> None:
    body = {"url": "https://hooks.example.com/a", "events": ["user.created"], "description": "CRM"}
    created = await client.post(f"{API}/webhooks", json=body, headers=admin_headers)
    assert created.status_code == 201, created.text
    endpoint = created.json()
    assert endpoint["secret"].startswith("whsec_")
    Webhook(endpoint["secret"])  # the library takes it as it is
    assert endpoint["enabled"] is True
    location = created.headers["Location"]
    assert location.endswith(f"{API}/webhooks/{endpoint['id']}")

    listed = await client.get(f"{API}/webhooks", headers=admin_headers)
    assert listed.status_code == 200
    assert listed.headers["X-Total-Count"] == "1"
    assert [item["id"] for item in listed.json()] == [endpoint["id"]]
    assert "secret" not in listed.json()[0]
    read = await client.get(location, headers=admin_headers)
    assert read.json()["description"] == "CRM"
    assert "secret" not in read.json()

    changed = await client.patch(
        location, json={"events": ["user.deleted", "session.revoked"]}, headers=admin_headers
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["events"] == ["user.deleted", "session.revoked"]

    for method in ("GET", "PATCH", "DELETE"):
        refused = await client.request(method, location, json={}, headers=user_headers)
        assert refused.status_code == 403
    assert (
        await client.post(f"{API}/webhooks", json=body, headers=user_headers)
    ).status_code == 403

    assert (await client.delete(location, headers=admin_headers)).status_code == 204
    gone = await client.get(location, headers=admin_headers)
    assert gone.status_code == 404
    assert gone.json()["code"] == "webhook_not_found"
    missing = await client.get(f"{API}/webhooks/{endpoint['id']}/deliveries", headers=admin_headers)
    assert missing.json()["code"] == "webhook_not_found"

    audit = await client.get(f"{API}/audit", params={"sort": "id"}, headers=admin_headers)
    actions = [event["action"] for event in audit.json() if event["action"].startswith("webhook")]
    assert actions == ["webhook.create", "webhook.update", "webhook.delete"]


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"url": "ftp://hooks.example.com/", "events": ["user.created"]}, "url", "url_scheme"),
        ({"url": "hooks.example.com/x", "events": ["user.created"]}, "url", "url_scheme"),
        ({"url": "https:///x", "events": ["user.created"]}, "url", "url_host"),
        (
            {"url": "https://me:pw@hooks.example.com/", "events": ["user.created"]},
            "url",
            "url_credentials",
        ),
        (
            {"url": "https://hooks.example.com/#a", "events": ["user.created"]},
            "url",
            "url_fragment",
        ),
        (
            {"url": "https://hooks.example.com:99999/", "events": ["user.created"]},
            "url",
            "url_invalid",
        ),
        ({"url": "https://hooks.example.com/", "events": []}, "events", "too_short"),
        ({"url": "https://hooks.example.com/", "events": ["user.exploded"]}, "events.0", "enum"),
        (
            {"url": "https://hooks.example.com/", "events": ["user.created"], "secret": "x"},
            "secret",
            "extra_forbidden",
        ),
    ],
)
async def test_bad_endpoints_are_422_naming_the_field(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    body: dict[str, Any],
    field: str,
    code: str,
) -> None:
    response = await client.post(f"{API}/webhooks", json=body, headers=admin_headers)
    assert response.status_code == 422, response.text
    assert {(error["field"], error["code"]) for error in response.json()["errors"]} == {
        (field, code)
    }


async def test_private_addresses_are_refused_unless_allowed(database_url: str) -> None:
    settings = make_settings(database_url, WEBHOOK_ALLOW_PRIVATE_ADDRESSES=False)
    async with own_app(settings) as (_, client):
        headers = await admin_login(client)
        for url in (
            "http://127.0.0.1:9/",
            "http://localhost/",
            "http://10.1.2.3/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data",
        ):
            body = {"url": url, "events": ["user.created"]}
            response = await client.post(f"{API}/webhooks", json=body, headers=headers)
            assert response.status_code == 422, url
            assert response.json()["errors"][0]["code"] == "url_private_address"
        body = {"url": "https://hooks.example.com/", "events": ["user.created"]}
        created = await client.post(f"{API}/webhooks", json=body, headers=headers)
        assert created.status_code == 201
        location = created.headers["Location"]
        moved = await client.patch(location, json={"url": "http://192.168.0.1/"}, headers=headers)
        assert moved.status_code == 422
        # Allowed in STAGE=test by default: the receivers of these tests are local.
        assert make_settings(database_url).webhook_allow_private_addresses
        production = make_settings(database_url).model_copy(update={"STAGE": "production"})
        assert not production.webhook_allow_private_addresses


# --- events and their delivery ---------------------------------------------------------


async def test_changes_to_users_and_sessions_arrive_signed(
    client: httpx.AsyncClient, admin_headers: dict[str, str], receiver: Receiver
) -> None:
    endpoint = await register_endpoint(client, admin_headers, receiver)
    only_deletions = await register_endpoint(
        client, admin_headers, receiver, path="/deleted", events=["user.deleted"]
    )
    created = await create_user(
        client, admin_headers, email="bob@example.com", name="Bob", password=USER_PASSWORD
    )
    user = created.json()
    await client.patch(f"{API}/users/{user['id']}", json={"name": "Robert"}, headers=admin_headers)
    tokens = await login(client, "bob@example.com", USER_PASSWORD)
    await client.post(f"{API}/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    await client.delete(f"{API}/users/{user['id']}", headers=admin_headers)

    await eventually(lambda: len(receiver.answered()) == 5)
    to_all = [item for item in receiver.received if item.path == "/hook"]
    assert all(item.verified for item in receiver.received)
    assert [item.payload["type"] for item in to_all] == [
        "user.created",
        "user.updated",
        "session.revoked",
        "user.deleted",
    ]
    created_event, updated, revoked, deleted = (item.payload for item in to_all)
    assert created_event["data"] == user | {"updated_at": created_event["data"]["updated_at"]}
    assert updated["data"]["name"] == "Robert"
    assert "hashed_password" not in updated["data"]
    assert "account_key" not in updated["data"]
    assert revoked["data"] == {
        "session_id": revoked["data"]["session_id"],
        "user_id": user["id"],
        "reason": "logout",
    }
    assert deleted["data"]["id"] == user["id"]
    assert {"type", "timestamp", "data"} == set(deleted)
    # One event, one webhook-id, whichever endpoint it goes to.
    to_deleted = [item for item in receiver.received if item.path == "/deleted"]
    assert [item.webhook_id for item in to_deleted] == [to_all[-1].webhook_id]
    assert len({item.webhook_id for item in to_all}) == 4

    log = await settled_log(client, admin_headers, endpoint["id"], 4)
    assert [entry["event_type"] for entry in log] == [
        "user.deleted",
        "session.revoked",
        "user.updated",
        "user.created",
    ]
    assert all(entry["status"] == "delivered" for entry in log)
    assert all(entry["attempts"] == 1 and entry["last_status_code"] == 204 for entry in log)
    assert all(entry["next_attempt_at"] is None and entry["delivered_at"] for entry in log)
    assert {entry["event_id"] for entry in log} == {item.webhook_id for item in to_all}
    only = await settled_log(client, admin_headers, only_deletions["id"], 1)
    assert [entry["event_type"] for entry in only] == ["user.deleted"]


async def test_a_ban_arrives_with_the_ended_sessions(
    client: httpx.AsyncClient, admin_headers: dict[str, str], receiver: Receiver
) -> None:
    user = (
        await create_user(
            client, admin_headers, email="dan@example.com", name="Dan", password=USER_PASSWORD
        )
    ).json()
    await login(client, "dan@example.com", USER_PASSWORD)
    await register_endpoint(
        client, admin_headers, receiver, events=["user.banned", "session.revoked"]
    )
    banned = await client.post(
        f"{API}/users/{user['id']}/ban", json={"reason": "spam"}, headers=admin_headers
    )
    assert banned.status_code == 200, banned.text
    await eventually(lambda: len(receiver.answered()) == 2)
    assert all(item.verified for item in receiver.received)
    by_type = {item.payload["type"]: item.payload["data"] for item in receiver.received}
    assert by_type["user.banned"]["id"] == user["id"]
    assert by_type["user.banned"]["ban_reason"] == "spam"
    assert by_type["session.revoked"]["user_id"] == user["id"]


async def test_a_change_that_fails_stages_nothing(
    client: httpx.AsyncClient, admin_headers: dict[str, str], receiver: Receiver
) -> None:
    endpoint = await register_endpoint(client, admin_headers, receiver)
    await create_user(
        client, admin_headers, email="carol@example.com", name="Carol", password=USER_PASSWORD
    )
    taken = await client.post(
        f"{API}/users",
        json={"email": "carol@example.com", "name": "Again", "password": USER_PASSWORD},
        headers=admin_headers,
    )
    assert taken.status_code == 409
    await eventually(lambda: len(receiver.answered()) == 1)
    await asyncio.sleep(0.2)  # a few polls: nothing else comes
    assert len(receiver.received) == 1
    assert len(await deliveries(client, admin_headers, endpoint["id"])) == 1


async def test_failed_deliveries_are_retried_with_the_same_id_until_answered(
    client: httpx.AsyncClient, admin_headers: dict[str, str], receiver: Receiver
) -> None:
    receiver.statuses.extend([500, 503])
    endpoint = await register_endpoint(client, admin_headers, receiver, events=["user.created"])
    await create_user(
        client, admin_headers, email="dan@example.com", name="Dan", password=USER_PASSWORD
    )
    await eventually(lambda: len(receiver.answered()) == 1)
    assert [item.status for item in receiver.received] == [500, 503, 204]
    assert len({item.webhook_id for item in receiver.received}) == 1
    assert len({item.body for item in receiver.received}) == 1
    assert all(item.verified for item in receiver.received)
    [entry] = await settled_log(client, admin_headers, endpoint["id"], 1)
    assert entry["status"] == "delivered"
    assert entry["attempts"] == 3
    assert entry["last_status_code"] == 204
    assert entry["last_error"] is None
    read = await client.get(f"{API}/webhooks/{endpoint['id']}", headers=admin_headers)
    assert read.json()["failing_since"] is None  # the success ended the run of failures


async def test_a_delivery_fails_once_the_schedule_is_spent(
    client: httpx.AsyncClient, admin_headers: dict[str, str], receiver: Receiver
) -> None:
    receiver.statuses.extend([500] * 10)
    endpoint = await register_endpoint(client, admin_headers, receiver, events=["user.created"])
    await create_user(
        client, admin_headers, email="erin@example.com", name="Erin", password=USER_PASSWORD
    )

    [entry] = await settled_log(client, admin_headers, endpoint["id"], 1)
    assert entry["status"] == "failed"
    assert entry["attempts"] == 4  # the first, and one per delay of the schedule
    assert entry["last_status_code"] == 500
    assert entry["last_error"] == "HTTP 500"
    assert entry["next_attempt_at"] is None
    assert len(receiver.received) == 4
    read = await client.get(f"{API}/webhooks/{endpoint['id']}", headers=admin_headers)
    assert read.json()["enabled"] is True  # failing for seconds, not WEBHOOK_DISABLE_AFTER_HOURS


async def test_an_endpoint_failing_too_long_is_disabled_until_enabled_again(
    database_url: str, receiver: Receiver, clock: Clock
) -> None:
    # Retries an hour apart: only the moved clock brings the next one.
    settings = make_settings(database_url, **{**FAST, "WEBHOOK_RETRY_SCHEDULE": "3600,3600"})
    async with own_app(settings) as (_, client):
        await _disable_and_enable(client, receiver, clock)


async def _disable_and_enable(client: httpx.AsyncClient, receiver: Receiver, clock: Clock) -> None:
    receiver.statuses.extend([500, 500])
    admin_headers = await admin_login(client)
    endpoint = await register_endpoint(client, admin_headers, receiver, events=["user.created"])
    location = f"{API}/webhooks/{endpoint['id']}"
    await create_user(
        client, admin_headers, email="fay@example.com", name="Fay", password=USER_PASSWORD
    )
    await eventually(lambda: len(receiver.received) >= 1)
    clock.offset += timedelta(hours=121)  # past WEBHOOK_DISABLE_AFTER_HOURS (120)
    headers = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])

    async def disabled() -> bool:
        read = await client.get(location, headers=headers)
        return read.json()["enabled"] is False

    deadline = time.monotonic() + 10
    while not await disabled():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert len(receiver.received) == 2
    read = (await client.get(location, headers=headers)).json()
    assert read["disabled_at"] is not None
    assert read["failing_since"] is not None
    audit = await client.get(f"{API}/audit", params={"action": "webhook.disable"}, headers=headers)
    [event] = audit.json()
    assert event["actor_id"] is None
    assert event["details"]["webhook_id"] == endpoint["id"]
    assert event["details"]["last_error"] == "HTTP 500"

    # Disabled: nothing is sent, and events meanwhile are not kept for it.
    await create_user(client, headers, email="gus@example.com", name="Gus", password=USER_PASSWORD)
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 2
    [waiting] = await deliveries(client, headers, endpoint["id"])
    assert waiting["status"] == "pending"
    assert waiting["attempts"] == 2

    enabled = await client.patch(location, json={"enabled": True}, headers=headers)
    assert enabled.status_code == 200
    assert enabled.json()["enabled"] is True
    assert enabled.json()["disabled_at"] is None
    assert enabled.json()["failing_since"] is None
    [entry] = await settled_log(client, headers, endpoint["id"], 1)
    assert entry["status"] == "delivered"
    assert entry["attempts"] == 3
    assert len(receiver.answered()) == 1


async def test_a_receiver_that_does_not_answer_in_time_is_a_failure(
    database_url: str, receiver: Receiver
) -> None:
    settings = make_settings(database_url, **{**FAST, "WEBHOOK_TIMEOUT_SECONDS": 0.3})
    receiver.delay = 1
    receiver.statuses.extend([200])
    async with own_app(settings) as (_, client):
        headers = await admin_login(client)
        endpoint = await register_endpoint(client, headers, receiver, events=["user.created"])
        await create_user(
            client, headers, email="hal@example.com", name="Hal", password=USER_PASSWORD
        )
        await eventually(lambda: len(receiver.received) >= 2)
        receiver.delay = 0
        [entry] = await settled_log(client, headers, endpoint["id"], 1)
    assert entry["status"] == "delivered"
    # At least one attempt timed out; the log counts every attempt the receiver saw.
    assert entry["attempts"] == len(receiver.received) >= 2
    assert len({item.webhook_id for item in receiver.received}) == 1


def test_a_bad_retry_schedule_stops_start_up_naming_it() -> None:
    for value in ("5,x", "5,-1", "5,inf", "0"):
        with pytest.raises(ValidationError, match="WEBHOOK_RETRY_SCHEDULE"):
            make_settings("sqlite:///unused.db", WEBHOOK_RETRY_SCHEDULE=value)
    assert (
        make_settings("sqlite:///unused.db", WEBHOOK_RETRY_SCHEDULE="").webhook_retry_schedule == []
    )


def test_retry_delays_follow_the_schedule_with_jitter() -> None:
    settings = make_settings("sqlite:///unused.db", WEBHOOK_RETRY_SCHEDULE="5,300,1800")
    for attempts, base in ((1, 5), (2, 300), (3, 1800)):
        delays = [retry_delay(settings, attempts) for _ in range(200)]
        assert all(delay is not None and 0.8 * base <= delay <= 1.2 * base for delay in delays)
        assert len(set(delays)) > 1  # jittered
    assert retry_delay(settings, 4) is None


def test_signatures_match_the_specification_example() -> None:
    # The test vector of the Standard Webhooks specification (its README's example).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    timestamp = 1614265330
    payload = '{"test": 2432232314}'
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), payload)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


# --- several dispatchers, and a crash ----------------------------------------------------


async def test_dispatchers_side_by_side_never_send_a_delivery_twice(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    receiver: Receiver,
    settings: Settings,
) -> None:
    await register_endpoint(client, admin_headers, receiver, events=["user.updated"])
    receiver.delay = 0.02
    runtime = app.state.runtime
    others = [Dispatcher(settings, runtime.sessionmaker) for _ in range(3)]
    for dispatcher in others:
        dispatcher.start()
    try:
        async with runtime.sessionmaker() as db:
            for number in range(60):
                await outbox.stage(db, event=WebhookEventType.USER_UPDATED, data={"n": number})
            await db.commit()  # wakes all four at once
        await eventually(lambda: len(receiver.received) >= 60)
        await asyncio.sleep(0.3)  # any second sending would have come by now
    finally:
        for dispatcher in others:
            await dispatcher.close(within=5)
    sent = [item.payload["data"]["n"] for item in receiver.received]
    assert sorted(sent) == list(range(60))


async def test_a_claim_skips_deliveries_another_dispatcher_holds(database_url: str) -> None:
    """PostgreSQL: FOR UPDATE SKIP LOCKED. A delivery another transaction holds is
    passed over at once, not waited for."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one write lock, no row locks to skip")
    settings = make_settings(database_url, **FAST)
    async with own_app(settings) as (app, client):
        runtime = app.state.runtime
        await runtime.webhooks.close(within=1)  # the app's own dispatcher claims nothing
        endpoint = await register_endpoint(
            client, await admin_login(client), Receiver(free_port()), events=["user.updated"]
        )
        async with runtime.sessionmaker() as db:
            for number in range(2):
                await outbox.stage(db, event=WebhookEventType.USER_UPDATED, data={"n": number})
            await db.commit()
        async with runtime.sessionmaker() as holder, runtime.sessionmaker() as db:
            oldest = (
                select(WebhookDelivery.id)
                .where(WebhookDelivery.endpoint_id == endpoint["id"])
                .order_by(col(WebhookDelivery.id))
                .limit(1)
                .with_for_update()
            )
            first_id = (await holder.exec(oldest)).one()
            async with asyncio.timeout(2):
                claims = await claim(db, settings=settings, limit=10)
            await holder.rollback()
        assert len(claims) == 1
        assert claims[0].delivery_id != first_id


def _serve(env: dict[str, str], workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log_path = workdir / f"server-{port}.log"
    command = [sys.executable, "-m", "uvicorn", "--factory", "backend.main:served_app"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    wait_until_healthy(base_url, process, log_path, SERVER_START_SECONDS)
    return process, base_url


async def test_a_delivery_cut_off_by_kill_9_arrives_after_a_restart(
    database_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    """The app, as a process, sends a delivery that the receiver holds unanswered, and
    is killed (SIGKILL) meanwhile. Started again (here in the test's process, which
    saves a second process start: ~15 s on a loaded machine), it sends it again, with
    the same webhook-id, once the claim's lease (2 x WEBHOOK_TIMEOUT_SECONDS + 1 s)
    runs out."""
    fast = {
        "WEBHOOK_TIMEOUT_SECONDS": "1",
        "WEBHOOK_POLL_SECONDS": "0.1",
        "WEBHOOK_RETRY_SCHEDULE": "0.1",
    }
    env = server_env(tmp_path / "unused.db", DATABASE_URL=database_url, **fast)
    receiver.statuses.append(STALL)
    process, base_url = _serve(env, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=base_url) as http:
            headers = await admin_login(http)
            endpoint = await register_endpoint(http, headers, receiver, events=["user.created"])
            await create_user(
                http, headers, email="ivy@example.com", name="Ivy", password=USER_PASSWORD
            )
            await eventually(lambda: len(receiver.received) == 1)
    finally:
        process.kill()  # SIGKILL: no shutdown, no clean-up, the attempt never recorded
        process.wait()
    async with own_app(make_settings(database_url, **fast)) as (_, client):
        await eventually(lambda: len(receiver.answered()) == 1, seconds=15)
        log = await settled_log(client, await admin_login(client), endpoint["id"], 1)
        await asyncio.sleep(0.5)  # nothing more comes
    stalled, answered = receiver.received
    assert stalled.status == STALL
    assert answered.status == 204
    assert stalled.webhook_id == answered.webhook_id
    assert stalled.body == answered.body
    assert stalled.verified
    assert answered.verified
    assert answered.payload["data"]["email"] == "ivy@example.com"
    [entry] = log
    assert entry["status"] == "delivered"
    assert entry["attempts"] == 1  # the killed process never recorded its attempt
