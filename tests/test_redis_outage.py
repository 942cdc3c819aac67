"""A real Redis outage: the rate limiter fails open and readiness says "degraded".

A Redis that is down or hung (SIGSTOP) costs a login at most one storage budget, and
the outage is one log line when it starts and one when it ends, never one per request.

The test runs its own redis-server on a free loopback port, so killing it never
disturbs the shared one. Outside CI a machine without redis-server skips it.
"""

import asyncio
import logging
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backend.config import Settings
from backend.http.ratelimit import STORAGE_BUDGET_SECONDS, STORAGE_RETRY_SECONDS
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, free_port, make_settings
from tests.services import REDIS, require

START_SECONDS = 10.0
REQUEST_LIMIT_SECONDS = 3.0
# A login that skips Redis takes 5-60 ms here (bcrypt at 4 rounds), 0.25 s at worst on
# two busy cores. Before the budget a hung Redis made every login take 4.6 s; without
# the skipping after a failure, each would still pay 0.2 s per check, 0.6 s a login.
LOGINS_WITHIN_ONE_BUDGET_SECONDS = STORAGE_BUDGET_SECONDS + 0.6


class RedisServer:
    """A throwaway redis-server: no persistence, loopback only, restartable on its port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_SECONDS
        while not self.answers():
            assert self.process.poll() is None, f"redis-server exited: {self.process.returncode}"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case a test paused it
            self.process.kill()
            self.process.wait(timeout=10)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        require(REDIS, "redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(database_url: str, redis_server: RedisServer) -> Settings:
    """Conftest's `client` on SQLite and on PostgreSQL, with its counters in this Redis."""
    return make_settings(database_url, REDIS_URL=redis_server.url, METRICS_ENABLED=True)


async def login(
    client: httpx.AsyncClient, limit_seconds: float = REQUEST_LIMIT_SECONDS
) -> httpx.Response:
    started = time.monotonic()
    response = await client.post(
        f"{API}/auth/login", data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert time.monotonic() - started < limit_seconds
    return response


async def logins_within_one_budget(client: httpx.AsyncClient, count: int) -> None:
    """`count` logins one after the other, together paying at most one storage budget."""
    started = time.monotonic()
    for _ in range(count):
        assert (await login(client)).status_code == 200
    assert time.monotonic() - started < LOGINS_WITHIN_ONE_BUDGET_SECONDS


async def ready(client: httpx.AsyncClient) -> httpx.Response:
    started = time.monotonic()
    response = await client.get("/health/ready")
    assert time.monotonic() - started < REQUEST_LIMIT_SECONDS
    return response


def storage_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "backend.http.ratelimit" and record.levelno == logging.WARNING
    ]


def outage_lines(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    """The "unavailable" and the "available again" lines; none may carry a traceback."""
    warnings = storage_warnings(caplog)
    assert not [record for record in warnings if record.exc_info], "a traceback was logged"
    messages = [record.getMessage() for record in warnings]
    return (
        [message for message in messages if "storage unavailable" in message],
        [message for message in messages if "storage available again" in message],
    )


async def metric(client: httpx.AsyncClient, name: str) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def test_redis_outage_fails_open_and_readiness_degrades(
    client: httpx.AsyncClient, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="backend.http.ratelimit")
    up = await ready(client)
    assert up.status_code == 200
    assert up.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}
    assert (await login(client)).status_code == 200
    assert not storage_warnings(caplog)
    assert await metric(client, "rate_limit_storage_down") == 0

    redis_server.stop()
    await logins_within_one_budget(client, 5)
    started, ended = outage_lines(caplog)
    assert len(started) == 1, started
    assert "(ConnectionError)" in started[0]
    assert not ended
    assert await metric(client, "rate_limit_storage_down") == 1
    # Each login's checks fail open and are counted, though only one line is logged.
    assert await metric(client, "rate_limit_storage_errors_total") >= 5 * 3
    down = await ready(client)
    assert down.status_code == 200
    assert down.json() == {"status": "ok", "checks": {"database": "ok", "redis": "degraded"}}

    redis_server.start()  # the same port: the app reconnects without a restart
    assert (await ready(client)).json()["checks"]["redis"] == "ok"
    started, ended = outage_lines(caplog)
    assert len(started) == 1, started
    assert len(ended) == 1, ended
    assert await metric(client, "rate_limit_storage_down") == 0
    caplog.clear()
    assert (await login(client)).status_code == 200
    assert not storage_warnings(caplog)


async def test_a_hung_redis_costs_logins_one_budget_per_retry_interval(
    client: httpx.AsyncClient, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="backend.http.ratelimit")
    assert (await login(client)).status_code == 200
    redis_server.pause()  # accepts connections, never answers
    try:
        await logins_within_one_budget(client, 5)
        assert await metric(client, "rate_limit_storage_down") == 1
        # Past the interval one check probes the still hung Redis: one budget, again.
        await asyncio.sleep(STORAGE_RETRY_SECONDS)
        await logins_within_one_budget(client, 5)
    finally:
        redis_server.resume()
    started, ended = outage_lines(caplog)
    assert len(started) == 1, started
    assert "(TimeoutError)" in started[0]
    assert not ended

    # No readiness probe here: the logins' own probe finds Redis answering again.
    await asyncio.sleep(STORAGE_RETRY_SECONDS)
    assert (await login(client)).status_code == 200
    started, ended = outage_lines(caplog)
    assert len(started) == 1, started
    assert len(ended) == 1, ended
    assert await metric(client, "rate_limit_storage_down") == 0


async def test_a_hung_redis_cannot_hang_readiness(
    client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    redis_server.pause()  # accepts connections, never answers
    try:
        hung = await ready(client)
    finally:
        redis_server.resume()
    assert hung.status_code == 200
    assert hung.json()["checks"] == {"database": "ok", "redis": "degraded"}
    assert (await ready(client)).json()["checks"]["redis"] == "ok"
