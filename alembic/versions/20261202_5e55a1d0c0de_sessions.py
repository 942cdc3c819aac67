"""sessions: each refresh-token family becomes a session; tokens belong to it

Revision ID: 5e55a1d0c0de
Revises: 867d22b6c838
Create Date: 2026-12-02 10:00:00.000000

"""

from collections.abc import Sequence
from contextlib import AbstractContextManager

import sqlalchemy as sa
import sqlmodel
from alembic import op
from alembic.operations import BatchOperations

# revision identifiers, used by Alembic.
revision: str = "5e55a1d0c0de"
down_revision: str | None = "867d22b6c838"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# backend.models when this was written.
SESSION_ID_CHARS = 32
END_REASONS = (
    "logout",
    "reuse",
    "logout_all",
    "admin",
    "password_change",
    "role_change",
    "deactivated",
    "expired",
    "idle",
)
ACTIONS_BEFORE = (
    "user.create",
    "user.update",
    "user.role_change",
    "user.deactivate",
    "user.activate",
    "user.delete",
)
ACTIONS = (*ACTIONS_BEFORE, "user.session_end", "user.sessions_end_all")


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
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(length=SESSION_ID_CHARS), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "revoked_reason",
            sa.Enum(
                *END_REASONS,
                name="session_end_reason",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=True,
        ),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("ip_address", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sessions_user_id"), ["user_id"], unique=False)

    # One session per family, as long as its tokens were: from the first login to the
    # last expiry, last used at the last rotation. A family with any revoked token was
    # revoked (the rows a refresh inserted while its family was being revoked are the
    # race sessions fix); a logout and a detected reuse looked alike then: "logout".
    op.execute(
        "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, revoked_at,"
        " revoked_reason)"
        " SELECT family_id, min(user_id), min(created_at), max(created_at), max(expires_at),"
        " max(revoked_at), CASE WHEN max(revoked_at) IS NULL THEN NULL ELSE 'logout' END"
        " FROM refresh_tokens GROUP BY family_id"
    )
    with _rebuilt("refresh_tokens", sqlite) as batch_op:
        batch_op.add_column(
            sa.Column("session_id", sa.String(length=SESSION_ID_CHARS), nullable=True)
        )
    op.execute("UPDATE refresh_tokens SET session_id = family_id")
    with _rebuilt("refresh_tokens", sqlite) as batch_op:
        batch_op.alter_column(
            "session_id", existing_type=sa.String(length=SESSION_ID_CHARS), nullable=False
        )
        batch_op.create_index(batch_op.f("ix_refresh_tokens_session_id"), ["session_id"])
        batch_op.create_foreign_key(
            batch_op.f("fk_refresh_tokens_session_id_sessions"),
            "sessions",
            ["session_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.drop_constraint(batch_op.f("fk_refresh_tokens_user_id_users"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_refresh_tokens_family_id"))
        batch_op.drop_index(batch_op.f("ix_refresh_tokens_user_id"))
        batch_op.drop_column("family_id")
        batch_op.drop_column("user_id")
        batch_op.drop_column("revoked_at")
    with _rebuilt("audit_events", sqlite) as batch_op:
        batch_op.alter_column(
            "action", existing_type=_actions(ACTIONS_BEFORE), type_=_actions(ACTIONS)
        )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # The session-end events go with the actions that name them.
    op.execute(
        "DELETE FROM audit_events WHERE action IN ('user.session_end', 'user.sessions_end_all')"
    )
    with _rebuilt("audit_events", sqlite) as batch_op:
        batch_op.alter_column(
            "action", existing_type=_actions(ACTIONS), type_=_actions(ACTIONS_BEFORE)
        )
    with _rebuilt("refresh_tokens", sqlite) as batch_op:
        batch_op.add_column(sa.Column("family_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("user_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    # Each session becomes a family again; its end, the revocation of every token.
    op.execute(
        "UPDATE refresh_tokens SET family_id = session_id,"
        " user_id = (SELECT user_id FROM sessions WHERE sessions.id = refresh_tokens.session_id),"
        " revoked_at = (SELECT revoked_at FROM sessions"
        " WHERE sessions.id = refresh_tokens.session_id)"
    )
    with _rebuilt("refresh_tokens", sqlite) as batch_op:
        batch_op.alter_column("family_id", existing_type=sa.String(length=32), nullable=False)
        batch_op.alter_column("user_id", existing_type=sa.Integer(), nullable=False)
        batch_op.create_index(batch_op.f("ix_refresh_tokens_family_id"), ["family_id"])
        batch_op.create_index(batch_op.f("ix_refresh_tokens_user_id"), ["user_id"])
        batch_op.create_foreign_key(
            batch_op.f("fk_refresh_tokens_user_id_users"),
            "users",
            ["user_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.drop_constraint(
            batch_op.f("fk_refresh_tokens_session_id_sessions"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_refresh_tokens_session_id"))
        batch_op.drop_column("session_id")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sessions_user_id"))
    op.drop_table("sessions")
