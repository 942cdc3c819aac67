"""second factors: totp_factors, recovery_codes, mfa_challenges, sessions.restricted,
and their audit actions

Revision ID: 7624233a063f
Revises: b4a9e2c71d30
Create Date: 2026-12-08 00:10:00.000000

"""

from collections.abc import Sequence
from contextlib import AbstractContextManager

import sqlalchemy as sa
import sqlmodel
from alembic import op
from alembic.operations import BatchOperations

# revision identifiers, used by Alembic.
revision: str = "7624233a063f"
down_revision: str | None = "b4a9e2c71d30"
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
    "user.passkey_add",
    "user.passkey_remove",
    "user.identity_link",
    "user.identity_unlink",
    "user.sso_refuse",
    "webhook.create",
    "webhook.update",
    "webhook.delete",
    "webhook.disable",
    "user.ban",
    "user.unban",
    "user.impersonation_start",
    "user.impersonated_request",
    "user.impersonation_stop",
)
MFA_ACTIONS = (
    "user.mfa_enable",
    "user.mfa_disable",
    "user.mfa_reset",
    "user.mfa_failure",
    "user.recovery_codes_new",
)
ACTIONS = (*ACTIONS_BEFORE, *MFA_ACTIONS)


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
        "totp_factors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("secret_encrypted", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_step", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_totp_factors_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_totp_factors")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("totp_factors", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_totp_factors_user_id"), ["user_id"], unique=True)
    op.create_table(
        "recovery_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_recovery_codes_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recovery_codes")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("recovery_codes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_recovery_codes_user_id"), ["user_id"], unique=False)
    op.create_table(
        "mfa_challenges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_mfa_challenges_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mfa_challenges")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_mfa_challenges_token_hash")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("mfa_challenges", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mfa_challenges_user_id"), ["user_id"], unique=False)
    # Not batch mode: SQLite would copy the table, and the copy's drop would cascade to
    # every refresh token. A constant server default fills the existing rows in place:
    # no session is restricted until a login under MFA_REQUIRED makes one so.
    op.add_column(
        "sessions",
        sa.Column("restricted", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    with _audit_events() as batch_op:
        batch_op.alter_column(
            "action", existing_type=_actions(ACTIONS_BEFORE), type_=_actions(ACTIONS)
        )


def downgrade() -> None:
    # The second-factor events go with the actions that name them.
    names = ", ".join(f"'{action}'" for action in MFA_ACTIONS)
    op.execute(f"DELETE FROM audit_events WHERE action IN ({names})")  # noqa: S608
    with _audit_events() as batch_op:
        batch_op.alter_column(
            "action", existing_type=_actions(ACTIONS), type_=_actions(ACTIONS_BEFORE)
        )
    op.execute("ALTER TABLE sessions DROP COLUMN restricted")
    with op.batch_alter_table("mfa_challenges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mfa_challenges_user_id"))
    op.drop_table("mfa_challenges")
    with op.batch_alter_table("recovery_codes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recovery_codes_user_id"))
    op.drop_table("recovery_codes")
    with op.batch_alter_table("totp_factors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_totp_factors_user_id"))
    op.drop_table("totp_factors")
