"""What admins do for support: ban and unban an account, and the audit trail of an
impersonation session's requests (the session itself is started and stopped by
sessions.start_impersonation and sessions.stop_impersonation).

A ban is three columns on the user (banned_at, banned_until, ban_reason), in force
until banned_until or for good (User.ban_in_force). It is checked, against the clock,
wherever a deactivation is: the login, the refresh, every request with an access token
(sessions._check_user, which the auth cache answers from memory: the ban's UPDATE of the
user's row makes every worker forget that user, as a deactivation's does) and every
request with an API key. Banning also ends every session and API key of the user, and
the impersonations they opened, in its transaction: when the ban ends, by the clock or
lifted, the user logs in again and makes new keys. A temporary ban would otherwise hand
back sessions and months-long keys that were in a banned user's hands, and a ban laid
on a stolen account would leave the thief's tokens waiting for it to lapse.
"""

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import crud
from backend.auth import api_keys, sessions
from backend.auth.models import ApiKeyEndReason, SessionEndReason
from backend.clock import utcnow
from backend.errors import ConflictError, ProblemCode, UserGoneError
from backend.models import AuditAction, BanRequest, User, UserRole
from backend.webhooks import outbox
from backend.webhooks.models import WebhookEventType

logger = logging.getLogger(__name__)


async def ban(db: AsyncSession, *, user: User, request: BanRequest, actor_id: int) -> User:
    """Ban the user (again: a new reason and end replace the old), end their sessions
    and keys, and record it; commits. Never oneself, nor the last admin who could act."""
    assert user.id is not None
    if user.id == actor_id:
        raise ConflictError("You cannot ban yourself.", code=ProblemCode.CANNOT_BAN_SELF)
    if user.role == UserRole.ADMIN:
        await crud.ensure_another_active_admin(db, user=user)
    now = utcnow()
    values = {"banned_at": now, "banned_until": request.until, "ban_reason": request.reason}
    # The user's row first (the lock order of auth/sessions.py), with a new token version.
    updated = await crud.update_user_row(
        db, [col(User.id) == user.id], values, now=now, revoke=True
    )
    if updated is None:
        await db.rollback()
        raise UserGoneError()
    await sessions.end_all_staged(db, user_id=user.id, reason=SessionEndReason.ADMIN)
    await api_keys.revoke_all_staged(db, user_id=user.id, reason=ApiKeyEndReason.ADMIN)
    until = request.until.isoformat() if request.until is not None else None
    crud.add_audit_event(
        db,
        action=AuditAction.BAN,
        actor_id=actor_id,
        target_id=user.id,
        details={"reason": request.reason, "until": until},
    )
    await outbox.stage_user(db, event=WebhookEventType.USER_BANNED, user=updated)
    await db.commit()
    return updated


async def unban(db: AsyncSession, *, user: User, actor_id: int) -> User:
    """Lift the user's ban, in force or lapsed (its record goes too); commits. 409 when
    there is none."""
    user_id = user.id  # now: a rollback expires the loaded row
    assert user_id is not None
    cleared = {"banned_at": None, "banned_until": None, "ban_reason": None}
    conditions = [col(User.id) == user_id, col(User.banned_at).is_not(None)]
    updated = await crud.update_user_row(db, conditions, cleared, now=utcnow(), revoke=False)
    if updated is None:
        await db.rollback()
        if await crud.get_user(db, user_id=user_id) is None:
            raise UserGoneError()
        raise ConflictError("This user is not banned.", code=ProblemCode.NOT_BANNED)
    crud.add_audit_event(db, action=AuditAction.UNBAN, actor_id=actor_id, target_id=user_id)
    await db.commit()
    return updated


@dataclass(frozen=True)
class ImpersonatedRequest:
    """One request of an impersonation session, as its audit event records it."""

    admin_id: int
    user_id: int
    session_id: str
    method: str
    at: datetime


async def record_impersonated_request(
    db: AsyncSession, request: ImpersonatedRequest, *, route: str, status: int
) -> None:
    """Write the audit event of an impersonated request, once its response is sent
    (deps.get_caller queues it among the request's after-response hooks), in a session of
    its own; commits. A missed event is logged, never raised: the client has its answer."""
    try:
        crud.add_audit_event(
            db,
            action=AuditAction.IMPERSONATED_REQUEST,
            actor_id=request.admin_id,
            target_id=request.user_id,
            details={
                "session_id": request.session_id,
                "method": request.method,
                "route": route,
                "status": status,
                "at": request.at.isoformat(),
            },
        )
        await db.commit()
    except (SQLAlchemyError, OSError, TimeoutError) as error:
        logger.error(
            "impersonated request not audited (admin %s as user %s, %s %s): %r",
            request.admin_id,
            request.user_id,
            request.method,
            route,
            error,
        )
