import re
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, DateTime, bindparam, inspect, text
from sqlmodel import SQLModel

from backend.config import Settings
from backend.db import alembic_config, create_engine, include_in_autogenerate, upgrade_to_head
from tests.helpers import make_settings

BEFORE_ACCOUNT_KEYS = "fef801514d0c"


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _downgrade_upgrade_and_diff(connection: Connection) -> tuple[set[str], set[str], list[object]]:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, "base")
    after_downgrade = _table_names(connection)
    command.upgrade(config, "head")
    after_upgrade = _table_names(connection)
    context = MigrationContext.configure(
        connection, opts={"include_object": include_in_autogenerate}
    )
    diff = compare_metadata(context, SQLModel.metadata)
    return after_downgrade, after_upgrade, diff


async def test_upgrade_downgrade_upgrade_and_models_match(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
        async with engine.begin() as connection:
            down, up, diff = await connection.run_sync(_downgrade_upgrade_and_diff)
    finally:
        await engine.dispose()
    assert down <= {"alembic_version"}
    assert {"users", "alembic_version"} <= up
    assert diff == [], f"models and migrations differ: {diff}"


def test_script_template_imports_sqlmodel() -> None:
    template = alembic_config().get_main_option("script_location")
    assert template is not None
    with open(f"{template}/script.py.mako") as handle:
        assert "import sqlmodel" in handle.read()


async def test_no_table_reuses_ids_on_sqlite(tmp_path: Path) -> None:
    """AUTOINCREMENT on every table, in the models and the migrated schema alike (Alembic's
    comparison does not look at it): without it SQLite gives a deleted highest id to the
    next row, and a deleted user's id to the next account."""
    settings = make_settings(f"sqlite:///{tmp_path / 'ids.db'}")
    await upgrade_to_head(settings)
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
            )
            migrated = {name: "AUTOINCREMENT" in sql for name, sql in rows}
    finally:
        await engine.dispose()
    for table in SQLModel.metadata.sorted_tables:
        assert table.dialect_options["sqlite"]["autoincrement"], table.name
        assert migrated[table.name], table.name


def _upgrade_with_accounts(connection: Connection) -> tuple[list[tuple[str, str]], int]:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, BEFORE_ACCOUNT_KEYS)
    now = bindparam("now", datetime.now(UTC), type_=DateTime(timezone=True))
    for email in ("old-1@example.com", "old-2@example.com"):
        connection.execute(
            text(
                "INSERT INTO users (email, name, role, is_active, hashed_password, "
                "token_version, created_at, updated_at) "
                "VALUES (:email, 'Old', 'user', true, 'x', 0, :now, :now)"
            ).bindparams(now),
            {"email": email},
        )
    connection.execute(
        text(
            "INSERT INTO refresh_tokens (jti_hash, family_id, user_id, created_at, expires_at) "
            "SELECT 'jti', 'family', max(id), :now, :now FROM users"
        ).bindparams(now)
    )
    command.upgrade(config, "head")
    accounts = connection.execute(text("SELECT email, account_key FROM users ORDER BY id"))
    kept = [(email, key) for email, key in accounts]
    refresh_records = connection.execute(text("SELECT count(*) FROM refresh_tokens")).scalar_one()
    connection.execute(text("DELETE FROM users"))
    return kept, refresh_records


async def test_account_keys_migration_keeps_users_and_gives_each_its_own_key(
    settings: Settings,
) -> None:
    engine = create_engine(settings)
    try:
        async with engine.begin() as connection:
            kept, refresh_records = await connection.run_sync(_upgrade_with_accounts)
    finally:
        await engine.dispose()
    assert [email for email, _ in kept] == ["old-1@example.com", "old-2@example.com"]
    keys = [key for _, key in kept]
    assert all(re.fullmatch("[0-9a-f]{32}", key) for key in keys)
    assert len(set(keys)) == len(keys)
    # Tokens from before carry no account key and are refused: their records are gone.
    assert refresh_records == 0
