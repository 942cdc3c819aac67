"""`backend openapi` prints, without a server, the document `backend serve` answers at
/api/v1/openapi.json; with `--defaults`, the one clients/typescript is generated from."""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import API, REPO_ROOT, free_port, server_env, wait_until_healthy

BACKEND = str(Path(sys.executable).parent / "backend")
COMMITTED = REPO_ROOT / "clients" / "typescript" / "openapi.json"
# Settings that change the document: its title, a path prefix, a schema's minLength.
ENVIRONMENT = {"PROJECT_NAME": "Renamed API", "PASSWORD_MIN_LENGTH": "16"}
DOTENV = "API_V1_PREFIX=/v2\n"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / ".env").write_text(DOTENV)
    return tmp_path


def openapi_command(workdir: Path, *args: str) -> dict[str, Any]:
    environment = server_env(workdir / "unused.db", **ENVIRONMENT)
    result = subprocess.run(
        [BACKEND, "openapi", *args],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.fixture
def served(workdir: Path) -> Iterator[str]:
    """The base URL of `backend serve` in that folder, with the same environment."""
    port = free_port()
    log = workdir / "server.log"
    environment = {**server_env(workdir / "served.db", **ENVIRONMENT), "LOG_LEVEL": "WARNING"}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [BACKEND, "serve", "--port", str(port)],
            cwd=workdir,
            env=environment,
            stdout=output,
            stderr=output,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base_url, process, log, 60)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_prints_the_document_the_server_answers_with_the_same_settings(
    workdir: Path, served: str
) -> None:
    answered = httpx.get(f"{served}/v2/openapi.json", timeout=10)
    assert answered.status_code == 200, answered.text
    printed = openapi_command(workdir)
    assert printed == answered.json()
    # The environment and .env were both read, as `serve` reads them.
    assert printed["info"]["title"] == "Renamed API"
    assert "/v2/users" in printed["paths"]


def test_defaults_ignore_the_environment_and_dotenv_and_match_the_typescript_client(
    workdir: Path,
) -> None:
    shipped = openapi_command(workdir, "--defaults")
    assert shipped["info"]["title"] == "Users API"
    assert f"{API}/users" in shipped["paths"]
    assert shipped != openapi_command(workdir)
    assert json.loads(COMMITTED.read_text()) == shipped, (
        "clients/typescript/openapi.json is not the API's document: regenerate it with "
        "(cd clients/typescript && npm ci && npm run generate) and commit both files"
    )
