"""Migrations: where they are (a checkout or the installed wheel), and running them."""

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from backend.config import Settings
from backend.db.engine import (
    POOLER_CONNECT_ARGS,
    async_url,
    create_engine,
    explained_startup_failure,
    schema_missing,
    without_statement_cache,
)

if TYPE_CHECKING:
    from alembic.config import Config


def _find_alembic_dir() -> Path:
    """The migrations: inside the package when installed from the wheel (pyproject.toml
    puts them there), in the top-level alembic/ folder of a checkout."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "alembic"
    return installed if (installed / "env.py").is_file() else package.parent / "alembic"


ALEMBIC_DIR = _find_alembic_dir()
# PostgreSQL-only indexes that the migrations create by hand (see their comments).
UNMODELLED_INDEXES = frozenset(
    {
        "ix_users_email_trgm",
        "ix_users_name_trgm",
        "ix_users_last_login_at_id",
        "ix_users_user_metadata_gin",
        "ix_users_app_metadata_gin",
    }
)


NOT_MIGRATED = (
    "The database is not at the newest migration: run `backend migrate` (or start with "
    "AUTO_MIGRATE=true)."
)
# How every migration file names itself and its parent (alembic's template; the
# test that compares newest_revision with alembic's own answer keeps them honest).
_REVISION = re.compile(r'^revision: str = "([0-9a-f]+)"$', re.MULTILINE)
_DOWN_REVISION = re.compile(r'^down_revision: str \| None = (?:"([0-9a-f]+)"|None)$', re.MULTILINE)


@cache
def newest_revision() -> str:
    """The head of the migrations, read from their files: alembic's own script
    directory would add ~12 MB to every worker, for one string."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (ALEMBIC_DIR / "versions").glob("*.py"):
        source = path.read_text()
        revision, parent = _REVISION.search(source), _DOWN_REVISION.search(source)
        if revision is None or parent is None:
            raise RuntimeError(f"{path.name}: no revision or down_revision line")
        revisions.add(revision.group(1))
        if parent.group(1):
            parents.add(parent.group(1))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads, not one: {sorted(heads)}")
    return heads.pop()


async def database_revision(connection: AsyncConnection) -> str | None:
    """The revision the database is at; None before its first migration. On PostgreSQL
    a missing table spoils the connection's transaction: make this its last statement."""
    try:
        result = await connection.execute(text("SELECT version_num FROM alembic_version"))
        return result.scalar_one_or_none()
    except DBAPIError as error:
        if schema_missing(error):
            return None
        raise


def include_in_autogenerate(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Alembic's include_object hook: ignore the hand-made indexes when comparing."""
    return not (type_ == "index" and name in UNMODELLED_INDEXES)


def alembic_config() -> "Config":
    # Imported here: Alembic adds ~12 MB to every worker that never migrates.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    return config


def create_migration_engine(settings: Settings) -> AsyncEngine:
    """An engine for schema changes: without the request time limits, since a migration
    may rewrite a big table, and workers starting together wait on each other's lock."""
    if settings.is_sqlite:
        return create_engine(settings)
    url = async_url(settings.DATABASE_URL)
    if settings.DB_TRANSACTION_POOLER:
        return create_async_engine(
            without_statement_cache(url),
            poolclass=NullPool,
            hide_parameters=True,
            connect_args=POOLER_CONNECT_ARGS,
        )
    return create_async_engine(url, poolclass=NullPool, hide_parameters=True)


async def upgrade_to_head(settings: Settings) -> tuple[str | None, str | None]:
    """Migrate to the newest revision; the revisions before and after (None: none yet).
    A database that cannot be reached raises DatabaseStartupError; a migration that
    fails keeps its traceback."""
    engine = create_migration_engine(settings)
    try:
        with explained_startup_failure(settings):
            connection = await engine.connect()
        try:
            async with connection.begin():
                return await connection.run_sync(_upgrade_to_head)
        finally:
            await connection.close()
    finally:
        await engine.dispose()


def _upgrade_to_head(connection: Connection) -> tuple[str | None, str | None]:
    from alembic import command  # imported here: see alembic_config
    from alembic.runtime.migration import MigrationContext

    before = MigrationContext.configure(connection).get_current_revision()
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    return before, MigrationContext.configure(connection).get_current_revision()
