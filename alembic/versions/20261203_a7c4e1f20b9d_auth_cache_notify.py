"""auth_cache: PostgreSQL tells every app worker when a user's or a session's row changes

Revision ID: a7c4e1f20b9d
Revises: 1b52a875e69c
Create Date: 2026-12-03 19:50:00.000000

Each worker caches the per-request check (backend/authcache.py) and listens on the
channel. A trigger, not the app, sends the notification: whatever writes the row (any
worker or host, the CLI, a migration, an operator in psql) notifies, in the writer's
transaction, so only on commit. The payload is the user's id (duplicates within one
transaction are delivered once), or "*" for a TRUNCATE. SQLite has no channel: the
cache is off there (see backend/authcache.py), so nothing to do.
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "a7c4e1f20b9d"
down_revision: str | None = "1b52a875e69c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# backend.auth.authcache.CHANNEL when this was written.
CHANNEL = "auth_cache"
# The column naming the user whose check a row's change affects.
USER_COLUMNS = {"users": "id", "sessions": "user_id"}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in USER_COLUMNS.items():
        op.execute(f"""
            CREATE FUNCTION auth_cache_notify_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'TRUNCATE' THEN
                    PERFORM pg_notify('{CHANNEL}', '*');
                ELSE
                    PERFORM pg_notify('{CHANNEL}', OLD.{column}::text);
                END IF;
                RETURN NULL;
            END $$
        """)
        op.execute(f"""
            CREATE TRIGGER auth_cache_notify AFTER UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION auth_cache_notify_{table}()
        """)
        op.execute(f"""
            CREATE TRIGGER auth_cache_notify_truncate AFTER TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION auth_cache_notify_{table}()
        """)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in USER_COLUMNS:
        op.execute(f"DROP TRIGGER auth_cache_notify_truncate ON {table}")
        op.execute(f"DROP TRIGGER auth_cache_notify ON {table}")
        op.execute(f"DROP FUNCTION auth_cache_notify_{table}()")
