"""users.email_skeleton: no two accounts' emails may look alike

Revision ID: 867d22b6c838
Revises: 1575535ff8ec
Create Date: 2026-12-01 17:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

from backend.confusables import email_skeleton

# revision identifiers, used by Alembic.
revision: str = "867d22b6c838"
down_revision: str | None = "1575535ff8ec"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email_skeleton", sa.String(length=64), nullable=True))

    # Backfilled oldest first. Look-alikes that already exist cannot both hold their
    # skeleton under a unique index: the older account keeps it, the newer gets NULL and
    # stays as it is (it is neither renamed nor locked out), until its email changes.
    users = sa.table("users", sa.column("id", sa.Integer), sa.column("email", sa.String))
    connection = op.get_bind()
    seen: set[str] = set()
    updates = []
    for user_id, email in connection.execute(sa.select(users).order_by(users.c.id)):
        skeleton = email_skeleton(email)
        if skeleton not in seen:
            seen.add(skeleton)
            updates.append({"user_id": user_id, "skeleton": skeleton})
    if updates:
        connection.execute(
            sa.text("UPDATE users SET email_skeleton = :skeleton WHERE id = :user_id"), updates
        )

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_users_email_skeleton"), ["email_skeleton"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_email_skeleton"))
        batch_op.drop_column("email_skeleton")
