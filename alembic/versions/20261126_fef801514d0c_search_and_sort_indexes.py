"""search and sort indexes

Revision ID: fef801514d0c
Revises: f131358b1c3b
Create Date: 2026-11-26 09:17:58.619820

"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "fef801514d0c"
down_revision: str | None = "f131358b1c3b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Substring search (`q`, `field_like`) compares lower(column) LIKE '%term%'. On
# PostgreSQL trigram GIN indexes answer that without a scan of the table; pg_trgm ships
# with PostgreSQL and is a trusted extension (the database owner may create it).
# PostgreSQL-only, they stay out of the models (backend.db.migrate.UNMODELLED_INDEXES).
TRIGRAM_INDEXES = {"ix_users_email_trgm": "lower(email)", "ix_users_name_trgm": "lower(name)"}


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index("ix_users_created_at_id", ["created_at", "id"], unique=False)
        batch_op.create_index("ix_users_name_id", ["name", "id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for name, expression in TRIGRAM_INDEXES.items():
            op.execute(f"CREATE INDEX {name} ON users USING gin ({expression} gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in TRIGRAM_INDEXES:
            op.execute(f"DROP INDEX {name}")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index("ix_users_name_id")
        batch_op.drop_index("ix_users_created_at_id")
