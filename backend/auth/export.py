"""One's own data as one document (GET /users/me/export): the profile, the sessions, the
API keys and the audit events about the account. Read in one transaction, so that the
parts agree with each other."""

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import crud
from backend.auth.models import (
    AccountExport,
    ApiKey,
    ApiKeyExport,
    SessionExport,
    UserSession,
)
from backend.clock import utcnow
from backend.models import AuditEventPublic, User, UserPublic


async def export_account(db: AsyncSession, *, user: User) -> AccountExport:
    assert user.id is not None
    user_sessions = await db.exec(
        select(UserSession)
        .where(col(UserSession.user_id) == user.id)
        .order_by(col(UserSession.created_at))
    )
    keys = await db.exec(
        select(ApiKey).where(col(ApiKey.user_id) == user.id).order_by(col(ApiKey.id))
    )
    events = []
    for event in await crud.list_audit_events_about(db, user_id=user.id):
        public = AuditEventPublic.model_validate(event)
        if event.target_id != user.id:
            # The owner's doing to another account: that it happened is the owner's, what
            # it held (an address, a name) is the other account's.
            public.details = {}
        events.append(public)
    return AccountExport(
        exported_at=utcnow(),
        profile=UserPublic.model_validate(user),
        sessions=[SessionExport.model_validate(row) for row in user_sessions],
        api_keys=[ApiKeyExport.model_validate(row) for row in keys],
        audit_events=events,
    )
