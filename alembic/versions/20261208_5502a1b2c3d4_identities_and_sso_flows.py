"""identities and sso_flows: sign-in with identity providers, and their audit actions

Revision ID: 5502a1b2c3d4
Revises: 7b3d9e2f4a61
Create Date: 2026-12-08 00:15:00.000000

"""

from collections.abc import Sequence
from contextlib import AbstractContextManager

import sqlalchemy as sa
import sqlmodel
from alembic import op
from alembic.operations import BatchOperations

# revision identifiers, used by Alembic.
revision: str = "5502a1b2c3d4"
down_revision: str | None = "7b3d9e2f4a61"
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
)
NEW_ACTIONS = ("user.identity_link", "user.identity_unlink", "user.sso_refuse")
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
    op.create_table(
        "identities",
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_identities_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identities")),
        sa.UniqueConstraint("provider", "subject", name="uq_identities_provider_subject"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identities_user_id"), ["user_id"], unique=False)
    op.create_table(
        "sso_flows",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column(
            "mode",
            sa.Enum(
                "login",
                "link",
                name="sso_mode",
                native_enum=False,
                create_constraint=True,
                length=8,
            ),
            nullable=False,
        ),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("code_verifier", sa.String(length=128), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("return_to", sa.String(length=2048), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("code_hash", sa.String(length=64), nullable=True),
        sa.Column("code_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exchanged_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_sso_flows_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sso_flows")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_sso_flows_code_hash")),
    )
    with op.batch_alter_table("sso_flows", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sso_flows_expires_at"), ["expires_at"], unique=False)
    with _audit_events() as batch_op:
        batch_op.alter_column(
            "action", existing_type=_actions(ACTIONS_BEFORE), type_=_actions(ACTIONS)
        )


def downgrade() -> None:
    # The sign-in events go with the actions that name them.
    names = ", ".join(f"'{action}'" for action in NEW_ACTIONS)
    op.execute(f"DELETE FROM audit_events WHERE action IN ({names})")  # noqa: S608
    with _audit_events() as batch_op:
        batch_op.alter_column(
            "action", existing_type=_actions(ACTIONS), type_=_actions(ACTIONS_BEFORE)
        )
    with op.batch_alter_table("sso_flows", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sso_flows_expires_at"))
    op.drop_table("sso_flows")
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identities_user_id"))
    op.drop_table("identities")
