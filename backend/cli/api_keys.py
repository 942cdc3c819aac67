"""`backend api-keys` (also `backend tokens`): personal API keys, straight in the
configured database (no token needed)."""

from datetime import datetime
from typing import Annotated

import typer
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import crud
from backend.auth import api_keys
from backend.auth.models import (
    API_KEY_DEFAULT_DAYS,
    API_KEY_MAX_DAYS,
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyEndReason,
    ApiKeyPublic,
    ApiKeyScope,
)
from backend.cli.common import echo_table, user_by_email, validated, with_db
from backend.config import Settings
from backend.errors import ConflictError, ProblemCode
from backend.http.listing import ListQuery
from backend.http.parsing import INT32_MAX

api_keys_app = typer.Typer(
    help="Manage personal API keys directly in the configured database (no token needed).",
    no_args_is_help=True,
)


@api_keys_app.command("create")
def create_key(
    email: Annotated[str, typer.Option(help="The owner's email: the key acts as this account.")],
    name: Annotated[str, typer.Option(help="What the key is for, as listings show it.")],
    scope: Annotated[ApiKeyScope, typer.Option(help="read: GET and HEAD only; write: all.")],
    days: Annotated[
        int, typer.Option(min=1, max=API_KEY_MAX_DAYS, help="Days until the key expires.")
    ] = API_KEY_DEFAULT_DAYS,
) -> None:
    """Create an API key for a script and print it, once, alone on stdout (the rest goes
    to stderr, so that KEY=$(backend api-keys create ...) keeps just the key)."""
    data = validated(ApiKeyCreate, {"name": name, "scope": scope, "expires_in_days": days})

    async def create(db: AsyncSession, _settings: Settings) -> tuple[str, ApiKeyCreated]:
        user = await user_by_email(db, email)
        if not user.is_active:
            raise ConflictError(
                f"{user.email} is deactivated: a key of it would not work.",
                code=ProblemCode.ACCOUNT_DEACTIVATED,
            )
        created = await api_keys.create(db, user=user, data=data, actor_id=None)
        return user.email, created

    owner, created = with_db(create)
    typer.echo(
        f"Created {created.scope.value} API key {created.id} ({created.name}) for {owner}, "
        f"expiring {created.expires_at:%Y-%m-%d %H:%M} UTC. It is shown this once:",
        err=True,
    )
    typer.echo(created.secret)


@api_keys_app.command("list")
def list_keys(
    email: Annotated[str | None, typer.Option(help="Only this account's keys.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
) -> None:
    """List API keys that are not revoked, newest first (times in UTC); never secrets."""
    query = ListQuery(limit=limit, sort=(("created_at", True),))

    async def fetch(db: AsyncSession, _settings: Settings) -> tuple[list[tuple[ApiKey, str]], int]:
        owner = await user_by_email(db, email) if email else None
        found, total = await api_keys.list_live(
            db, user_id=owner.id if owner else None, query=query
        )
        emails: dict[int, str] = {}
        for api_key in found:
            if api_key.user_id not in emails:
                user = await crud.get_user(db, user_id=api_key.user_id)
                emails[api_key.user_id] = user.email if user else "-"
        return [(api_key, emails[api_key.user_id]) for api_key in found], total

    found, total = with_db(fetch)
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
    echo_table(rows)
    if total > len(found):
        typer.echo(f"{len(found)} of {total} keys shown; raise --limit for more.", err=True)


@api_keys_app.command("revoke")
def revoke_key(
    key_id: Annotated[
        int, typer.Argument(min=1, max=INT32_MAX, help="The key's id (see api-keys list).")
    ],
) -> None:
    """Revoke an API key: it stops working at once (audited, by nobody)."""

    async def revoke(db: AsyncSession, _settings: Settings) -> ApiKeyPublic:
        return await api_keys.revoke(
            db, key_id=key_id, user_id=None, reason=ApiKeyEndReason.ADMIN, actor_id=None
        )

    revoked = with_db(revoke)
    typer.echo(f"Revoked API key {revoked.id} ({revoked.name}, {revoked.prefix}...).")
