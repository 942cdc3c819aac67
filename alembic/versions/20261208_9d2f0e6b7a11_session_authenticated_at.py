"""sessions.authenticated_at: when the session last proved its user (login or
POST /auth/reauthenticate); a session that predates it counts from its login

Revision ID: 9d2f0e6b7a11
Revises: 384aeb2d8415
Create Date: 2026-12-08 00:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "9d2f0e6b7a11"
down_revision: str | None = "384aeb2d8415"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant server default fills the existing rows in place (SQLite adds a NOT NULL
    # column only with one, and a table copy's drop would cascade to every refresh
    # token); the UPDATE then gives each its login time. The models always set the value.
    op.add_column(
        "sessions",
        sa.Column(
            "authenticated_at",
            sa.DateTime(timezone=True),
            server_default="1970-01-01 00:00:00+00:00",
            nullable=False,
        ),
    )
    op.execute("UPDATE sessions SET authenticated_at = created_at")


def downgrade() -> None:
    # Not batch mode, as for users.last_login_at: SQLite drops a plain column itself.
    op.execute("ALTER TABLE sessions DROP COLUMN authenticated_at")
