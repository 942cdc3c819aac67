"""A client generated from our OpenAPI schema by a real generator logs in and lists users.

openapi-python-client runs in a throw-away environment of its own (`uv tool run`): it
requires typer<0.28, which this project has outgrown, so it cannot be a dev dependency.
It is pinned to 0.27.1 because 0.28.0 to 0.29.1 write a login module that fails to
import (`Unset` undefined for a required body offered as form and as JSON:
openapi-python-client issue 1451). The generated code needs httpx, attrs and
python-dateutil, which are dev dependencies.
"""

import importlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from backend.main import create_app
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, RegisterUser, make_settings

GENERATOR = "openapi-python-client==0.27.1"
PACKAGE = "users_api_client"
BASE_URL = "http://testserver"


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # The schema does not depend on the database; no connection is made here.
    settings = make_settings(f"sqlite:///{tmp_path_factory.mktemp('schema') / 'unused.db'}")
    return create_app(settings).openapi()


@pytest.fixture(scope="module")
def generated(
    schema: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str]]:
    """The generated package's folder (importable) and what the generator printed."""
    work = tmp_path_factory.mktemp("generated")
    spec = work / "openapi.json"
    spec.write_text(json.dumps(schema))
    command = [
        *("uv", "tool", "run", "--from", GENERATOR, "openapi-python-client", "generate"),
        *("--path", str(spec), "--meta", "none", "--output-path", str(work / PACKAGE)),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    sys.path.insert(0, str(work))
    try:
        yield work / PACKAGE, output
    finally:
        sys.path.remove(str(work))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def generated_module(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_the_generator_skips_nothing_and_names_modules_after_operation_ids(
    schema: dict[str, Any], generated: tuple[Path, str]
) -> None:
    package, output = generated
    # It says "WARNING parsing GET /path ... Endpoint will not be generated" when it skips.
    assert not re.search(r"warning|unable to parse", output, re.IGNORECASE), output
    operations = [
        operation
        for path in schema["paths"].values()
        for operation in path.values()
        if isinstance(operation, dict) and "operationId" in operation
    ]
    assert operations
    for operation in operations:
        tag = operation["tags"][0]
        module = operation["operationId"].replace("-", "_")
        # tag_action, e.g. users_list: never FastAPI's list_users_api_v1_users_get.
        assert re.fullmatch(rf"{tag}(_[a-z]+)+", module), module
        assert (package / "api" / tag / f"{module}.py").is_file(), module


async def test_the_generated_client_logs_in_and_lists_users(
    app: FastAPI, register: RegisterUser, generated: tuple[Path, str]
) -> None:
    await register(email="grace@example.com", name="Grace Hopper")
    client = generated_module("client")
    models = generated_module("models")
    auth_login = generated_module("api.auth.auth_login")
    users_list = generated_module("api.users.users_list")
    transport = {"transport": httpx.ASGITransport(app=app)}

    async with client.Client(
        base_url=BASE_URL, httpx_args=transport, raise_on_unexpected_status=True
    ) as anonymous:
        refused = await auth_login.asyncio(
            client=anonymous,
            body=models.AuthLoginDataBody(username=ADMIN_EMAIL, password="Wrong-Password-1"),
        )
        tokens = await auth_login.asyncio(
            client=anonymous,
            body=models.AuthLoginDataBody(username=ADMIN_EMAIL, password=ADMIN_PASSWORD),
        )
    assert isinstance(refused, models.LoginProblem)  # a Problem that may carry mfa_token
    assert refused.status == 401
    assert isinstance(tokens, models.LoginResponse), tokens
    assert tokens.user.role == models.UserRole.ADMIN

    async with client.AuthenticatedClient(
        base_url=BASE_URL,
        token=tokens.access_token,
        httpx_args=transport,
        raise_on_unexpected_status=True,
    ) as authenticated:
        everyone = await users_list.asyncio(client=authenticated, sort="email")
        first_page = await users_list.asyncio_detailed(client=authenticated, per_page=1)
    assert [user.email for user in everyone] == [ADMIN_EMAIL, "grace@example.com"]
    assert [user.role for user in everyone] == [models.UserRole.ADMIN, models.UserRole.USER]
    assert len(first_page.parsed) == 1
    assert first_page.headers["X-Total-Count"] == "2"
