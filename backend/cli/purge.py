"""`backend purge`: remove what has outlived its time, one step after another. Run it
from cron or a systemd timer (daily is enough: each step removes only what is due when
it runs, and running it again removes nothing more)."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import typer
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import crud
from backend.auth import accounts
from backend.cli.common import app, with_db
from backend.clock import utcnow
from backend.config import Settings


@dataclass(frozen=True)
class PurgeStep:
    """One kind of record to remove: what it is called in the report, and the work,
    which commits on its own (a step that fails leaves the earlier ones done) and
    returns how many it removed."""

    name: str
    run: Callable[[AsyncSession, Settings], Awaitable[int]]


async def _scheduled_deletions(db: AsyncSession, settings: Settings) -> int:
    return await accounts.purge_scheduled_deletions(db, settings=settings)


async def _auth_events(db: AsyncSession, settings: Settings) -> int:
    before = utcnow() - timedelta(days=settings.AUTH_EVENTS_RETENTION_DAYS)
    return await crud.purge_auth_events(db, before=before)


# In order. A new kind of record with a lifetime adds its step here.
PURGE_STEPS = [
    PurgeStep("accounts whose scheduled deletion is due", _scheduled_deletions),
    PurgeStep("sign-in events older than AUTH_EVENTS_RETENTION_DAYS", _auth_events),
]


@app.command()
def purge() -> None:
    """Remove what is due: the accounts whose deletion grace ended
    (ACCOUNT_DELETION=grace), and sign-in events older than AUTH_EVENTS_RETENTION_DAYS.
    One line per step, with how many it removed."""

    async def run(db: AsyncSession, settings: Settings) -> list[tuple[str, int]]:
        return [(step.name, await step.run(db, settings)) for step in PURGE_STEPS]

    for name, count in with_db(run):
        typer.echo(f"{name}: {count} removed")
