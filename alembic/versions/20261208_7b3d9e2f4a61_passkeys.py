"""passkeys: WebAuthn credentials, their ceremonies' challenges, and their audit actions

Revision ID: 7b3d9e2f4a61
Revises: 9d2f0e6b7a11
Create Date: 2026-12-08 00:00:00.000000

"""

from collections.abc import Sequence
from contextlib import AbstractContextManager

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

# revision identifiers, used by Alembic.
revision: str = "7b3d9e2f4a61"
down_revision: str | None = "9d2f0e6b7a11"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# backend.models when this was written.
ACTIONS_BEFORE = (
    "user.create",
    "user.update",
    "user.role_change",
    "user.deactivate",
    "user.activate",
    "user.delete",
    "user.session_end",
    "user.sessions_end_all",
    "user.link_issue",
    "user.link_use",
    "user.api_key_create",
    "user.api_key_revoke",
)
ACTIONS = (*ACTIONS_BEFORE, "user.passkey_add", "user.passkey_remove")
PURPOSES = ("register", "authenticate")


def _actions(values: Sequence[str]) -> sa.Enum:
    return sa.Enum(*values, name="action", native_enum=False, create_constraint=True, length=32)


def _audit_events() -> AbstractContextManager[BatchOperations]:
    # SQLite rebuilds the table to change its CHECK; AUTOINCREMENT must be said again.
    sqlite = op.get_bind().dialect.name == "sqlite"
    return op.batch_alter_table(
        "audit_events",
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},
    )


def upgrade() -> None:
    op.create_table(
        "passkeys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("credential_id", sa.String(length=1364), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("sign_count", sa.BigInteger(), nullable=False),
        sa.Column("transports", sa.JSON(), nullable=False),
        sa.Column("backed_up", sa.Boolean(), nullable=False),
        sa.Column("device_type", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_passkeys_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_passkeys")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("passkeys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_passkeys_user_id"), ["user_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_passkeys_credential_id"), ["credential_id"], unique=True
        )
    op.create_table(
        "passkey_challenges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("challenge_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "purpose",
            sa.Enum(
                *PURPOSES,
                name="passkey_purpose",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("session_id", sa.String(length=32), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_passkey_challenges_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_passkey_challenges_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_passkey_challenges")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("passkey_challenges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_passkey_challenges_challenge_hash"), ["challenge_hash"], unique=True
        )
        batch_op.create_index(
            batch_op.f("ix_passkey_challenges_user_id"), ["user_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_passkey_challenges_session_id"), ["session_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_passkey_challenges_expires_at"), ["expires_at"], unique=False
        )
    with _audit_events() as batch_op:
        batch_op.alter_column(
            "action", existing_type=_actions(ACTIONS_BEFORE), type_=_actions(ACTIONS)
        )


def downgrade() -> None:
    # The passkey events go with the actions that name them.
    op.execute(
        "DELETE FROM audit_events WHERE action IN ('user.passkey_add', 'user.passkey_remove')"
    )
    with _audit_events() as batch_op:
        batch_op.alter_column(
            "action", existing_type=_actions(ACTIONS), type_=_actions(ACTIONS_BEFORE)
        )
    op.drop_table("passkey_challenges")
    op.drop_table("passkeys")
