"""Start and stop the servers under test, talk to them, read their workers' memory."""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from backend.config import PRODUCTION_BCRYPT_ROUNDS
from bench.harness import REPO

# uvicorn arguments naming each server: the app is built by its factory.
APP = "--factory backend.main:served_app"
BARE = "bench.bare:app"
PEER = "--factory bench.peers.fastapi_users_app:create_app"
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 10
HTTP_TIMEOUT_SECONDS = 30


def server_env(database_url: str, **settings: object) -> dict[str, str]:
    """The app's settings, which the bare server reads too: production, no rate limit.

    `settings` add to them or override them, e.g. BCRYPT_ROUNDS=8. Production refuses a
    cost that low, so such a run is staging, which differs from production in nothing
    else.
    """
    rounds = int(str(settings.get("BCRYPT_ROUNDS", PRODUCTION_BCRYPT_ROUNDS)))
    stage = "production" if rounds >= PRODUCTION_BCRYPT_ROUNDS else "staging"
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        # Random per call: a bench run calls this once, so a token works on all its servers.
        "SECRET_KEY": secrets.token_urlsafe(48),
        "STAGE": stage,
        "AUTO_MIGRATE": "false",  # the database is migrated once, before any server starts
        "RATE_LIMIT_ENABLED": "false",
        # The app's own line per request is its access log: off, like uvicorn's.
        "LOG_LEVEL": "WARNING",
        **{name: str(value) for name, value in settings.items()},
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    workers: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        if self.workers == 1:
            # taskset execs python, and one uvicorn worker serves in the process itself.
            return [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = [int(pid) for pid in children.read_text().split()]
        # The supervisor's other child is multiprocessing's resource tracker.
        return [pid for pid in pids if b"spawn_main" in cmdline(pid)]

    def stop(self) -> None:
        """SIGTERM to the server's process group (it has its own), SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@cache
def compile_bytecode(app_dir: Path) -> None:
    """Write the bytecode caches of the installed packages and of the code under test.

    An install from a wheel has them (pip compiles at install time), but uv installs
    without them, and under PYTHONDONTWRITEBYTECODE (set on this machine) no server ever
    writes them: every worker then compiled each module from source at start-up, which
    left 5.3 MB more in the app worker's idle VmRSS (bench/README.md, Memory) and slowed
    its start. Once written, a later call only compares timestamps (about 2 s).
    """
    folders = {sysconfig.get_paths()[name] for name in ("purelib", "platlib")}
    folders |= {str(app_dir / "backend"), str(app_dir / "bench")}
    # Not checked: a few packages ship test data that is not valid Python 3.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", *sorted(folders)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )


def start_server(
    name: str,
    target: str,
    *,
    env: dict[str, str],
    cores: str,
    workers: int,
    work_dir: Path,
    app_dir: Path = REPO,
) -> Server:
    """Start uvicorn with the same flags for app and bare; return once /health answers.

    The access log is off for both: it is a deployment choice that would cost both the
    same per-request write, and the comparison is about the code behind the route.
    The working directory is bench/.work so that a developer's .env is not read.
    """
    compile_bytecode(app_dir)
    port = free_port()
    log = work_dir / f"{name}-{workers}w.log"
    command = ["taskset", "-c", cores, sys.executable, "-m", "uvicorn", *target.split()]
    # app_dir first on sys.path: another checkout's code (bench/compare.py) wins over ours.
    command += ["--app-dir", str(app_dir), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers), "--loop", "uvloop", "--http", "httptools"]
    command += ["--no-access-log", "--log-level", "warning"]
    # Client addresses are the app's to work out (TRUSTED_PROXIES), never uvicorn's.
    command += ["--no-proxy-headers"]
    # No server under test has a WebSocket route; uvicorn's default (auto) imports the
    # websockets library into the worker anyway (0.7 MB of its idle memory).
    command += ["--ws", "none"]
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=work_dir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Its own process group: Ctrl-C reaches only the harness, which stops it in order.
            start_new_session=True,
        )
    server = Server(name=name, process=process, port=port, workers=workers, log=log)
    try:
        wait_until_healthy(server)
    except BaseException:
        server.stop()
        raise
    return server


def wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode} at start-up:\n"
                + server.log.read_text(errors="replace")[-3000:]
            )
        try:
            status, _, _ = request("GET", f"{server.url}/health", timeout=1)
            # Every worker must be up before a load starts, not just the first one.
            if status == 200 and len(server.worker_pids()) == server.workers:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} did not answer /health within {START_TIMEOUT_SECONDS} s")


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:  # it has just exited
        return b""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def request(
    method: str,
    url: str,
    *,
    token: str | None = None,
    form: dict[str, str] | None = None,
    json_body: Any = None,
    timeout: float = HTTP_TIMEOUT_SECONDS,
) -> tuple[int, Any, dict[str, str]]:
    """One HTTP request from the harness itself (set-up and checks, never load).

    Returns the status, the decoded JSON body and the headers (lower-case names).
    """
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"the harness only talks to this machine, not {url}")
    headers = {"Accept": "application/json"}
    data = None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif json_body is not None:
        data = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    # S310: the URL was checked above to be http://127.0.0.1:...
    prepared = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(prepared, timeout=timeout) as response:  # noqa: S310
            status, body, headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        status, body, headers = error.code, error.read(), dict(error.headers)
    names = {name.lower(): value for name, value in headers.items()}
    return status, json.loads(body) if body else None, names


def login(server: Server, email: str, password: str) -> dict[str, Any]:
    status, body, _ = request(
        "POST",
        f"{server.url}/api/v1/auth/login",
        form={"username": email, "password": password},
    )
    if status != 200:
        raise RuntimeError(f"login to {server.name} as {email} answered {status}: {body}")
    assert isinstance(body, dict)
    return body
