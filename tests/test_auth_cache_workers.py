"""Revocation reaches another worker's auth cache within 100 ms: two app processes on one
PostgreSQL database; a write through one (or the CLI, a third process), then the other
is asked with the revoked token until it refuses, timed from the write's answer."""

import asyncio
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from backend.db.migrate import upgrade_to_head
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    TEST_SECRET_KEY,
    USER_PASSWORD,
    bearer,
    make_settings,
)
from tests.postgres import Server, session_database
from tests.test_served import BIN, ServerProcess

REVOKED_WITHIN_SECONDS = 0.1
WARM_SECONDS = 5.0


@pytest.fixture(scope="module")
def database_url(postgres: Server) -> Iterator[str]:
    with session_database(postgres) as url:
        asyncio.run(upgrade_to_head(make_settings(url)))
        yield url


@pytest.fixture(scope="module")
def workers(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    settings = {
        "DATABASE_URL": database_url,
        "METRICS_ENABLED": "true",
        "RATE_LIMIT_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
        "AUTO_MIGRATE": "false",
    }
    started: list[ServerProcess] = []
    try:
        for name in ("writer", "reader"):
            server = ServerProcess("uvicorn", tmp_path_factory.mktemp(name), **settings)
            started.append(server)
            server.wait_until_healthy()  # one at a time: the first creates the admin
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


def cache_hits(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('auth_checks_total{source="cache"}'):
            return float(line.split()[-1])
    return 0.0


def answered_from_cache(client: httpx.Client, headers: dict[str, str]) -> None:
    """GET /users/me on this worker until its cache answers it."""
    deadline = time.monotonic() + WARM_SECONDS
    while True:
        before = cache_hits(client)
        assert client.get(f"{API}/users/me", headers=headers).status_code == 200
        if cache_hits(client) > before:
            return
        assert time.monotonic() < deadline, "the reader never answered from its cache"
        time.sleep(0.02)


Writer = httpx.Client
Victim = dict[str, Any]


def _login(writer: Writer, email: str) -> Victim:
    response = writer.post(f"{API}/auth/login", data={"username": email, "password": USER_PASSWORD})
    assert response.status_code == 200, response.text
    body: Victim = response.json()
    return body


def _deactivate(writer: Writer, admin: dict[str, str], victim: Victim, _url: str) -> None:
    response = writer.patch(
        f"{API}/users/{victim['user']['id']}", json={"is_active": False}, headers=admin
    )
    assert response.status_code == 200, response.text


def _role(writer: Writer, admin: dict[str, str], victim: Victim, _url: str) -> None:
    response = writer.patch(
        f"{API}/users/{victim['user']['id']}", json={"role": "admin"}, headers=admin
    )
    assert response.status_code == 200, response.text


def _logout_all(writer: Writer, _admin: dict[str, str], victim: Victim, _url: str) -> None:
    response = writer.post(f"{API}/auth/logout-all", headers=bearer(victim["access_token"]))
    assert response.status_code == 204, response.text


def _end_session(writer: Writer, _admin: dict[str, str], victim: Victim, _url: str) -> None:
    headers = bearer(victim["access_token"])
    current = writer.get(f"{API}/users/me/sessions", headers=headers).json()
    other = _login(writer, victim["user"]["email"])
    response = writer.delete(
        f"{API}/users/me/sessions/{current[0]['id']}", headers=bearer(other["access_token"])
    )
    assert response.status_code == 204, response.text


def _password(writer: Writer, _admin: dict[str, str], victim: Victim, _url: str) -> None:
    other = _login(writer, victim["user"]["email"])
    body = {"current_password": USER_PASSWORD, "new_password": "Another-Pass-99"}
    response = writer.post(
        f"{API}/users/me/password", json=body, headers=bearer(other["access_token"])
    )
    assert response.status_code == 200, response.text


def _cli_logout(_writer: Writer, _admin: dict[str, str], victim: Victim, url: str) -> None:
    environment = {
        "PATH": os.environ["PATH"],
        "DATABASE_URL": url,
        "SECRET_KEY": TEST_SECRET_KEY,
        "STAGE": "test",
        "AUTO_MIGRATE": "false",
    }
    subprocess.run(
        [str(BIN / "backend"), "users", "logout", victim["user"]["email"]],
        env=environment,
        cwd=tempfile.gettempdir(),  # no .env there
        check=True,
        capture_output=True,
    )


WRITES: dict[str, tuple[Callable[[Writer, dict[str, str], Victim, str], None], int]] = {
    "deactivate": (_deactivate, 403),
    "role change": (_role, 401),
    "logout-all": (_logout_all, 401),
    "end a session": (_end_session, 401),
    "password change": (_password, 401),
    "CLI users logout (a third process)": (_cli_logout, 401),
}


@pytest.mark.parametrize("write", WRITES)
def test_revocation_reaches_the_other_worker_within_100_ms(
    workers: tuple[ServerProcess, ServerProcess], database_url: str, write: str
) -> None:
    do, refused = WRITES[write]
    with (
        httpx.Client(base_url=workers[0].base_url) as writer,
        httpx.Client(base_url=workers[1].base_url) as reader,
    ):
        admin_login = writer.post(
            f"{API}/auth/login", data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )
        admin = bearer(admin_login.json()["access_token"])
        email = f"{write.split()[0].lower()}-{time.monotonic_ns()}@example.com"
        created = writer.post(
            f"{API}/users",
            json={"email": email, "name": "Victim", "password": USER_PASSWORD},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        victim = _login(writer, email)
        headers = bearer(victim["access_token"])
        answered_from_cache(reader, headers)
        do(writer, admin, victim, database_url)
        written = time.monotonic()
        stale = 0
        while (answer := reader.get(f"{API}/users/me", headers=headers)).status_code == 200:
            stale += 1
            assert time.monotonic() - written < 1, "the reader never refused"
        elapsed = time.monotonic() - written
    assert answer.status_code == refused, answer.text
    print(f"{write}: the other worker refused {elapsed * 1000:.1f} ms after the write's answer")
    print(f"  (answers after the write served still: {stale})")
    assert elapsed <= REVOKED_WITHIN_SECONDS
