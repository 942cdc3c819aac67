from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect
from sqlmodel import SQLModel

from backend.config import Settings
from backend.db import alembic_config, create_engine, include_in_autogenerate


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
