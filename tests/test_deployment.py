"""The deployment files as docs/deployment.md describes them: compose.yml's services and
the settings it gives the app from the .env the page makes, the page's systemd unit, and
the Dockerfile's runtime stage. `.ci/container` builds and runs the image itself; no
engine can pull compose.yml's other images here, so this is what checks that file."""

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer.main
import yaml  # type: ignore[import-untyped]

from backend.cli import app as cli_app
from backend.config import Settings
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, REPO_ROOT
from tests.test_docs_drift import fenced_blocks

PAGE = REPO_ROOT / "docs" / "deployment.md"
COMPOSE = REPO_ROOT / "compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
REQUIRED = ("SECRET_KEY", "POSTGRES_PASSWORD", "FIRST_ADMIN_EMAIL", "FIRST_ADMIN_PASSWORD")

# Compose's interpolation: ${NAME}, ${NAME:-default} (unset or empty), ${NAME:?error}.
VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


class MissingVariableError(Exception):
    pass


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def resolve(match: re.Match[str]) -> str:
        name, kind, argument = match.groups()
        if env.get(name):
            return env[name]
        if kind == "?":
            raise MissingVariableError(argument)
        return argument if kind == "-" else ""

    return VARIABLE.sub(resolve, value)


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def block_containing(marker: str, info: str = "sh") -> str:
    [body] = [
        body for kind, body in fenced_blocks(PAGE.read_text()) if kind == info and marker in body
    ]
    return body


def dotenv_from_the_page(tmp_path: Path, *markers: str) -> dict[str, str]:
    """Run the page's blocks that write .env, in tmp_path, and read the result."""
    for marker in markers:
        script = block_containing(marker)
        subprocess.run(["bash", "-euc", script], cwd=tmp_path, check=True, timeout=30)
    pairs = (line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines())
    return dict(pairs)


