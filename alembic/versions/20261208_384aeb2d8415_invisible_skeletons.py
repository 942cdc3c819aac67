"""users.email_skeleton recomputed: invisible characters no longer tell emails apart

Revision ID: 384aeb2d8415
Revises: 5a1e7c0de5e1
Create Date: 2026-12-08 10:00:00.000000

The skeleton now drops default-ignorable and format characters, so `ro\\u034fot@...`,
`root\\ufe0f@...` and `ro\\u3164ot@...` share `root@...`'s. Look-alikes that got in before
cannot both hold it under the unique index: the oldest account (lowest id) keeps it,
the others get NULL and stay as they are (neither renamed nor locked out; NULL only
means no newer account is refused for looking like them) until their email changes.
Each such group is logged by id.
"""

import hashlib
import logging
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import sqlalchemy as sa
from alembic import op

# Upgrade imports the function, not a frozen copy: what it must leave is the skeletons
# crud computes and compares with, this module's. If the function changes again, that
# change comes with a migration of its own that recomputes every row again (as
# confusables.py says), and the result depends only on the emails and ids, whichever
# function ran here before. Downgrade's function is frozen below: it is the past.
from backend.confusables import _REDUNDANT_DOT, _prototypes, email_skeleton

# revision identifiers, used by Alembic.
revision: str = "384aeb2d8415"
down_revision: str | None = "5a1e7c0de5e1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

logger = logging.getLogger("alembic.runtime.migration")

T = TypeVar("T")

BATCH_ROWS = 1000  # rows read, and ids or values sent, per statement

users = sa.table(
    "users",
    sa.column("id", sa.Integer),
    sa.column("email", sa.String),
    sa.column("email_skeleton", sa.String),
)


def upgrade() -> None:
    _recompute(email_skeleton)


def downgrade() -> None:
    # Back to the skeletons the previous code computes and compares with: left as they
    # are, `r\u03bf\u034fot@...` (a Greek o) would no longer meet `ro\u034fot@...`'s.
    _recompute(_email_skeleton_before)


def _email_skeleton_before(email: str) -> str:
    """email_skeleton as it was before this revision, frozen here: invisible characters
    kept. Over the shipped data file (Unicode 13.0.0 here), as it was then."""
    text = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", email).lower())
    prototypes = _prototypes()
    text = "".join(prototypes.get(char, char) for char in text)
    text = _REDUNDANT_DOT.sub("", unicodedata.normalize("NFD", text))
    return hashlib.sha256(text.encode()).hexdigest()


def _recompute(skeleton_of: Callable[[str], str]) -> None:
    connection = op.get_bind()
    changed = _changed_skeletons(connection, skeleton_of)
    contenders: dict[str, list[int]] = defaultdict(list)
    for user_id, skeleton in changed.items():
        contenders[skeleton].append(user_id)
    # A row whose stored skeleton is already right contends for it too.
    for skeletons in _batches(list(contenders)):
        holders = connection.execute(
            sa.select(users.c.id, users.c.email_skeleton).where(
                users.c.email_skeleton.in_(skeletons)
            )
        )
        for user_id, skeleton in holders:
            if user_id not in changed:
                contenders[skeleton].append(user_id)
    to_clear = set(changed)
    to_set: list[dict[str, object]] = []
    for skeleton, user_ids in contenders.items():
        keeper, *others = sorted(user_ids)
        if keeper in changed:
            to_set.append({"user_id": keeper, "skeleton": skeleton})
        if others:
            to_clear.update(others)
            logger.warning(
                "look-alike emails: user %d keeps the skeleton, users %s get none (NULL)",
                keeper,
                ", ".join(map(str, others)),
            )
    # Cleared first: a row may take the skeleton another changed row still holds.
    for user_ids in _batches(sorted(to_clear)):
        connection.execute(
            sa.update(users).where(users.c.id.in_(user_ids)).values(email_skeleton=None)
        )
    for rows in _batches(to_set):
        connection.execute(
            sa.text("UPDATE users SET email_skeleton = :skeleton WHERE id = :user_id"), rows
        )


def _batches(items: Sequence[T]) -> Iterator[Sequence[T]]:
    # itertools.batched is Python 3.12's; this project supports 3.11.
    for start in range(0, len(items), BATCH_ROWS):
        yield items[start : start + BATCH_ROWS]


def _changed_skeletons(
    connection: sa.Connection, skeleton_of: Callable[[str], str]
) -> dict[int, str]:
    """Each user whose stored skeleton differs from skeleton_of(email), NULLs
    included, with the new one; read in batches by id. Only these are kept in memory:
    the few addresses with invisible characters and the look-alikes left NULL before."""
    changed: dict[int, str] = {}
    last_id: int | None = None
    while True:
        query = sa.select(users).order_by(users.c.id).limit(BATCH_ROWS)
        if last_id is not None:
            query = query.where(users.c.id > last_id)
        rows = connection.execute(query).all()
        if not rows:
            return changed
        for user_id, email, stored in rows:
            skeleton = skeleton_of(email)
            if skeleton != stored:
                changed[user_id] = skeleton
        last_id = rows[-1].id
