"""link_tokens.email: the address a link was mailed to

Revision ID: 5a1e7c0de5e1
Revises: c0ffee12a1a1
Create Date: 2026-12-07 18:45:00.000000

A link is refused once its account's address is no longer the one it was mailed to.
Links pending before this were mailed to the account's address of the time, which the
database does not keep: they take the address the account has now.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "5a1e7c0de5e1"
down_revision: str | None = "c0ffee12a1a1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("link_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email", sa.String(length=254), nullable=True))
    op.execute(
        "UPDATE link_tokens SET email = (SELECT email FROM users WHERE users.id = link_tokens.user_id)"
    )
    # SQLite rebuilds link_tokens for this (nothing refers to it); AUTOINCREMENT again.
    with op.batch_alter_table(
        "link_tokens", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.alter_column("email", existing_type=sa.String(length=254), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table(
        "link_tokens", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.drop_column("email")