def service_settings(
    service: str, env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The settings the app would start with in that service: its environment only."""
    environment = interpolate(compose()["services"][service]["environment"], env)
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, str(value))
    return Settings(_env_file=None)


def test_compose_runs_the_image_with_postgresql_redis_migrate_and_a_mail_catcher() -> None:
    services = compose()["services"]
    assert set(services) == {"db", "redis", "migrate", "app", "mail"}
    # Both run the image of ./Dockerfile; no other image floats on `latest`.
    assert services["app"]["build"] == services["migrate"]["build"] == "."
    assert services["app"]["image"] == services["migrate"]["image"]
    for name in ("db", "redis", "mail"):
        image = services[name]["image"]
        assert ":" in image, image
        assert not image.endswith(":latest"), image
    assert services["migrate"]["command"] == ["migrate"]
    assert "command" not in services["app"]  # the image's: serve --host 0.0.0.0
    assert services["app"]["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"},
        "redis": {"condition": "service_healthy"},
    }
    assert services["migrate"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    for name in ("db", "redis", "app"):
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    assert "/health/ready" in services["app"]["healthcheck"]["test"][-1]
    assert services["mail"]["profiles"] == ["mail"]
    assert [name for name, service in services.items() if "profiles" in service] == ["mail"]


def test_compose_mounts_nothing_from_the_checkout() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert not source.startswith((".", "/", "~")), (name, volume)


@pytest.mark.parametrize("missing", REQUIRED)
def test_compose_stops_naming_each_value_missing_from_env(missing: str, tmp_path: Path) -> None:
    env = dotenv_from_the_page(tmp_path, "cat > .env")
    assert set(env) == set(REQUIRED)
    del env[missing]
    with pytest.raises(MissingVariableError, match=rf"^set {missing} in \.env - "):
        interpolate(compose(), env)


def test_the_env_the_page_makes_is_accepted_by_the_app_and_migrate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = dotenv_from_the_page(tmp_path, "cat > .env")
    app = service_settings("app", env, monkeypatch)
    assert app.STAGE == "production"
    assert app.DATABASE_URL.startswith("postgresql://backend:")
    assert app.DATABASE_URL.endswith("@db:5432/backend")
    assert env["POSTGRES_PASSWORD"] in app.DATABASE_URL
    assert app.REDIS_URL == "redis://redis:6379/0"
    assert app.FIRST_ADMIN_EMAIL == "admin@example.com"
    assert app.SMTP_HOST is None
    migrate = service_settings("migrate", env, monkeypatch)
    assert migrate.DATABASE_URL == app.DATABASE_URL
    assert migrate.FIRST_ADMIN_EMAIL is None  # created by the app, once, at its start-up
    db = interpolate(compose()["services"]["db"]["environment"], env)
    assert db["POSTGRES_PASSWORD"] == env["POSTGRES_PASSWORD"]


def test_the_mail_profile_settings_point_the_app_at_the_catcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = dotenv_from_the_page(tmp_path, "cat > .env", "cat >> .env")
    app = service_settings("app", env, monkeypatch)
    assert app.SMTP_HOST == "mail"
    assert compose()["services"]["mail"]["image"].startswith("axllent/mailpit:")
    assert (app.SMTP_PORT, app.SMTP_TLS) == (1025, "none")  # Mailpit's SMTP port, plain
    assert app.MAIL_FROM is not None
    assert app.PUBLIC_URL == "http://127.0.0.1:8000/admin"


def systemd_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(block_containing("[Service]", info="ini"))
    return unit


def backend_command(line: str) -> tuple[str, dict[str, Any]]:
    """A unit's command line parsed as `backend` parses it (a wrong option raises): the
    command's name and its parameters."""
    executable, *args = shlex.split(line)
    assert executable == "/opt/backend/bin/backend"  # the venv the page makes
    name, *rest = args
    command = typer.main.get_command(cli_app).commands[name]  # type: ignore[attr-defined]
    context = command.make_context(name, rest)
    return name, context.params


def test_the_systemd_unit_runs_backend_as_its_own_user_and_restarts_it() -> None:
    service = systemd_unit()["Service"]
    assert service["User"] == "backend"
    assert service["EnvironmentFile"] == "/etc/backend/env"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    grace = Settings.model_fields["SHUTDOWN_GRACE_SECONDS"].default
    assert int(service["TimeoutStopSec"]) > grace
    assert backend_command(service["ExecStartPre"]) == ("migrate", {})
    assert backend_command(service["ExecStart"]) == (
        "serve",
        {"host": "127.0.0.1", "port": 8000, "workers": 2, "reload": False},
    )


def test_systemd_finds_nothing_wrong_in_the_unit(tmp_path: Path) -> None:
    """systemd's own check of the unit, with the page's venv replaced by this one (it
    insists that the command exists)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "backend.service"
    backend = Path(sys.executable).parent / "backend"
    text = block_containing("[Service]", info="ini")
    unit.write_text(text.replace("/opt/backend/bin/backend", str(backend)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_a_wrong_option_in_a_unit_would_be_caught() -> None:
    with pytest.raises(Exception, match="No such option: --listen"):
        backend_command("/opt/backend/bin/backend serve --listen 0.0.0.0")


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per stage."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    instructions = [line.strip() for line in text.splitlines()]
    stages: list[list[str]] = [[]]
    for line in instructions:
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_the_image_runs_backend_serve_as_pid_1_and_not_as_root() -> None:
    arguments, *_, runtime = dockerfile_stages()
    assert "ARG BASE=python:3.11-slim" in arguments
    assert runtime[0] == "FROM ${BASE}"
    [user] = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert user not in ("root", "0")
    [entrypoint] = [line for line in runtime if line.startswith("ENTRYPOINT ")]
    [command] = [line for line in runtime if line.startswith("CMD ")]
    # The exec form: a JSON list, no shell between the engine's signal and the app.
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["backend"]
    assert json.loads(command.removeprefix("CMD ")) == ["serve", "--host", "0.0.0.0"]  # noqa: S104
    assert "STOPSIGNAL SIGTERM" in runtime
    assert any(line.startswith("HEALTHCHECK ") for line in runtime)
    # Only what the build stages made: nothing installed, so no compiler either.
    assert not [line for line in runtime if re.search(r"apt-get|pip |uv |npm ", line)]


def test_the_build_context_leaves_local_files_out() -> None:
    ignored = set((REPO_ROOT / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv", "**/node_modules", "data", "test-artifacts"} <= ignored


def test_ci_runs_the_container_check() -> None:
    run = (REPO_ROOT / ".ci" / "run").read_text()
    assert "\n.ci/container " in run
    assert run.index(".ci/container") < run.index('step "tests (README: uv run pytest)"')
    assert os.access(REPO_ROOT / ".ci" / "container", os.X_OK)


async def test_behind_a_proxy_that_ends_tls_the_dashboards_cookie_login_needs_cors_origins(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """The app sees http://testserver, as behind a proxy that ends TLS; the browser
    names the public origin, https://testserver, as the page says."""
    login = f"{API}/auth/login?transport=cookie"
    credentials = {"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    browser = {"Origin": "https://testserver", "X-Requested-With": "fetch"}
    refused = await client.post(login, data=credentials, headers=browser)
    assert refused.status_code == 403, refused.text
    settings.CORS_ORIGINS.append("https://testserver")
    admitted = await client.post(login, data=credentials, headers=browser)
    assert admitted.status_code == 200, admitted.text
