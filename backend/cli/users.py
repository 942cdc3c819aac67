"""`backend users`: accounts, straight in the configured database (no token needed)."""

from collections.abc import Sequence
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from sqlalchemy import Row
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import crud
from backend.auth import accounts, mfa, sessions, sso
from backend.auth.models import (
    Identity,
    SessionEndReason,
    UserSession,
)
from backend.cli.common import (
    PASSWORD_POLICY,
    echo_table,
    hasher,
    user_by_email,
    user_create,
    with_db,
)
from backend.config import Settings, get_settings
from backend.http.listing import Filter, ListQuery
from backend.models import User, UserRole, UserUpdate
from backend.rules import use_account_rules

MAX_SESSIONS_SHOWN = 100

users_app = typer.Typer(
    help="Manage accounts directly in the configured database (no token needed).",
    no_args_is_help=True,
)


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

    async def fetch(db: AsyncSession, _settings: Settings) -> tuple[Sequence[Row[Any]], int]:
        return await crud.list_users(db, query=query)

    users, total = with_db(fetch)
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
    echo_table(rows)
    if total > len(users):
        # On stderr, so that a pipe gets only the table.
        typer.echo(f"{len(users)} of {total} users shown; raise --limit for more.", err=True)


@users_app.command("sessions")
def list_sessions(email: Annotated[str, typer.Argument(help="The account's email.")]) -> None:
    """List an account's live sessions, most recently used first (times in UTC)."""

    async def fetch(db: AsyncSession, settings: Settings) -> tuple[Sequence[UserSession], int]:
        user = await user_by_email(db, email)
        assert user.id is not None
        query = ListQuery(limit=MAX_SESSIONS_SHOWN, sort=(("last_used_at", True),))
        return await sessions.list_live(
            db, user_id=user.id, query=query, idle_days=settings.SESSION_IDLE_DAYS
        )

    found, total = with_db(fetch)
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
    echo_table(rows)
    if total > len(found):
        typer.echo(f"{len(found)} of {total} sessions shown, most recent first.", err=True)


@users_app.command("identities")
def list_identities(email: Annotated[str, typer.Argument(help="The account's email.")]) -> None:
    """List the identity providers linked to an account (times in UTC)."""

    async def fetch(db: AsyncSession, _settings: Settings) -> list[Identity]:
        user = await user_by_email(db, email)
        assert user.id is not None
        return await sso.list_identities(db, user_id=user.id)

    found = with_db(fetch)
    if not found:
        typer.echo(f"{email} has no linked identity.")
        return
    rows = [("ID", "PROVIDER", "SUBJECT", "EMAIL", "LINKED", "LAST USED")]
    rows += [
        (
            str(identity.id),
            identity.provider,
            identity.subject,
            identity.email or "-",
            identity.linked_at.strftime("%Y-%m-%d %H:%M"),
            identity.last_used_at.strftime("%Y-%m-%d %H:%M") if identity.last_used_at else "-",
        )
        for identity in found
    ]
    echo_table(rows)


@users_app.command()
def logout(email: Annotated[str, typer.Argument(help="The account's email.")]) -> None:
    """End every session of an account: its tokens stop working at once."""

    async def end_all(db: AsyncSession, _settings: Settings) -> tuple[str, int]:
        user = await user_by_email(db, email)
        ended = await sessions.end_all(db, user=user, reason=SessionEndReason.ADMIN, audit=True)
        return user.email, ended

    stored_email, ended = with_db(end_all)
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
    data = user_create(email=email, name=name, password=password, role=role)

    async def create(db: AsyncSession, settings: Settings) -> User:
        return await accounts.create_user(db, data=data, hasher=hasher(settings), audit=True)

    user = with_db(create)
    typer.echo(f"Created {user.role.value} {user.email} (id {user.id}).")


def _update_by_email(email: str, changes: UserUpdate, state: str, *, revokes: bool) -> None:
    """Apply changes to the user with this email through crud.update_user, which keeps
    the last active admin and, on a role change or deactivation, revokes their tokens."""

    async def update(db: AsyncSession, settings: Settings) -> tuple[str, bool]:
        user = await user_by_email(db, email)
        sent = changes.model_dump(exclude_unset=True)
        if all(getattr(user, field) == value for field, value in sent.items()):
            return user.email, False
        await accounts.update_user(db, user=user, changes=changes, hasher=hasher(settings))
        return user.email, True

    stored_email, changed = with_db(update)
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

    async def update(db: AsyncSession, settings: Settings) -> str:
        user = await user_by_email(db, email)
        await accounts.update_user(db, user=user, changes=changes, hasher=hasher(settings))
        return user.email

    stored_email = with_db(update)
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

    async def remove(db: AsyncSession, _settings: Settings) -> User:
        user = await user_by_email(db, email)
        await accounts.delete_user(db, user=user, actor_id=None)
        return user

    user = with_db(remove)
    typer.echo(f"Deleted {user.email} (id {user.id}).")


@users_app.command("reset-mfa")
def reset_mfa(email: Annotated[str, typer.Argument(help="The account's email.")]) -> None:
    """Remove every second factor of an account whose owner lost it (audited): its
    sessions end, and it logs in with the password alone, then enrols again."""

    async def reset(db: AsyncSession, _settings: Settings) -> tuple[str, bool]:
        user = await user_by_email(db, email)
        return user.email, await mfa.reset(db, user=user, actor_id=None)

    stored_email, had = with_db(reset)
    if had:
        typer.echo(f"Second factors of {stored_email} removed; every session it had is ended.")
    else:
        typer.echo(f"{stored_email} had no second factor; every session it had is ended.")


@users_app.command("reencrypt-mfa")
def reencrypt_mfa() -> None:
    """Encrypt every authenticator secret again under the current MFA_ENCRYPTION_KEY
    (or SECRET_KEY): after it, MFA_ENCRYPTION_KEYS_OLD may be emptied."""

    async def reencrypt(db: AsyncSession, settings: Settings) -> int:
        return await mfa.reencrypt(db, settings=settings)

    count = with_db(reencrypt)
    typer.echo(f"Re-encrypted {count} authenticator secret{'' if count == 1 else 's'}.")
