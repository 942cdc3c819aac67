"""`backend purge`: remove what has outlived its time, one step after another. Run it
from cron (daily is enough: each step removes only what is due when it runs)."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import typer
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.auth import accounts
from backend.cli.common import app, with_db
from backend.config import Settings


@dataclass(frozen=True)
class PurgeStep:
    """One kind of record to remove: what it is called in the report, and the work,
    which returns how many it removed."""

    name: str
    run: Callable[[AsyncSession, Settings], Awaitable[int]]


async def _scheduled_deletions(db: AsyncSession, settings: Settings) -> int:
    return await accounts.purge_scheduled_deletions(db, settings=settings)


PURGE_STEPS = [
    PurgeStep("accounts whose scheduled deletion is due", _scheduled_deletions),
]


@app.command()
def purge() -> None:
    """Remove what is due: the accounts whose deletion grace ended
    (ACCOUNT_DELETION=grace). One line per step, with how many it removed."""

    async def run(db: AsyncSession, settings: Settings) -> list[tuple[str, int]]:
        return [(step.name, await step.run(db, settings)) for step in PURGE_STEPS]

    for name, count in with_db(run):
        typer.echo(f"{name}: {count} removed")
