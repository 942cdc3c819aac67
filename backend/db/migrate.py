"""Migrations: where they are (a checkout or the installed wheel), and running them."""

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from backend.config import Settings
from backend.db.engine import async_url, create_engine, explained_startup_failure

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
    return create_async_engine(url, poolclass=NullPool, hide_parameters=True)


async def upgrade_to_head(settings: Settings) -> None:
    """Migrate to the newest revision. A database that cannot be reached raises
    DatabaseStartupError; a migration that fails keeps its traceback."""
    engine = create_migration_engine(settings)
    try:
        with explained_startup_failure(settings):
            connection = await engine.connect()
        try:
            async with connection.begin():
                await connection.run_sync(_upgrade_to_head)
        finally:
            await connection.close()
    finally:
        await engine.dispose()


def _upgrade_to_head(connection: Connection) -> None:
    from alembic import command  # imported here: see alembic_config

    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
