"""What the browser tests share: Debian's headless Chromium, and the app served by uvicorn
as deployed, from a folder with no .env to pick up."""

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import free_port, server_env, wait_until_healthy
from tests.services import CHROMIUM as CHROMIUM_SERVICE
from tests.services import require

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
        require(CHROMIUM_SERVICE, f"{CHROMIUM} is missing")
    return CHROMIUM


@contextmanager
def served_app(workdir: Path, port: int | None = None, **environment: str) -> Iterator[int]:
    """The app under uvicorn on 127.0.0.1, on a SQLite file in `workdir`, with a first
    admin; yields its port once it is healthy. A `port` chosen beforehand lets settings
    name the app's own address (PUBLIC_URL)."""
    port = port or free_port()
    env = server_env(workdir / "app.db", **environment)
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
        wait_until_healthy(f"http://127.0.0.1:{port}", process, log_path, SERVER_START_SECONDS)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
