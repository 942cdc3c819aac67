"""auth_events (the sign-in history), and users.user_metadata and users.app_metadata

Revision ID: a17e0b5c3d21
Revises: b7d3c9a4e215
Create Date: 2026-12-08 12:00:00.000000

The metadata columns are JSON objects, '{}' for every existing account: JSONB on
PostgreSQL, with a GIN index each (jsonb_path_ops: the list's key filters ask `@>`, the
only operator it serves, from an index a third the size of the default's); JSON text
on SQLite, which has no such index. PostgreSQL-only, those indexes stay out of the
models (backend.db.migrate.UNMODELLED_INDEXES).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

# revision identifiers, used by Alembic.
revision: str = "a17e0b5c3d21"
down_revision: str | None = "b7d3c9a4e215"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AUTH_EVENT_KINDS = (
    "login_succeeded",
    "login_failed",
    "refresh_failed",
    "logout",
    "registered",
    "rate_limited",
)
METADATA_COLUMNS = ("user_metadata", "app_metadata")
GIN_INDEXES = {f"ix_users_{column}_gin": column for column in METADATA_COLUMNS}


def upgrade() -> None:
    op.create_table(
        "auth_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                *AUTH_EVENT_KINDS, name="kind", native_enum=False, create_constraint=True, length=32
            ),
            nullable=False,
        ),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("ip_address", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_events")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("auth_events", schema=None) as batch_op:
        batch_op.create_index("ix_auth_events_user_id_id", ["user_id", "id"], unique=False)
        batch_op.create_index("ix_auth_events_kind_id", ["kind", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_auth_events_ip_address"), ["ip_address"], unique=False)
        batch_op.create_index(batch_op.f("ix_auth_events_created_at"), ["created_at"], unique=False)

    postgresql = op.get_bind().dialect.name == "postgresql"
    json_type = JSONB() if postgresql else sa.JSON()
    # ADD COLUMN with a constant default: no rebuild of `users` on SQLite (whose DROP
    # TABLE would delete every session by cascade), no rewrite on PostgreSQL.
    for column in METADATA_COLUMNS:
        op.add_column(
            "users",
            sa.Column(column, json_type, server_default=sa.text("'{}'"), nullable=False),
        )
    if postgresql:
        for name, column in GIN_INDEXES.items():
            op.execute(f"CREATE INDEX {name} ON users USING gin ({column} jsonb_path_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in GIN_INDEXES:
            op.execute(f"DROP INDEX {name}")
    for column in METADATA_COLUMNS:
        op.drop_column("users", column)
    with op.batch_alter_table("auth_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_events_created_at"))
        batch_op.drop_index(batch_op.f("ix_auth_events_ip_address"))
        batch_op.drop_index("ix_auth_events_kind_id")
        batch_op.drop_index("ix_auth_events_user_id_id")
    op.drop_table("auth_events")
