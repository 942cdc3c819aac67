"""What the browser tests share: Debian's headless Chromium, and the app served by uvicorn
as deployed, from a folder with no .env to pick up."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, TEST_SECRET_KEY

CHROMIUM = Path("/usr/bin/chromium")
# What Debian's Chromium needs headless as root; Playwright adds its own flags after these.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    # Port 9 (discard) has no proxy behind it: whatever is not routed here fails at once.
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1;localhost",
]
SERVER_START_SECONDS = 30
# Generous for a loaded 2-core CI machine; a healthy run takes about a second a step.
UI_TIMEOUT_MS = 15_000


def require_chromium() -> Path:
    """Chromium's path; a missing one fails in CI and skips elsewhere."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def served_app(workdir: Path, **environment: str) -> Iterator[int]:
    """The app under uvicorn on 127.0.0.1, on a SQLite file in `workdir`, with a first
    admin; yields its port once it is healthy."""
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "DATABASE_URL": f"sqlite:///{workdir / 'app.db'}",
        "SECRET_KEY": TEST_SECRET_KEY,
        "STAGE": "test",
        "BCRYPT_ROUNDS": "4",
        "FIRST_ADMIN_EMAIL": ADMIN_EMAIL,
        "FIRST_ADMIN_PASSWORD": ADMIN_PASSWORD,
        **environment,
    }
    log_path = workdir / "server.log"
    command = [sys.executable, "-m", "uvicorn", "--factory", "backend.main:served_app"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_healthy(f"http://127.0.0.1:{port}", process, log_path)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_healthy(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    pytest.fail(f"the server was not healthy after {SERVER_START_SECONDS}s:\n{log.read_text()}")
