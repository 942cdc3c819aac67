import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, DateTime, Integer, bindparam, inspect, text
from sqlmodel import SQLModel

from backend.config import Settings
from backend.confusables import email_skeleton
from backend.db.engine import create_engine
from backend.db.migrate import alembic_config, include_in_autogenerate, upgrade_to_head
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
        if not isinstance(table.primary_key.columns[0].type, Integer):
            continue  # random ids (sessions): nothing counts up, nothing to reuse
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


BEFORE_SESSIONS = "867d22b6c838"
FAMILY_LIVE = "a" * 32
FAMILY_REVOKED = "b" * 32


def _families_to_sessions_and_back(connection: Connection) -> dict[str, Any]:
    """Two families before sessions (one half revoked, as the refresh ‖ logout race left
    them); what upgrade makes of them, what downgrade gives back, and upgrade again."""
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, BEFORE_SESSIONS)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    moments = [
        bindparam(name, type_=DateTime(timezone=True))
        for name in ("created", "expires", "used", "revoked")
    ]
    connection.execute(
        text(
            "INSERT INTO users (email, name, role, is_active, hashed_password, token_version,"
            " account_key, created_at, updated_at)"
            " VALUES ('old@example.com', 'Old', 'user', true, 'x', 0, :key, :created, :created)"
        ).bindparams(moments[0]),
        {"key": "k" * 32, "created": start},
    )
    rows = [
        ("t1", FAMILY_LIVE, 0, 14, 1, None),
        ("t2", FAMILY_LIVE, 1, 15, None, None),
        ("t3", FAMILY_REVOKED, 2, 16, 3, 4),
        ("t4", FAMILY_REVOKED, 3, 17, None, None),  # inserted by a refresh racing logout
    ]
    insert = text(
        "INSERT INTO refresh_tokens (jti_hash, family_id, user_id, created_at, expires_at,"
        " used_at, revoked_at) SELECT :jti, :family, id, :created, :expires, :used, :revoked"
        " FROM users"
    ).bindparams(*moments)
    for jti, family, *days in rows:
        created, expires, used, revoked = (
            None if day is None else start + timedelta(days=day) for day in days
        )
        connection.execute(
            insert,
            {
                "jti": jti,
                "family": family,
                "created": created,
                "expires": expires,
                "used": used,
                "revoked": revoked,
            },
        )
    command.upgrade(config, "head")
    sessions = connection.execute(
        text(
            "SELECT id, created_at, last_used_at, expires_at, revoked_at, revoked_reason"
            " FROM sessions ORDER BY id"
        )
    ).all()
    tokens = connection.execute(
        text("SELECT jti_hash, session_id FROM refresh_tokens ORDER BY jti_hash")
    ).all()
    command.downgrade(config, BEFORE_SESSIONS)
    families = connection.execute(
        text(
            "SELECT jti_hash, family_id, revoked_at IS NOT NULL FROM refresh_tokens"
            " ORDER BY jti_hash"
        )
    ).all()
    command.upgrade(config, "head")
    again = connection.execute(text("SELECT id FROM sessions ORDER BY id")).scalars().all()
    connection.execute(text("DELETE FROM users"))
    return {"sessions": sessions, "tokens": tokens, "families": families, "again": again}


