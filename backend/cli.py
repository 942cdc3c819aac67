"""The `backend` command: serve the API, migrate the database, manage accounts."""

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import uvicorn
from pydantic import TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from sqlalchemy import Row
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import api_keys, crud, sessions
from backend.config import Settings, get_settings
from backend.db import (
    DatabaseStartupError,
    create_engine,
    create_sessionmaker,
    explained_startup_failure,
    upgrade_to_head,
)
from backend.errors import ConflictError, DomainError, NotFoundError
from backend.listing import Filter, ListQuery
from backend.main import create_app
from backend.models import (
    API_KEY_DEFAULT_DAYS,
    API_KEY_MAX_DAYS,
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyEndReason,
    ApiKeyPublic,
    ApiKeyScope,
    Password,
    SessionEndReason,
    User,
    UserCreate,
    UserRole,
    UserSession,
    UserUpdate,
    use_account_rules,
)
from backend.observability import configure_logging
from backend.parsing import INT32_MAX
from backend.security import PasswordHasher

T = TypeVar("T")
MAX_SESSIONS_SHOWN = 100

app = typer.Typer(
    help="Users and auth API. Settings come from the environment or a .env file "
    "(see .env.example); with none, it runs on a SQLite file under ./data/.",
    no_args_is_help=True,
    add_completion=False,
)
users_app = typer.Typer(
    help="Manage accounts directly in the configured database (no token needed).",
    no_args_is_help=True,
)
app.add_typer(users_app, name="users")
tokens_app = typer.Typer(
    help="Manage personal API keys directly in the configured database (no token needed).",
    no_args_is_help=True,
)
app.add_typer(tokens_app, name="tokens")


def _with_session(work: Callable[[AsyncSession, Settings], Awaitable[T]]) -> T:
    """Run `work` in a session on the configured database, migrating it first when
    AUTO_MIGRATE is on; a DomainError (the API's 404s and 409s) exits 1 with its text."""
    settings = get_settings()

    async def run() -> T:
        engine = create_engine(settings)
        try:
            if settings.AUTO_MIGRATE:
                await upgrade_to_head(settings)
            async with create_sessionmaker(engine, settings)() as session:
                with explained_startup_failure(settings):
                    await session.connection()
                return await work(session, settings)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except DomainError as error:
        typer.echo(error.detail, err=True)
        raise typer.Exit(code=1) from error
    except DatabaseStartupError as error:
        _exit_with(error)


def _exit_with(error: DatabaseStartupError) -> NoReturn:
    typer.echo(str(error), err=True)
    raise typer.Exit(code=1) from error


def _user_create(**fields: Any) -> UserCreate:
    """The API's own validation; a refusal exits 2 (a usage error), one line per field."""
    use_account_rules(get_settings().account_rules)
    return _validated(UserCreate, fields)


ModelT = TypeVar("ModelT", UserCreate, ApiKeyCreate)


def _validated(model: type[ModelT], fields: dict[str, Any]) -> ModelT:
    try:
        return model(**fields)
    except ValidationError as error:
        _echo_validation_errors(error)
        raise typer.Exit(code=2) from error


# The API's password rules alone: UserUpdate's optional field would add its own errors.
PASSWORD_POLICY: TypeAdapter[str] = TypeAdapter(Password)


def _echo_validation_errors(error: ValidationError) -> None:
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        typer.echo(f"{'.'.join(map(str, item['loc']))}: {message}", err=True)


