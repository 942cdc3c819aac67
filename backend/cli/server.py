"""`backend serve`, `migrate`, `openapi` and `create-admin`."""

import asyncio
import json
import signal
from typing import Annotated

import typer
import uvicorn
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.auth import accounts
from backend.cli.common import app, exit_with, hasher, user_create, with_db
from backend.config import Settings, get_settings
from backend.db.engine import DatabaseStartupError
from backend.db.migrate import upgrade_to_head
from backend.http.connections import ReadDeadlineProtocol
from backend.http.observability import configure_logging
from backend.main import create_app
from backend.models import UserRole


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one).")
    ] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (PostgreSQL for >1).")] = 1,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
) -> None:
    """Serve the API (docs at http://HOST:PORT/docs)."""
    settings = get_settings()  # fails here, in one line, on a bad configuration
    problem = settings.workers_problem(workers)
    if problem:
        typer.echo(problem, err=True)
        raise typer.Exit(code=2)
    configure_logging(settings)

    def exit_cleanly(_signal: int, _frame: object) -> None:
        raise SystemExit(0)

    # On SIGTERM uvicorn stops accepting, lets in-flight requests finish (for at most
    # SHUTDOWN_GRACE_SECONDS), runs the lifespan shutdown, then raises the signal again
    # for the previous handler: this one, so that a graceful stop exits 0, not 143.
    previous_handler = signal.signal(signal.SIGTERM, exit_cleanly)
    try:
        uvicorn.run(
            "backend.main:served_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            reload=reload,
            # Client addresses come from TRUSTED_PROXIES (backend/http/ratelimit.py) only.
            proxy_headers=False,
            # httptools, as uvicorn would pick, with deadlines for slow clients' requests.
            http=ReadDeadlineProtocol,
            # The API has no WebSocket route; uvicorn's default would import the
            # websockets library into every worker anyway (0.7 MB of its memory).
            ws="none",
            # No `server: uvicorn`: the stack is nobody's business but ours.
            server_header=False,
            timeout_graceful_shutdown=settings.SHUTDOWN_GRACE_SECONDS,
            # Our logging: one configuration, and one line per request of our own.
            log_config=None,
            access_log=False,
        )
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


@app.command()
def migrate() -> None:
    """Upgrade the database schema to the newest migration."""

    try:
        before, after = asyncio.run(upgrade_to_head(get_settings()))
    except DatabaseStartupError as error:
        exit_with(error)
    if before == after:
        typer.echo(f"Nothing to do: the database is at the newest migration ({after}).")
    else:
        typer.echo(f"Migrated the database from {before or 'empty'} to {after}, the newest.")


class _ShippedSettings(Settings):
    """Every setting at its default: neither the environment nor .env is read."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


@app.command()
def openapi(
    defaults: Annotated[
        bool,
        typer.Option(
            "--defaults",
            help="Ignore the environment and .env: the document of the API as shipped, "
            "which clients/typescript is generated from.",
        ),
    ] = False,
) -> None:
    """Print the OpenAPI document `serve` answers at API_V1_PREFIX/openapi.json, as JSON."""
    # Some of it follows the settings: the title, the prefix, the password length.
    settings = _ShippedSettings() if defaults else get_settings()
    # No server and no database: building the app connects to nothing.
    schema = create_app(settings).openapi()
    typer.echo(json.dumps(schema, indent=2, ensure_ascii=False))


@app.command("create-admin")
def create_admin(
    email: Annotated[str, typer.Option(prompt=True, help="The admin's email.")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            envvar="ADMIN_PASSWORD",
            help="At least PASSWORD_MIN_LENGTH (12) characters, not a common password "
            "(or set ADMIN_PASSWORD).",
        ),
    ],
    name: Annotated[str, typer.Option(help="Display name.")] = "Admin",
) -> None:
    """Create an admin account, unless that email already exists (never changes a password)."""
    data = user_create(email=email, password=password, name=name, role=UserRole.ADMIN)

    async def create(db: AsyncSession, settings: Settings) -> bool:
        return await accounts.ensure_user(db, data=data, hasher=hasher(settings))

    if with_db(create):
        typer.echo(f"Created admin {data.email}.")
    else:
        typer.echo(f"A user with email {data.email} already exists; nothing changed.", err=True)
        raise typer.Exit(code=1)
