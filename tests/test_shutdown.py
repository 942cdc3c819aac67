"""Graceful shutdown: SIGTERM to `backend serve` while slow requests are in flight.

Every request already being handled must get its answer, the lifespan shutdown (which
closes the pool) must run, and the process must exit 0 within SHUTDOWN_GRACE_SECONDS.
"""

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    free_port,
    server_env,
    wait_until_healthy,
)

GRACE_SECONDS = 20
REQUESTS = 16
START_SECONDS = 30.0
# One bcrypt check at this cost takes ~0.3 s and only one runs at a time, so the
# requests queue up and stay in flight for a couple of seconds.
BCRYPT_ROUNDS = 12


class Server:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "server.log"
        env = server_env(
            workdir / "shutdown.db",
            BCRYPT_ROUNDS=str(BCRYPT_ROUNDS),
            HASH_CONCURRENCY="1",
            HASH_QUEUE_LIMIT=str(REQUESTS * 2),
            RATE_LIMIT_ENABLED="false",
            SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS),
        )
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


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path)  # in a folder with no .env to pick up
    try:
        server.wait_until_healthy()
        yield server
    finally:
        server.kill()


def test_sigterm_lets_in_flight_requests_finish_and_exits_0(server: Server) -> None:
    sent = threading.Semaphore(0)
    finished: list[int | str] = []

    def slow_login() -> int | str:
        # A connection of its own: no reused keep-alive connection the server may close.
        with httpx.Client(base_url=server.base_url, timeout=GRACE_SECONDS + 10) as client:
            sent.release()
            try:
                response = client.post(
                    f"{API}/auth/login",
                    data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
                )
            except httpx.TransportError as error:  # a reset or refused connection
                outcome: int | str = type(error).__name__
            else:
                outcome = response.status_code
        finished.append(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        futures = [pool.submit(slow_login) for _ in range(REQUESTS)]
        for _ in range(REQUESTS):
            assert sent.acquire(timeout=10)
        time.sleep(0.5)  # every request reaches the server and queues for its hash
        in_flight = REQUESTS - len(finished)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        outcomes = [future.result(timeout=GRACE_SECONDS + 15) for future in futures]
    try:
        exit_code = server.process.wait(timeout=GRACE_SECONDS + 10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {GRACE_SECONDS + 10} s after SIGTERM:\n{server.output()}")
    exit_seconds = time.monotonic() - signalled
    log = server.output()
    print(
        f"\n{in_flight} of {REQUESTS} logins in flight at SIGTERM; outcomes {outcomes}; "
        f"exit code {exit_code} {exit_seconds:.2f} s after SIGTERM"
    )

    assert in_flight >= REQUESTS // 4, "too few requests were still in flight at SIGTERM"
    assert outcomes == [200] * REQUESTS, log
    assert exit_code == 0, log
    assert exit_seconds < GRACE_SECONDS, log
    assert "Waiting for application shutdown." in log
    assert "Application shutdown complete." in log
    assert "Finished server process" in log
    assert "Traceback" not in log, log