def _hasher(settings: Settings) -> PasswordHasher:
    # One command hashes one password: no queue to bound.
    return PasswordHasher(rounds=settings.BCRYPT_ROUNDS, concurrency=1, queue_limit=0)


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
    if workers > 1 and settings.is_sqlite:
        raise typer.BadParameter(
            "several workers need PostgreSQL, not SQLite", param_hint="--workers"
        )
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
            # Client addresses come from TRUSTED_PROXIES (backend/ratelimit.py) only.
            proxy_headers=False,
            # The API has no WebSocket route; uvicorn's default would import the
            # websockets library into every worker anyway (0.7 MB of its memory).
            ws="none",
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
        asyncio.run(upgrade_to_head(get_settings()))
    except DatabaseStartupError as error:
        _exit_with(error)
    typer.echo("Database is at the newest migration.")


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
    data = _user_create(email=email, password=password, name=name, role=UserRole.ADMIN)

    async def create(session: AsyncSession, settings: Settings) -> bool:
        return await crud.ensure_user(session, data=data, hasher=_hasher(settings))

    if _with_session(create):
        typer.echo(f"Created admin {data.email}.")
    else:
        typer.echo(f"A user with email {data.email} already exists; nothing changed.", err=True)
        raise typer.Exit(code=1)


@users_app.command("list")
def list_users(
    role: Annotated[UserRole | None, typer.Option(help="Only this role.")] = None,
    q: Annotated[
        str | None, typer.Option(help="Case-insensitive part of the email or name.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
) -> None:
    """List accounts, oldest first: id, email, name, role, active, created (UTC)."""
    filters = (Filter("role", "eq", role),) if role else ()
    query = ListQuery(limit=limit, sort=(("id", False),), filters=filters, search=q or None)

    async def fetch(session: AsyncSession, _settings: Settings) -> tuple[Sequence[Row[Any]], int]:
        return await crud.list_users(session, query=query)

    users, total = _with_session(fetch)
    if not users:
        typer.echo("No users match.")
        return
    rows = [("ID", "EMAIL", "NAME", "ROLE", "ACTIVE", "CREATED")]
    rows += [
        (
            str(user.id),
            user.email,
            user.name,
            user.role.value,
            "yes" if user.is_active else "no",
            user.created_at.strftime("%Y-%m-%d %H:%M"),
        )
        for user in users
    ]
    _echo_table(rows)
    if total > len(users):
        # On stderr, so that a pipe gets only the table.
        typer.echo(f"{len(users)} of {total} users shown; raise --limit for more.", err=True)


def _echo_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        typer.echo("  ".join(cells).rstrip())


async def _user_by_email(session: AsyncSession, email: str) -> User:
    user = await crud.get_user_by_email(session, email=email)
    if user is None:
        raise NotFoundError(f"No user with email {email}.")
    return user


@users_app.command("sessions")
def list_sessions(email: Annotated[str, typer.Argument(help="The account's email.")]) -> None:
    """List an account's live sessions, most recently used first (times in UTC)."""

    async def fetch(session: AsyncSession, settings: Settings) -> tuple[Sequence[UserSession], int]:
        user = await _user_by_email(session, email)
        assert user.id is not None
        query = ListQuery(limit=MAX_SESSIONS_SHOWN, sort=(("last_used_at", True),))
        return await crud.list_live_sessions(
            session, user_id=user.id, query=query, idle_days=settings.SESSION_IDLE_DAYS
        )

    found, total = _with_session(fetch)
    if not found:
        typer.echo(f"{email} has no live session.")
        return
    rows = [("ID", "CREATED", "LAST USED", "EXPIRES", "ADDRESS", "USER AGENT")]
    rows += [
        (
            user_session.id,
            user_session.created_at.strftime("%Y-%m-%d %H:%M"),
            user_session.last_used_at.strftime("%Y-%m-%d %H:%M"),
            user_session.expires_at.strftime("%Y-%m-%d %H:%M"),
            user_session.ip_address or "-",
            user_session.user_agent or "-",
        )
        for user_session in found
    ]
    _echo_table(rows)
    if total > len(found):
        typer.echo(f"{len(found)} of {total} sessions shown, most recent first.", err=True)


@users_app.command()
def logout(email: Annotated[str, typer.Argument(help="The account's email.")]) -> None:
    """End every session of an account: its tokens stop working at once."""

    async def end_all(session: AsyncSession, _settings: Settings) -> tuple[str, int]:
        user = await _user_by_email(session, email)
        ended = await sessions.end_all(
            session, user=user, reason=SessionEndReason.ADMIN, audit=True
        )
        return user.email, ended

    stored_email, ended = _with_session(end_all)
    typer.echo(f"Ended {ended} session{'' if ended == 1 else 's'} of {stored_email}.")


@users_app.command("create")
def create_user(
    email: Annotated[str, typer.Option(help="The new account's email.")],
    name: Annotated[str, typer.Option(help="Display name.")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            envvar="USER_PASSWORD",
            help="At least PASSWORD_MIN_LENGTH (12) characters, not a common password "
            "(or set USER_PASSWORD).",
        ),
    ],
    role: Annotated[UserRole, typer.Option(help="The account's role.")] = UserRole.USER,
) -> None:
    """Create an account; an email already in use exits 1, changing nothing."""
    data = _user_create(email=email, name=name, password=password, role=role)

    async def create(session: AsyncSession, settings: Settings) -> User:
        return await crud.create_user(session, data=data, hasher=_hasher(settings), audit=True)

    user = _with_session(create)
    typer.echo(f"Created {user.role.value} {user.email} (id {user.id}).")


def _update_by_email(email: str, changes: UserUpdate, state: str, *, revokes: bool) -> None:
    """Apply changes to the user with this email through crud.update_user, which keeps
    the last active admin and, on a role change or deactivation, revokes their tokens."""

    async def update(session: AsyncSession, settings: Settings) -> tuple[str, bool]:
        user = await _user_by_email(session, email)
        sent = changes.model_dump(exclude_unset=True)
        if all(getattr(user, field) == value for field, value in sent.items()):
            return user.email, False
        await crud.update_user(session, user=user, changes=changes, hasher=_hasher(settings))
        return user.email, True

    stored_email, changed = _with_session(update)
    if not changed:
        typer.echo(f"{stored_email} is already {state}; nothing changed.")
    elif revokes:
        typer.echo(f"{stored_email} is now {state}; every token it held is revoked.")
    else:
        typer.echo(f"{stored_email} is now {state}.")


@users_app.command("set-role")
def set_role(
    email: Annotated[str, typer.Argument(help="The account's email.")],
    role: Annotated[UserRole, typer.Argument(help="The new role.")],
) -> None:
    """Change an account's role (the last active admin cannot be demoted)."""
    _update_by_email(email, UserUpdate(role=role), role.value, revokes=True)


@users_app.command()
def deactivate(email: Annotated[str, typer.Argument(help="The account's email.")]) -> None:
    """Deactivate an account: it can no longer log in, and its tokens stop working."""
    _update_by_email(email, UserUpdate(is_active=False), "inactive", revokes=True)


@users_app.command()
def activate(email: Annotated[str, typer.Argument(help="The account's email.")]) -> None:
    """Let a deactivated account log in again."""
    _update_by_email(email, UserUpdate(is_active=True), "active", revokes=False)


@users_app.command("set-password")
def set_password(email: Annotated[str, typer.Argument(help="The account's email.")]) -> None:
    """Set an account's password, typed twice at a prompt (never on the command line,
    where the shell history and the process list would keep it). The password policy
    applies; every session of the account ends, as after a password change."""
    typed = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    use_account_rules(get_settings().account_rules)
    try:
        changes = UserUpdate(password=PASSWORD_POLICY.validate_python(typed))
    except ValidationError as error:
        for item in error.errors():
            message = str(item["msg"]).removeprefix("Value error, ")
            typer.echo(f"password: {message}", err=True)
        raise typer.Exit(code=2) from error

    async def update(session: AsyncSession, settings: Settings) -> str:
        user = await _user_by_email(session, email)
        await crud.update_user(session, user=user, changes=changes, hasher=_hasher(settings))
        return user.email

    stored_email = _with_session(update)
    typer.echo(f"Password of {stored_email} set; every session it had is ended.")


@users_app.command()
def delete(
    email: Annotated[str, typer.Argument(help="The account's email.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an account with its sessions (audited); the last active admin cannot be
    deleted. Asks for confirmation unless --yes."""
    if not yes:
        typer.confirm(f"Delete the account {email} and end its sessions?", abort=True)

    async def remove(session: AsyncSession, _settings: Settings) -> User:
        user = await _user_by_email(session, email)
        await crud.delete_user(session, user=user, actor_id=None)
        return user

    user = _with_session(remove)
    typer.echo(f"Deleted {user.email} (id {user.id}).")


@tokens_app.command("create")
def create_token(
    email: Annotated[str, typer.Option(help="The owner's email: the key acts as this account.")],
    name: Annotated[str, typer.Option(help="What the key is for, as listings show it.")],
    scope: Annotated[ApiKeyScope, typer.Option(help="read: GET and HEAD only; write: all.")],
    days: Annotated[
        int, typer.Option(min=1, max=API_KEY_MAX_DAYS, help="Days until the key expires.")
    ] = API_KEY_DEFAULT_DAYS,
) -> None:
    """Create an API key for a script and print it, once, alone on stdout (the rest goes
    to stderr, so that KEY=$(backend tokens create ...) keeps just the key)."""
    data = _validated(ApiKeyCreate, {"name": name, "scope": scope, "expires_in_days": days})

    async def create(session: AsyncSession, _settings: Settings) -> tuple[str, ApiKeyCreated]:
        user = await _user_by_email(session, email)
        if not user.is_active:
            raise ConflictError(f"{user.email} is deactivated: a key of it would not work.")
        created = await api_keys.create(session, user=user, data=data, actor_id=None)
        return user.email, created

    owner, created = _with_session(create)
    typer.echo(
        f"Created {created.scope.value} API key {created.id} ({created.name}) for {owner}, "
        f"expiring {created.expires_at:%Y-%m-%d %H:%M} UTC. It is shown this once:",
        err=True,
    )
    typer.echo(created.secret)


@tokens_app.command("list")
def list_tokens(
    email: Annotated[str | None, typer.Option(help="Only this account's keys.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
) -> None:
    """List API keys that are not revoked, newest first (times in UTC); never secrets."""
    query = ListQuery(limit=limit, sort=(("created_at", True),))

    async def fetch(
        session: AsyncSession, _settings: Settings
    ) -> tuple[list[tuple[ApiKey, str]], int]:
        owner = await _user_by_email(session, email) if email else None
        found, total = await crud.list_api_keys(
            session, user_id=owner.id if owner else None, query=query
        )
        emails: dict[int, str] = {}
        for api_key in found:
            if api_key.user_id not in emails:
                user = await crud.get_user(session, user_id=api_key.user_id)
                emails[api_key.user_id] = user.email if user else "-"
        return [(api_key, emails[api_key.user_id]) for api_key in found], total

    found, total = _with_session(fetch)
    if not found:
        typer.echo("No API keys.")
        return

    def when(moment: datetime | None) -> str:
        return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"

    rows = [("ID", "OWNER", "NAME", "PREFIX", "SCOPE", "CREATED", "EXPIRES", "LAST USED")]
    rows += [
        (
            str(api_key.id),
            owner,
            api_key.name,
            api_key.prefix,
            api_key.scope.value,
            when(api_key.created_at),
            when(api_key.expires_at),
            when(api_key.last_used_at),
        )
        for api_key, owner in found
    ]
    _echo_table(rows)
    if total > len(found):
        typer.echo(f"{len(found)} of {total} keys shown; raise --limit for more.", err=True)


@tokens_app.command("revoke")
def revoke_token(
    key_id: Annotated[
        int, typer.Argument(min=1, max=INT32_MAX, help="The key's id (see tokens list).")
    ],
) -> None:
    """Revoke an API key: it stops working at once (audited, by nobody)."""

    async def revoke(session: AsyncSession, _settings: Settings) -> ApiKeyPublic:
        return await api_keys.revoke(
            session, key_id=key_id, user_id=None, reason=ApiKeyEndReason.ADMIN, actor_id=None
        )

    revoked = _with_session(revoke)
    typer.echo(f"Revoked API key {revoked.id} ({revoked.name}, {revoked.prefix}...).")
