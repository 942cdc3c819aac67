"""account key in every token; ids never reused

Revision ID: 1575535ff8ec
Revises: fef801514d0c
Create Date: 2026-12-01 16:48:11.000000

"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "1575535ff8ec"
down_revision: str | None = "fef801514d0c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACCOUNT_KEY_BYTES = 16  # backend.models.ACCOUNT_KEY_BYTES when this was written
# SQLite reuses the highest deleted rowid unless a table is AUTOINCREMENT, which only a
# new table can be; PostgreSQL's sequences never go back, and its tables stay as they are.
TABLES = ("users", "refresh_tokens", "audit_events")

users = sa.table("users", sa.column("id", sa.Integer()), sa.column("account_key", sa.String()))


def upgrade() -> None:
    # Tokens issued before now carry no account key and are refused from now on, so
    # their records go. (Recreating `users` on SQLite would delete them anyway, by
    # cascade.) Everyone logs in again once.
    op.execute("DELETE FROM refresh_tokens")
    key_length = 2 * ACCOUNT_KEY_BYTES
    op.add_column("users", sa.Column("account_key", sa.String(key_length), nullable=True))
    connection = op.get_bind()
    user_ids = connection.execute(sa.select(users.c.id)).scalars().all()
    if user_ids:
        connection.execute(
            users.update()
            .where(users.c.id == sa.bindparam("user_id"))
            .values(account_key=sa.bindparam("new_key")),
            [
                {"user_id": user_id, "new_key": secrets.token_hex(ACCOUNT_KEY_BYTES)}
                for user_id in user_ids
            ],
        )
    sqlite = connection.dialect.name == "sqlite"
    for table in TABLES:
        with op.batch_alter_table(
            table,
            recreate="always" if sqlite else "auto",
            table_kwargs={"sqlite_autoincrement": True},
        ) as batch_op:
            if table == "users":
                batch_op.alter_column(
                    "account_key", existing_type=sa.String(key_length), nullable=False
                )


def downgrade() -> None:
    # Recreating `users` on SQLite deletes every refresh token by cascade: end every
    # session on both databases alike.
    op.execute("DELETE FROM refresh_tokens")
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in TABLES:
        with op.batch_alter_table(
            table,
            recreate="always" if sqlite else "auto",
            table_kwargs={"sqlite_autoincrement": False},
        ) as batch_op:
            if table == "users":
                batch_op.drop_column("account_key")
