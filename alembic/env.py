"""Alembic environment: async engines, SQLite in batch mode, one lock on PostgreSQL."""

import asyncio
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection, text
from sqlmodel import SQLModel

import backend.auth.mfa_models
import backend.auth.models
import backend.webhooks.models  # noqa: F401  (their tables join SQLModel.metadata)
from backend import models
from backend.config import get_settings
from backend.db.engine import async_url
from backend.db.migrate import create_migration_engine, include_in_autogenerate

target_metadata = SQLModel.metadata

# Any constant works: it only has to be the same for every process migrating.
MIGRATION_LOCK_ID = 7_246_153


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Migrations stay free of app imports: UTCDateTime is DateTime(timezone=True) in the DB.
    if type_ == "type" and isinstance(obj, models.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
        include_object=include_in_autogenerate,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Workers starting together migrate one at a time; the rest find head.
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_migration_engine(get_settings())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=str(async_url(get_settings().DATABASE_URL)),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
elif (connection := context.config.attributes.get("connection")) is not None:
    # The app passes its own connection (backend.db.migrate.upgrade_to_head).
    do_run_migrations(connection)
else:
    asyncio.run(run_async_migrations())
