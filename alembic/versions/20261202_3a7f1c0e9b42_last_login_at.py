"""last_login_at on users, with a sort index where never-logged-in is the oldest

Revision ID: 3a7f1c0e9b42
Revises: a7c4e1f20b9d
Create Date: 2026-12-02 20:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "3a7f1c0e9b42"
down_revision: str | None = "a7c4e1f20b9d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Never logged in sorts as the oldest login, both ways (crud._page): NULLS FIRST, which
# is SQLite's own order for an ascending index and which it refuses to spell; PostgreSQL
# needs it spelled to walk the index forwards (ascending) and backwards (descending).
# So the index stays out of the models (backend.db.migrate.UNMODELLED_INDEXES).
INDEX = "ix_users_last_login_at_id"


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE INDEX {INDEX} ON users (last_login_at NULLS FIRST, id)")
    else:
        op.execute(f"CREATE INDEX {INDEX} ON users (last_login_at, id)")


def downgrade() -> None:
    op.execute(f"DROP INDEX {INDEX}")
    # Not batch mode: on SQLite it would copy `users` and drop the original, and the
    # drop cascades to every session. SQLite drops a plain column itself since 3.35.
    op.execute("ALTER TABLE users DROP COLUMN last_login_at")
