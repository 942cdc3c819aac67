"""What test modules share: the test accounts and settings, logging in, bearer headers,
creating users as an admin, a client around an app with its lifespan, and running the
app as a real process. Fixtures built on these live in conftest.py.
"""

import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from backend.config import Settings
from backend.errors import ProblemCode
from backend.http.problems import PROBLEM_JSON, PROBLEM_TYPE_PREFIX

# Fixed, so that tests can sign and read tokens; random, so that the weak-key check passes.
TEST_SECRET_KEY = "DCM6dEF3ZFgTkGZErbgcyXa35HnSOK565EQ0oM2s889Snoz-ZvAlejiBF_Z1abqz"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "Admin-Password-1"
USER_PASSWORD = "User-Password-1"

API = "/api/v1"
REPO_ROOT = Path(__file__).resolve().parent.parent

RegisterUser = Callable[..., Awaitable[dict[str, Any]]]  # the `register` fixture


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "DATABASE_URL": database_url,
        "SECRET_KEY": TEST_SECRET_KEY,
        "STAGE": "test",
        "BCRYPT_ROUNDS": 4,
        "AUTO_MIGRATE": False,
        "FIRST_ADMIN_EMAIL": ADMIN_EMAIL,
        "FIRST_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "CORS_ORIGINS": ["https://dashboard.example.com"],
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


async def post_login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post(f"{API}/auth/login", data={"username": email, "password": password})


async def login(client: httpx.AsyncClient, email: str, password: str) -> dict[str, Any]:
    response = await post_login(client, email, password)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create_user(
    client: httpx.AsyncClient, headers: dict[str, str], **fields: Any
) -> httpx.Response:
    """POST /users with these (admin's) headers; the response, a 201."""
    response = await client.post(f"{API}/users", json=fields, headers=headers)
    assert response.status_code == 201, response.text
    return response


async def check_problem(response: httpx.Response) -> None:
    """Every problem any test sees carries a known code, its type URI, and a code per
    field: run on each response of the clients below (an httpx event hook)."""
    problem_json = response.headers.get("content-type", "").startswith(PROBLEM_JSON)
    if not problem_json or response.request.method == "HEAD":  # HEAD: headers alone
        return
    await response.aread()
    problem = response.json()
    assert problem["code"] in set(ProblemCode), problem
    assert problem["type"] == f"{PROBLEM_TYPE_PREFIX}{problem['code']}", problem
    assert all(error["code"] for error in problem.get("errors") or []), problem


CHECKED = {"response": [check_problem]}


@asynccontextmanager
async def running(
    app: FastAPI, client_host: str = "127.0.0.1", *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """A client for an app of the test's own making, inside that app's lifespan."""
    transport = httpx.ASGITransport(
        app=app, client=(client_host, 1234), raise_app_exceptions=raise_app_exceptions
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=transport, base_url="http://testserver", event_hooks=CHECKED
        ) as client,
    ):
        yield client


# --- the app as a process -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_env(database: Path, **settings: str) -> dict[str, str]:
    """The environment of the app run as a process: a SQLite file, the test accounts,
    nothing inherited but PATH (run it in a folder with no .env to pick up)."""
    return {
        "PATH": os.environ["PATH"],
        "DATABASE_URL": f"sqlite:///{database}",
        "SECRET_KEY": TEST_SECRET_KEY,
        "STAGE": "test",
        "BCRYPT_ROUNDS": "4",
        "FIRST_ADMIN_EMAIL": ADMIN_EMAIL,
        "FIRST_ADMIN_PASSWORD": ADMIN_PASSWORD,
        **settings,
    }


def wait_until_healthy(
    base_url: str, process: subprocess.Popen[bytes], log: Path, seconds: float
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.1)
    pytest.fail(f"the server was not healthy after {seconds} s:\n{log.read_text()}")
