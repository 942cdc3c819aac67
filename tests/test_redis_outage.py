"""A real Redis outage: the rate limiter fails open and readiness says "degraded".

The test runs its own redis-server on a free loopback port, so killing it never
disturbs the shared one. Outside CI a machine without redis-server skips it.
"""

import logging
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from backend.main import create_app
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    free_port,
    make_settings,
    post_login,
    running,
)
from tests.services import REDIS, require

START_SECONDS = 10.0
REQUEST_LIMIT_SECONDS = 3.0


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
async def api(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        f"sqlite:///{tmp_path / 'redis-outage.db'}", REDIS_URL=redis_server.url, AUTO_MIGRATE=True
    )
    async with running(create_app(settings)) as api_client:
        yield api_client


async def login(client: httpx.AsyncClient) -> httpx.Response:
    started = time.monotonic()
    response = await post_login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    assert time.monotonic() - started < REQUEST_LIMIT_SECONDS
    return response


async def ready(client: httpx.AsyncClient) -> httpx.Response:
    started = time.monotonic()
    response = await client.get("/health/ready")
    assert time.monotonic() - started < REQUEST_LIMIT_SECONDS
    return response


def storage_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "backend.ratelimit" and record.levelno == logging.WARNING
    ]


async def test_redis_outage_fails_open_and_readiness_degrades(
    api: httpx.AsyncClient, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="backend.ratelimit")
    up = await ready(api)
    assert up.status_code == 200
    assert up.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}
    assert (await login(api)).status_code == 200
    assert not storage_warnings(caplog)

    redis_server.stop()
    assert (await login(api)).status_code == 200
    warnings = storage_warnings(caplog)
    assert warnings
    assert "rate-limit storage unavailable; request allowed" in warnings[0].getMessage()
    down = await ready(api)
    assert down.status_code == 200
    assert down.json() == {"status": "ok", "checks": {"database": "ok", "redis": "degraded"}}

    redis_server.start()  # the same port: the app reconnects without a restart
    assert (await ready(api)).json()["checks"]["redis"] == "ok"
    caplog.clear()
    assert (await login(api)).status_code == 200
    assert not storage_warnings(caplog)


async def test_a_hung_redis_cannot_hang_readiness(
    api: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    redis_server.pause()  # accepts connections, never answers
    try:
        hung = await ready(api)
    finally:
        redis_server.resume()
    assert hung.status_code == 200
    assert hung.json()["checks"] == {"database": "ok", "redis": "degraded"}
    assert (await ready(api)).json()["checks"]["redis"] == "ok"
