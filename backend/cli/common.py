"""What the `backend` command's parts share: the app, a db session on the configured
database, validation with the API's own rules, and plain tables on stdout."""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import TypeAdapter, ValidationError
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import crud
from backend.auth.models import (
    ApiKeyCreate,
)
from backend.auth.passwords import PasswordHasher
from backend.config import Settings, get_settings
from backend.db.engine import DatabaseStartupError, create_engine, explained_startup_failure
from backend.db.migrate import upgrade_to_head
from backend.db.session import create_sessionmaker
from backend.errors import DomainError, FieldInvalidError, NotFoundError, ProblemCode
from backend.models import Password, User, UserCreate
from backend.rules import use_account_rules

T = TypeVar("T")

app = typer.Typer(
    help="Users and auth API. Settings come from the environment or a .env file "
    "(see .env.example); with none, it runs on a SQLite file under ./data/.",
    no_args_is_help=True,
    add_completion=False,
)


def with_db(work: Callable[[AsyncSession, Settings], Awaitable[T]]) -> T:
    """Run `work` in a db session on the configured database, migrating it first when
    AUTO_MIGRATE is on; a DomainError (the API's 404s and 409s) exits 1 with its text, a
    refused field (a password like the email) exits 2, as the validation does."""
    settings = get_settings()

    async def run() -> T:
        engine = create_engine(settings)
        try:
            if settings.AUTO_MIGRATE:
                await upgrade_to_head(settings)
            async with create_sessionmaker(engine, settings)() as db:
                with explained_startup_failure(settings):
                    await db.connection()
                return await work(db, settings)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except FieldInvalidError as error:
        typer.echo(f"{error.field}: {error.message}", err=True)
        raise typer.Exit(code=2) from error
    except DomainError as error:
        typer.echo(error.detail, err=True)
        raise typer.Exit(code=1) from error
    except DatabaseStartupError as error:
        exit_with(error)


def exit_with(error: DatabaseStartupError) -> NoReturn:
    typer.echo(str(error), err=True)
    raise typer.Exit(code=1) from error


def user_create(**fields: Any) -> UserCreate:
    """The API's own validation; a refusal exits 2 (a usage error), one line per field."""
    use_account_rules(get_settings().account_rules)
    return validated(UserCreate, fields)


ModelT = TypeVar("ModelT", UserCreate, ApiKeyCreate)


def validated(model: type[ModelT], fields: dict[str, Any]) -> ModelT:
    try:
        return model(**fields)
    except ValidationError as error:
        echo_validation_errors(error)
        raise typer.Exit(code=2) from error


# The API's password rules alone: UserUpdate's optional field would add its own errors.
PASSWORD_POLICY: TypeAdapter[str] = TypeAdapter(Password)


def echo_validation_errors(error: ValidationError) -> None:
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        typer.echo(f"{'.'.join(map(str, item['loc']))}: {message}", err=True)


def hasher(settings: Settings) -> PasswordHasher:
    # One command hashes one password: no queue to bound.
    return PasswordHasher(rounds=settings.BCRYPT_ROUNDS, concurrency=1, queue_limit=0)


def echo_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        typer.echo("  ".join(cells).rstrip())


async def user_by_email(db: AsyncSession, email: str) -> User:
    user = await crud.get_user_by_email(db, email=email)
    if user is None:
        raise NotFoundError(f"No user with email {email}.", code=ProblemCode.USER_NOT_FOUND)
    return user
