"""users.deletion_scheduled_at, email-change links (link_tokens.new_email and
session_id, the email_change purpose), and the audit actions of a scheduled deletion

Revision ID: b7d3c9a4e215
Revises: 7624233a063f
Create Date: 2026-12-08 01:00:00.000000

"""

from collections.abc import Sequence
from contextlib import AbstractContextManager

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

# revision identifiers, used by Alembic.
revision: str = "b7d3c9a4e215"
down_revision: str | None = "7624233a063f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# backend.models and backend.auth.models when this was written.
PURPOSES_BEFORE = ("invite", "reset", "verify")
PURPOSES = (*PURPOSES_BEFORE, "email_change")
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
    "user.mfa_enable",
    "user.mfa_disable",
    "user.mfa_reset",
    "user.mfa_failure",
    "user.recovery_codes_new",
)
ACTIONS = (*ACTIONS_BEFORE, "user.deletion_schedule", "user.deletion_cancel")


def _purposes(values: Sequence[str]) -> sa.Enum:
    return sa.Enum(
        *values, name="link_purpose", native_enum=False, create_constraint=True, length=16
    )


def _actions(values: Sequence[str]) -> sa.Enum:
    return sa.Enum(*values, name="action", native_enum=False, create_constraint=True, length=32)


def _rebuilt(table: str) -> AbstractContextManager[BatchOperations]:
    # SQLite rebuilds the table to change its CHECK (nothing refers to either table);
    # AUTOINCREMENT must be said again.
    sqlite = op.get_bind().dialect.name == "sqlite"
    return op.batch_alter_table(
        table,
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},
    )


def upgrade() -> None:
    # Not batch mode: SQLite adds a nullable column in place (a copy of `users` would
    # cascade its DROP to every session).
    op.add_column(
        "users", sa.Column("deletion_scheduled_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        op.f("ix_users_deletion_scheduled_at"), "users", ["deletion_scheduled_at"], unique=False
    )
    with _rebuilt("link_tokens") as batch_op:
        batch_op.add_column(sa.Column("new_email", sa.String(length=254), nullable=True))
        batch_op.add_column(sa.Column("session_id", sa.String(length=32), nullable=True))
        batch_op.alter_column(
            "purpose", existing_type=_purposes(PURPOSES_BEFORE), type_=_purposes(PURPOSES)
        )
    with _rebuilt("audit_events") as batch_op:
        batch_op.alter_column(
            "action", existing_type=_actions(ACTIONS_BEFORE), type_=_actions(ACTIONS)
        )


def downgrade() -> None:
    # The events and links go with the values that name them.
    op.execute(
        "DELETE FROM audit_events "
        "WHERE action IN ('user.deletion_schedule', 'user.deletion_cancel')"
    )
    with _rebuilt("audit_events") as batch_op:
        batch_op.alter_column(
            "action", existing_type=_actions(ACTIONS), type_=_actions(ACTIONS_BEFORE)
        )
    op.execute("DELETE FROM link_tokens WHERE purpose = 'email_change'")
    with _rebuilt("link_tokens") as batch_op:
        batch_op.alter_column(
            "purpose", existing_type=_purposes(PURPOSES), type_=_purposes(PURPOSES_BEFORE)
        )
        batch_op.drop_column("session_id")
        batch_op.drop_column("new_email")
    op.drop_index(op.f("ix_users_deletion_scheduled_at"), table_name="users")
    op.execute("ALTER TABLE users DROP COLUMN deletion_scheduled_at")
