"""bans (users.banned_at, banned_until, ban_reason), impersonation sessions
(sessions.impersonator_id) and their audit actions

Revision ID: b4a9e2c71d30
Revises: 7e3b0a9c4d21
Create Date: 2026-12-08 01:00:00.000000

"""

from collections.abc import Sequence
from contextlib import AbstractContextManager

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

# revision identifiers, used by Alembic.
revision: str = "b4a9e2c71d30"
down_revision: str | None = "7e3b0a9c4d21"
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
)
NEW_ACTIONS = (
    "user.ban",
    "user.unban",
    "user.impersonation_start",
    "user.impersonated_request",
    "user.impersonation_stop",
)
ACTIONS = (*ACTIONS_BEFORE, *NEW_ACTIONS)


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
    # Nullable columns: SQLite adds them in place (no table copy, whose drop of `users`
    # would cascade to every session).
    op.add_column("users", sa.Column("banned_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("banned_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("ban_reason", sa.String(length=500), nullable=True))
    op.add_column("sessions", sa.Column("impersonator_id", sa.Integer(), nullable=True))
    op.create_index(
        op.f("ix_sessions_impersonator_id"), "sessions", ["impersonator_id"], unique=False
    )
    with _audit_events() as batch_op:
        batch_op.alter_column(
            "action", existing_type=_actions(ACTIONS_BEFORE), type_=_actions(ACTIONS)
        )


def downgrade() -> None:
    # The events go with the actions that name them, impersonation sessions with the
    # column that marks them (unmarked, they would pass for the user's own logins).
    actions = ", ".join(f"'{action}'" for action in NEW_ACTIONS)
    op.execute(f"DELETE FROM audit_events WHERE action IN ({actions})")  # noqa: S608
    op.execute("DELETE FROM sessions WHERE impersonator_id IS NOT NULL")
    with _audit_events() as batch_op:
        batch_op.alter_column(
            "action", existing_type=_actions(ACTIONS), type_=_actions(ACTIONS_BEFORE)
        )
    op.drop_index(op.f("ix_sessions_impersonator_id"), table_name="sessions")
    # Not batch mode: SQLite drops a plain column itself.
    op.execute("ALTER TABLE sessions DROP COLUMN impersonator_id")
    for column in ("ban_reason", "banned_until", "banned_at"):
        op.execute(f"ALTER TABLE users DROP COLUMN {column}")
