"""Graceful shutdown: SIGTERM to `backend serve` while slow requests are in flight.

Every request already being handled must get its answer, the lifespan shutdown (which
closes the pool) must run, and the process must exit 0 within SHUTDOWN_GRACE_SECONDS.
Requests still running when that runs out get 503 problem+json, not a bare 500.
"""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlmodel import SQLModel

from backend.db.engine import create_engine
from backend.mail import MAIL_SENDERS
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    TEST_SECRET_KEY,
    free_port,
    make_settings,
    wait_until_healthy,
)
from tests.smtp import mail_settings, silent_server

GRACE_SECONDS = 20
# The 16 queued hashes take ~5 s, so past this grace most of them are still running.
SHORT_GRACE_SECONDS = 1
REQUESTS = 16
START_SECONDS = 30.0
# One bcrypt check at this cost takes ~0.3 s and only one runs at a time, so the
# requests queue up and stay in flight for a couple of seconds.
BCRYPT_ROUNDS = 12


class Server:
    def __init__(
        self, workdir: Path, grace_seconds: int, database_url: str, **settings: str
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "server.log"
        env = {
            "PATH": os.environ["PATH"],
            "DATABASE_URL": database_url,
            "SECRET_KEY": TEST_SECRET_KEY,
            "STAGE": "test",
            "BCRYPT_ROUNDS": str(BCRYPT_ROUNDS),
            "HASH_CONCURRENCY": "1",
            "HASH_QUEUE_LIMIT": str(REQUESTS * 2),
            # Every login admitted, however long its hash waits: these tests are about
            # requests in flight at SIGTERM, not about refusing them before.
            "LOGIN_MAX_WAIT_SECONDS": "60",
            "RATE_LIMIT_ENABLED": "false",
            "FIRST_ADMIN_EMAIL": ADMIN_EMAIL,
            "FIRST_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "SHUTDOWN_GRACE_SECONDS": str(grace_seconds),
            "METRICS_ENABLED": "true",
            **settings,
        }
        command = [str(Path(sys.executable).parent / "backend"), "serve", "--port", str(self.port)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log.read_text()

    def wait_until_healthy(self) -> None:
        wait_until_healthy(self.base_url, self.process, self.log, START_SECONDS)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_server(
    workdir: Path, grace_seconds: int, database_url: str, **settings: str
) -> Iterator[Server]:
    server = Server(workdir, grace_seconds, database_url, **settings)  # in a folder with no .env
    try:
        server.wait_until_healthy()
        yield server
    finally:
        server.kill()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    yield from start_server(tmp_path, GRACE_SECONDS, f"sqlite:///{tmp_path / 'shutdown.db'}")


@pytest.fixture
def impatient_server(tmp_path: Path, database_url: str) -> Iterator[Server]:
    """On SQLite and on PostgreSQL, emptied first: the first admin it creates must have a
    hash at this server's BCRYPT_ROUNDS, or the logins would not be slow."""
    asyncio.run(empty_tables(database_url))
    yield from start_server(tmp_path, SHORT_GRACE_SECONDS, database_url)


async def empty_tables(database_url: str) -> None:
    engine = create_engine(make_settings(database_url))
    try:
        async with engine.begin() as connection:
            for table in reversed(SQLModel.metadata.sorted_tables):
                await connection.execute(table.delete())
    finally:
        await engine.dispose()


def logins_cut_by_sigterm(server: Server) -> tuple[list[httpx.Response | str], int, float]:
    """SIGTERM while REQUESTS slow logins are queued: each one's response (or the name of
    its transport error), how many were in flight at SIGTERM, and seconds to exit."""
    sent = threading.Semaphore(0)
    finished: list[httpx.Response | str] = []

    def slow_login() -> httpx.Response | str:
        # A connection of its own: no reused keep-alive connection the server may close.
        with httpx.Client(base_url=server.base_url, timeout=GRACE_SECONDS + 10) as client:
            sent.release()
            try:
                outcome: httpx.Response | str = client.post(
                    f"{API}/auth/login",
                    data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
                )
            except httpx.TransportError as error:  # a reset or refused connection
                outcome = type(error).__name__
        finished.append(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        futures = [pool.submit(slow_login) for _ in range(REQUESTS)]
        for _ in range(REQUESTS):
            assert sent.acquire(timeout=10)
        wait_until_queued(server, lambda: REQUESTS - len(finished))
        in_flight = REQUESTS - len(finished)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        outcomes = [future.result(timeout=GRACE_SECONDS + 15) for future in futures]
    try:
        server.process.wait(timeout=GRACE_SECONDS + 10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {GRACE_SECONDS + 10} s after SIGTERM:\n{server.output()}")
    return outcomes, in_flight, time.monotonic() - signalled


def wait_until_queued(server: Server, unfinished: Callable[[], int]) -> None:
    """Until every unfinished login is in the app, hashing or queued for its hash: one
    still in the listen backlog at SIGTERM would be reset, not answered."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{server.base_url}/metrics", timeout=5).text
        depth = next(
            float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("password_hash_queue_depth ")
        )
        if depth + 1 >= unfinished():  # one hashing (HASH_CONCURRENCY), the rest queued
            return
        time.sleep(0.05)
    pytest.fail(f"the logins did not all reach the server:\n{server.output()}")


def status_of(outcome: httpx.Response | str) -> int | str:
    return outcome.status_code if isinstance(outcome, httpx.Response) else outcome


def test_sigterm_lets_in_flight_requests_finish_and_exits_0(server: Server) -> None:
    outcomes, in_flight, exit_seconds = logins_cut_by_sigterm(server)
    statuses = [status_of(outcome) for outcome in outcomes]
    exit_code = server.process.returncode
    log = server.output()
    print(
        f"\n{in_flight} of {REQUESTS} logins in flight at SIGTERM; outcomes {statuses}; "
        f"exit code {exit_code} {exit_seconds:.2f} s after SIGTERM"
    )

    assert in_flight >= REQUESTS // 4, "too few requests were still in flight at SIGTERM"
    assert statuses == [200] * REQUESTS, log
    assert exit_code == 0, log
    assert exit_seconds < GRACE_SECONDS, log
    assert "Waiting for application shutdown." in log
    assert "Application shutdown complete." in log
    assert "Finished server process" in log
    assert "Traceback" not in log, log


def test_requests_past_the_grace_period_get_503_problems(impatient_server: Server) -> None:
    outcomes, in_flight, exit_seconds = logins_cut_by_sigterm(impatient_server)
    statuses = [status_of(outcome) for outcome in outcomes]
    exit_code = impatient_server.process.returncode
    log = impatient_server.output()
    print(
        f"\n{in_flight} of {REQUESTS} logins in flight at SIGTERM; outcomes {statuses}; "
        f"exit code {exit_code} {exit_seconds:.2f} s after SIGTERM"
    )

    cut = [o for o in outcomes if isinstance(o, httpx.Response) and o.status_code == 503]
    assert len(cut) >= REQUESTS // 4, log
    assert set(statuses) <= {200, 503}, log
    for response in cut:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"].isdigit()
        assert response.headers["x-request-id"]
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"
        problem = response.json()
        assert problem["status"] == 503
        assert problem["request_id"] == response.headers["x-request-id"]
    assert exit_code == 0, log
    assert "Application shutdown complete." in log
    assert "Traceback" not in log, log
    assert "Exception in ASGI application" not in log, log
    counted = [line for line in log.splitlines() if "requests cut off" in line]
    assert len(counted) == 1, log
    assert f": {len(cut)} requests cut off, answered 503" in counted[0], log


MAILS = 10


def test_sigterm_with_mail_hanging_exits_within_the_grace_period(
    tmp_path: Path, database_url: str
) -> None:
    """Mail queued and being sent to a server that never answers, with an SMTP timeout
    far past the grace period: the process still exits 0 within it, and says what it
    did not send."""
    asyncio.run(empty_tables(database_url))
    with silent_server() as port:
        mail = {key: str(value) for key, value in mail_settings(port).items()}
        mail["SMTP_TIMEOUT_SECONDS"] = "60"
        for server in start_server(tmp_path, SHORT_GRACE_SECONDS, database_url, **mail):
            queue_mail_that_hangs(server)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running 30 s after SIGTERM:\n{server.output()}")
            exit_seconds = time.monotonic() - signalled
            log = server.output()
    print(f"\nexit code {server.process.returncode} {exit_seconds:.2f} s after SIGTERM")
    assert server.process.returncode == 0, log
    # The mail gets the grace period; the rest of the shutdown well under a second.
    assert exit_seconds < SHORT_GRACE_SECONDS + 3, log
    assert f"mail cut off at shutdown: {MAILS} mails not sent, 0 look-ups stopped" in log
    assert "Traceback" not in log, log


MIDDLE_GRACE_SECONDS = 3


def test_requests_and_mail_share_one_grace_period(tmp_path: Path) -> None:
    """Slow logins in flight past the grace period and mail hanging: the mail gets what is
    left of the grace period once the requests are cut off, not a grace period of its own
    after theirs, so the process exits within about one. (On SQLite only: the shutdown's
    timing does not depend on the database, which the other tests here show.)"""
    database_url = f"sqlite:///{tmp_path / 'shutdown.db'}"
    with silent_server() as port:
        mail = {key: str(value) for key, value in mail_settings(port).items()}
        mail["SMTP_TIMEOUT_SECONDS"] = "60"
        for server in start_server(tmp_path, MIDDLE_GRACE_SECONDS, database_url, **mail):
            queue_mail_that_hangs(server)
            outcomes, _, exit_seconds = logins_cut_by_sigterm(server)
            log = server.output()
    statuses = [status_of(outcome) for outcome in outcomes]
    print(f"\noutcomes {statuses}; exit {exit_seconds:.2f} s after SIGTERM")
    assert server.process.returncode == 0, log
    assert 503 in statuses, log  # the logins did outlast the grace period
    # One grace period and the rest of the shutdown; two would be over 6 s.
    assert exit_seconds < MIDDLE_GRACE_SECONDS + 2, log
    assert f"mail cut off at shutdown: {MAILS} mails not sent, 0 look-ups stopped" in log


def queue_mail_that_hangs(server: Server) -> None:
    """MAILS reset mails asked for, until four are being sent and the rest wait."""
    for _ in range(MAILS):
        forgot = httpx.post(
            f"{server.base_url}{API}/auth/password/forgot",
            json={"email": ADMIN_EMAIL},
            timeout=10,
        )
        assert forgot.status_code == 202
    wait_until_mail_waits(server, MAILS - MAIL_SENDERS)


def wait_until_mail_waits(server: Server, queued: int) -> None:
    """Until the look-ups are done and their mail waits: `queued` in the queue, the rest
    being sent."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{server.base_url}/metrics", timeout=5).text
        if f"mail_queue_depth {float(queued)}" in metrics.splitlines():
            return
        time.sleep(0.05)
    pytest.fail(f"the mail did not queue:\n{server.output()}")
