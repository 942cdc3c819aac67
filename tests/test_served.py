"""The app as a server process, started both documented ways: `backend serve`, and plain
`uvicorn --factory backend.main:served_app` with none of its flags but
`--no-server-header` (the careless way: uvicorn's access log and proxy headers on).
Either way the logs hold no secret, the client cannot pick its rate-limit key with
X-Forwarded-For, and a database that cannot be used stops start-up with one line."""

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar
from unittest.mock import patch

import httpx
import pytest

from backend.db.migrate import upgrade_to_head
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    TEST_SECRET_KEY,
    free_port,
    make_settings,
    wait_until_healthy,
)
from tests.postgres import Server, session_database

START_SECONDS = 60.0
BIN = Path(sys.executable).parent
COMMANDS = {
    "backend serve": [str(BIN / "backend"), "serve", "--port"],
    "uvicorn": [
        *(sys.executable, "-m", "uvicorn", "--factory", "backend.main:served_app"),
        *("--no-server-header", "--port"),
    ],
}


class ServerProcess:
    """A server started in an empty folder (no .env), its stdout and stderr in files."""

    commands: ClassVar[dict[str, list[str]]] = COMMANDS

    def __init__(self, how: str, workdir: Path, **env: str) -> None:
        self.how = how
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.stdout, self.stderr = workdir / "stdout.log", workdir / "stderr.log"
        environment = {
            "PATH": os.environ["PATH"],
            "DATABASE_URL": f"sqlite:///{workdir / 'served.db'}",
            "SECRET_KEY": TEST_SECRET_KEY,
            "STAGE": "test",
            "BCRYPT_ROUNDS": "4",
            "LOG_LEVEL": "DEBUG",
            "FIRST_ADMIN_EMAIL": ADMIN_EMAIL,
            "FIRST_ADMIN_PASSWORD": ADMIN_PASSWORD,
            **env,
        }
        with self.stdout.open("wb") as stdout, self.stderr.open("wb") as stderr:
            self.process = subprocess.Popen(
                [*self.commands[how], str(self.port)],
                cwd=workdir,
                env=environment,
                stdout=stdout,
                stderr=stderr,
            )

    def output(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()

    def wait_until_healthy(self) -> None:
        wait_until_healthy(self.base_url, self.process, self.stderr, START_SECONDS)

    def exit_code(self) -> int:
        return self.process.wait(timeout=START_SECONDS)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module", params=list(COMMANDS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = ServerProcess(request.param, tmp_path_factory.mktemp("served"))
    try:
        server.wait_until_healthy()
        yield server
    finally:
        server.stop()


def test_no_server_banner(server: ServerProcess) -> None:
    response = httpx.get(f"{server.base_url}/health")
    assert response.status_code == 200
    assert "server" not in response.headers, server.how


def test_no_password_or_token_reaches_any_log_line(server: ServerProcess) -> None:
    secrets = ["Body-Secret-Pass-7", "Header-Secret-Pass-8", "Query-Secret-Pass-9"]
    with httpx.Client(base_url=server.base_url) as client:
        registered = client.post(
            f"{API}/auth/register",
            json={"email": "logs@example.com", "name": "Logs", "password": secrets[0]},
        ).json()
        access, refresh = registered["access_token"], registered["refresh_token"]
        query = {"password": secrets[2], "access_token": access, "refresh_token": refresh}
        headers = {"Authorization": f"Bearer {access}", "X-Password": secrets[1]}
        requests = [
            client.get(f"{API}/users/me", params=query, headers=headers),
            client.post(
                f"{API}/auth/login",
                params=query,
                headers={"X-Password": secrets[1], "Cookie": f"session={access}"},
                json={"email": "logs@example.com", "password": secrets[0]},
            ),
            client.post(
                f"{API}/auth/login", data={"username": "x@example.com", "password": refresh}
            ),
            client.post(f"{API}/auth/refresh", params=query, json={"refresh_token": refresh}),
        ]
    assert [response.status_code for response in requests] == [200, 200, 401, 200]
    time.sleep(0.5)  # the last lines reach the files
    output = server.output()
    for secret in [*secrets, access, refresh]:
        assert secret not in output
    assert "$2b$" not in output, "a bcrypt hash (a bound SQL value) is logged"
    access_lines = [json.loads(line) for line in output.splitlines() if '"backend.access"' in line]
    api_lines = [line for line in access_lines if line["route"] != "/health"]
    assert len(api_lines) == 1 + len(requests), output  # ours, once per request
    assert "HTTP/1.1" not in output, "uvicorn's own access line is written"


def test_rotating_x_forwarded_for_does_not_escape_the_limit(server: ServerProcess) -> None:
    # RATE_LIMIT_LOGIN is 10/minute per address and email; every address is forged.
    with httpx.Client(base_url=server.base_url) as client:
        statuses = [
            client.post(
                f"{API}/auth/login",
                data={"username": "target@example.com", "password": "Wrong-Password-1"},
                headers={"X-Forwarded-For": f"203.0.113.{number}"},
            ).status_code
            for number in range(12)
        ]
    assert statuses == [401] * 10 + [429] * 2


@pytest.mark.parametrize("how", list(COMMANDS))
def test_an_unreachable_database_stops_start_up_with_one_line(how: str, tmp_path: Path) -> None:
    unused_port = free_port()
    server = ServerProcess(
        how,
        tmp_path,
        DATABASE_URL=f"postgresql://user:Db-Secret-1@127.0.0.1:{unused_port}/app",
        AUTO_MIGRATE="true",
    )
    try:
        exit_code = server.exit_code()
    finally:
        server.stop()
    output = server.output()
    assert exit_code != 0, output
    failures = [line for line in output.splitlines() if "DATABASE_URL" in line]
    assert len(failures) == 1, output
    assert f"cannot use the database at 127.0.0.1:{unused_port}/app" in failures[0]
    assert "Traceback" not in output
    assert "Db-Secret-1" not in output
    assert len(output.splitlines()) <= 5, output


def test_backend_serve_with_several_workers_starts_them_all(
    postgres: Server, tmp_path: Path
) -> None:
    """`backend serve --workers 2` on PostgreSQL: both workers start and stay up. (On a
    busy machine uvicorn's supervisor killed each worker before it had imported the
    app, silently, one after another.)"""
    with session_database(postgres) as url:
        asyncio.run(upgrade_to_head(make_settings(url)))
        command = [str(BIN / "backend"), "serve", "--workers", "2", "--port"]
        with patch.dict(ServerProcess.commands, {"workers": command}):
            server = ServerProcess("workers", tmp_path, DATABASE_URL=url, LOG_LEVEL="INFO")
        try:
            server.wait_until_healthy()
            deadline = time.monotonic() + START_SECONDS
            while server.output().count("Application startup complete") < 2:
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.2)
            assert httpx.get(f"{server.base_url}/health/ready").status_code == 200
        finally:
            server.stop()
        assert "died" not in server.output()
