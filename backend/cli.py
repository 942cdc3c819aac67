"""The `backend` command: serve the API, migrate the database, create an admin."""

import asyncio
import logging
from typing import Annotated

import typer
import uvicorn
from pydantic import ValidationError

from backend import crud
from backend.config import get_settings
from backend.db import create_engine, create_sessionmaker, upgrade_to_head
from backend.models import UserCreate, UserRole
from backend.security import PasswordHasher

app = typer.Typer(
    help="Users and auth API. Settings come from the environment or a .env file "
    "(see .env.example); with none, it runs on a SQLite file under ./data/.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (PostgreSQL for >1).")] = 1,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
) -> None:
    """Serve the API (docs at http://HOST:PORT/docs)."""
    settings = get_settings()  # fails here, in one line, on a bad configuration
    if workers > 1 and settings.is_sqlite:
        raise typer.BadParameter(
            "several workers need PostgreSQL, not SQLite", param_hint="--workers"
        )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    uvicorn.run(
        "backend.main:app",
        host=host,
        port=port,
        workers=workers,
        reload=reload,
        proxy_headers=False,
    )


@app.command()
def migrate() -> None:
    """Upgrade the database schema to the newest migration."""

    async def run() -> None:
        engine = create_engine(get_settings())
        try:
            await upgrade_to_head(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())
    typer.echo("Database is at the newest migration.")


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
            help="At least 8 characters with an uppercase letter (or set ADMIN_PASSWORD).",
        ),
    ],
    name: Annotated[str, typer.Option(help="Display name.")] = "Admin",
) -> None:
    """Create an admin account, unless that email already exists (never changes a password)."""
    try:
        data = UserCreate(email=email, password=password, name=name, role=UserRole.ADMIN)
    except ValidationError as error:
        for item in error.errors():
            message = str(item["msg"]).removeprefix("Value error, ")
            typer.echo(f"{'.'.join(map(str, item['loc']))}: {message}", err=True)
        raise typer.Exit(code=2) from error
    settings = get_settings()

    async def run() -> bool:
        engine = create_engine(settings)
        hasher = PasswordHasher(rounds=settings.BCRYPT_ROUNDS, concurrency=1, queue_limit=0)
        try:
            if settings.AUTO_MIGRATE:
                await upgrade_to_head(engine)
            async with create_sessionmaker(engine)() as session:
                return await crud.ensure_user(session, data=data, hasher=hasher)
        finally:
            await engine.dispose()

    if asyncio.run(run()):
        typer.echo(f"Created admin {data.email}.")
    else:
        typer.echo(f"A user with email {data.email} already exists; nothing changed.", err=True)
        raise typer.Exit(code=1)
