"""The outbox: a change stages its event here, in its own transaction, as one delivery
row per subscribed endpoint; the dispatcher (backend/webhooks/dispatcher.py) sends them
after the commit. A crash between the commit and the send loses nothing: the rows stay
and are sent when a dispatcher next runs."""

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.clock import utcnow
from backend.models import User, UserPublic
from backend.webhooks.models import (
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
    new_event_id,
)

STAGED = "webhooks_staged"

# The dispatchers running in this process, woken by a commit that staged a delivery so
# that it goes out at once rather than at their next poll.
WAKERS: set[Callable[[], None]] = set()


async def stage(db: AsyncSession, *, event: WebhookEventType, data: dict[str, Any]) -> None:
    """Add `event` with `data` to the outbox of every enabled endpoint subscribed to it,
    in the caller's transaction (the caller commits)."""
    statement = select(WebhookEndpoint.id, WebhookEndpoint.events).where(
        col(WebhookEndpoint.enabled).is_(True)
    )
    endpoint_ids = [
        endpoint_id for endpoint_id, events in (await db.exec(statement)).all() if event in events
    ]
    if not endpoint_ids:
        return
    now = utcnow()
    body = {"type": str(event), "timestamp": now.isoformat(), "data": data}
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    event_id = new_event_id()
    for endpoint_id in endpoint_ids:
        assert endpoint_id is not None
        db.add(
            WebhookDelivery(
                endpoint_id=endpoint_id,
                event_id=event_id,
                event_type=event,
                payload=payload,
                next_attempt_at=now,
                created_at=now,
            )
        )
    db.info[STAGED] = True


def user_data(user: User) -> dict[str, Any]:
    """A user as an event carries it: the public record, never a secret."""
    return UserPublic.model_validate(user).model_dump(mode="json")


async def stage_user(db: AsyncSession, *, event: WebhookEventType, user: User) -> None:
    await stage(db, event=event, data=user_data(user))


async def stage_session_revoked(
    db: AsyncSession, *, session_id: str, user_id: int, reason: str
) -> None:
    data = {"session_id": session_id, "user_id": user_id, "reason": reason}
    await stage(db, event=WebhookEventType.SESSION_REVOKED, data=data)


def _wake_dispatchers(session: Session) -> None:
    if session.info.pop(STAGED, False):
        for wake in WAKERS:
            wake()


def _forget_staged(session: Session, _previous_transaction: object) -> None:
    session.info.pop(STAGED, None)


event.listen(Session, "after_commit", _wake_dispatchers)
event.listen(Session, "after_soft_rollback", _forget_staged)
