"""mailed links: link_tokens, users.is_verified, accounts without a password yet

Revision ID: c0ffee12a1a1
Revises: 3a7f1c0e9b42
Create Date: 2026-12-03 20:30:00.000000

Accounts that exist before this are marked verified: they were made when nobody was
asked to prove an address, and EMAIL_VERIFICATION=required would otherwise lock every
one of them out at once. Their owners did not prove anything, but they were trusted
without it until now, and turning verification on is about the accounts made from then on.

An invited account without a password yet has an empty hashed_password, which no
password matches: no new column, and no rebuild of `users` (on SQLite a rebuild drops the
table, which deletes every session by cascade).
"""

from collections.abc import Sequence
from contextlib import AbstractContextManager

import sqlalchemy as sa
import sqlmodel
from alembic import op
from alembic.operations import BatchOperations

# revision identifiers, used by Alembic.
revision: str = "c0ffee12a1a1"
down_revision: str | None = "3a7f1c0e9b42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIONS_BEFORE = (
    "user.create",
    "user.update",
    "user.role_change",
    "user.deactivate",
    "user.activate",
    "user.delete",
    "user.session_end",
    "user.sessions_end_all",
    "user.api_key_create",
    "user.api_key_revoke",
)
ACTIONS = (*ACTIONS_BEFORE, "user.link_issue", "user.link_use")


def _actions(values: Sequence[str]) -> sa.Enum:
    return sa.Enum(*values, name="action", native_enum=False, create_constraint=True, length=32)


def _rebuilt(table: str, sqlite: bool) -> AbstractContextManager[BatchOperations]:
    # SQLite rebuilds the table; AUTOINCREMENT (ids never reused) must be said again.
    return op.batch_alter_table(
        table,
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},
    )


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            # A constant default: SQLite then adds the column in place (see above).
            sa.Column("is_verified", sa.Boolean(), server_default="0", nullable=False)
        )
    op.execute(sa.text("UPDATE users SET is_verified = :yes").bindparams(yes=True))

    op.create_table(
        "link_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column(
            "purpose",
            sa.Enum(
                "invite",
                "reset",
                "verify",
                name="link_purpose",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_link_tokens_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_link_tokens")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("link_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_link_tokens_user_id"), ["user_id"], unique=False)

    with _rebuilt("audit_events", sqlite) as batch_op:
        batch_op.alter_column(
            "action", existing_type=_actions(ACTIONS_BEFORE), type_=_actions(ACTIONS)
        )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.execute("DELETE FROM audit_events WHERE action IN ('user.link_issue', 'user.link_use')")
    with _rebuilt("audit_events", sqlite) as batch_op:
        batch_op.alter_column(
            "action", existing_type=_actions(ACTIONS), type_=_actions(ACTIONS_BEFORE)
        )
    with op.batch_alter_table("link_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_link_tokens_user_id"))
    op.drop_table("link_tokens")
    # Invitations never accepted: accounts nobody has used, which the code before this
    # cannot tell from broken ones (its password check fails on an empty hash).
    op.execute("DELETE FROM users WHERE hashed_password = ''")
    if sqlite:
        # In place (SQLite 3.35+): a batch drop_column would rebuild `users` (see above).
        op.execute("ALTER TABLE users DROP COLUMN is_verified")
    else:
        op.drop_column("users", "is_verified")
