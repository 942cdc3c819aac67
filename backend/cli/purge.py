"""`backend purge`: delete what has outlived its retention, one step at a time."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import typer
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import crud
from backend.cli.common import app, with_db
from backend.clock import utcnow
from backend.config import Settings


@dataclass(frozen=True)
class PurgeStep:
    """One kind of data to purge: `run` deletes it, commits, and says what it did in one
    line. Each step commits on its own, so one that fails leaves the earlier ones done."""

    name: str
    run: Callable[[AsyncSession, Settings], Awaitable[str]]


async def _auth_events(db: AsyncSession, settings: Settings) -> str:
    days = settings.AUTH_EVENTS_RETENTION_DAYS
    deleted = await crud.purge_auth_events(db, before=utcnow() - timedelta(days=days))
    return f"{deleted} sign-in events older than {days} days (AUTH_EVENTS_RETENTION_DAYS)"


# In order. A new kind of data with a retention adds its step here.
PURGE_STEPS = [PurgeStep("auth-events", _auth_events)]


@app.command()
def purge() -> None:
    """Delete what is past its retention: sign-in events older than
    AUTH_EVENTS_RETENTION_DAYS. Safe to run at any time, and again (cron, a timer)."""

    async def run_steps(db: AsyncSession, settings: Settings) -> None:
        for step in PURGE_STEPS:
            typer.echo(f"{step.name}: deleted {await step.run(db, settings)}")

    with_db(run_steps)