def _utc(value: Any) -> datetime:
    """A timestamp as read back by plain SQL: aware on PostgreSQL, text on SQLite."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


async def test_families_become_sessions_and_back(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
        async with engine.begin() as connection:
            found = await connection.run_sync(_families_to_sessions_and_back)
    finally:
        await engine.dispose()
    start = datetime(2026, 11, 1, tzinfo=UTC)
    live, revoked = found["sessions"]
    assert live[0] == FAMILY_LIVE
    assert [_utc(value) - start for value in live[1:4]] == [
        timedelta(days=0),
        timedelta(days=1),
        timedelta(days=15),
    ]
    assert live[4:] == (None, None)
    assert revoked[0] == FAMILY_REVOKED
    assert _utc(revoked[4]) - start == timedelta(days=4)
    assert revoked[5] == "logout"
    assert [tuple(row) for row in found["tokens"]] == [
        ("t1", FAMILY_LIVE),
        ("t2", FAMILY_LIVE),
        ("t3", FAMILY_REVOKED),
        ("t4", FAMILY_REVOKED),
    ]
    # Back to families: the survivor of the race is revoked with its family now.
    assert [tuple(row) for row in found["families"]] == [
        ("t1", FAMILY_LIVE, False),
        ("t2", FAMILY_LIVE, False),
        ("t3", FAMILY_REVOKED, True),
        ("t4", FAMILY_REVOKED, True),
    ]
    assert found["again"] == [FAMILY_LIVE, FAMILY_REVOKED]


BEFORE_INVISIBLE_SKELETONS = "5a1e7c0de5e1"
INVISIBLE_SKELETONS = "384aeb2d8415"
# In id order. At the previous revision invisible characters told these apart.
SKELETON_ROWS = [
    "root@example.com",
    "ro\u034fot@example.com",  # a look-alike of the older root@: gets none
    "ada\ufe0f@example.com",  # a look-alike of nobody: gets ada@'s skeleton
    "b\u3164ob@example.com",  # older than bob@: keeps the skeleton bob@ held
    "bob@example.com",
    "carol@example.com",  # inserted by hand without a skeleton: gets one
]


def _skeletons_recomputed(connection: Connection) -> dict[str, Any]:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, BEFORE_INVISIBLE_SKELETONS)
    module = ScriptDirectory.from_config(config).get_revision(INVISIBLE_SKELETONS).module
    skeleton_before = module._email_skeleton_before
    now = bindparam("now", datetime.now(UTC), type_=DateTime(timezone=True))
    for number, email in enumerate(SKELETON_ROWS):
        connection.execute(
            text(
                "INSERT INTO users (email, email_skeleton, name, role, is_active,"
                " hashed_password, token_version, account_key, created_at, updated_at)"
                " VALUES (:email, :skeleton, 'Old', 'user', true, 'x', 0, :key, :now, :now)"
            ).bindparams(now),
            {
                "email": email,
                "skeleton": None if email.startswith("carol") else skeleton_before(email),
                "key": f"{number:032d}",
            },
        )

    def rows() -> list[tuple[str, str | None]]:
        result = connection.execute(text("SELECT email, email_skeleton FROM users ORDER BY id"))
        return [(email, skeleton) for email, skeleton in result]

    before = rows()
    ids: dict[str, int] = dict(connection.execute(text("SELECT email, id FROM users")).all())
    command.upgrade(config, "head")
    upgraded = rows()
    command.downgrade(config, BEFORE_INVISIBLE_SKELETONS)
    downgraded = rows()
    command.upgrade(config, "head")
    connection.execute(text("DELETE FROM users"))
    return {"before": before, "upgraded": upgraded, "downgraded": downgraded, "ids": ids}


async def test_skeletons_are_recomputed_and_lookalikes_kept(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="alembic.runtime.migration")
    engine = create_engine(settings)
    try:
        async with engine.begin() as connection:
            found = await connection.run_sync(_skeletons_recomputed)
    finally:
        await engine.dispose()
    assert [email for email, _ in found["before"]] == SKELETON_ROWS
    # Before, every invisible variant had a skeleton of its own.
    assert len({skeleton for _, skeleton in found["before"]}) == len(SKELETON_ROWS)
    assert found["upgraded"] == [
        ("root@example.com", email_skeleton("root@example.com")),
        ("ro\u034fot@example.com", None),
        ("ada\ufe0f@example.com", email_skeleton("ada@example.com")),
        ("b\u3164ob@example.com", email_skeleton("bob@example.com")),
        ("bob@example.com", None),
        ("carol@example.com", email_skeleton("carol@example.com")),
    ]
    ids = found["ids"]
    logged = [
        record.getMessage()
        for record in caplog.records
        if record.name == "alembic.runtime.migration" and "look-alike" in record.getMessage()
    ]
    groups = [
        f"look-alike emails: user {ids[keeper]} keeps the skeleton, users {ids[other]} get "
        "none (NULL)"
        for keeper, other in [
            ("root@example.com", "ro\u034fot@example.com"),
            ("b\u3164ob@example.com", "bob@example.com"),
        ]
    ]
    assert sorted(logged) == sorted(groups * 2)  # by each of the two upgrades
    # Downgraded: the previous skeletons again (carol@ keeps the one she got).
    assert found["downgraded"][:5] == found["before"][:5]
    assert found["downgraded"][5] == ("carol@example.com", email_skeleton("carol@example.com"))
