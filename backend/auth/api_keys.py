"""Personal API keys for scripts: the one place their protocol lives.

A key is `uak_` and 32 random bytes, shown once when it is made; the database keeps a
SHA-256 of it, so a leaked table gives no usable key. A key speaks for its owner with
the owner's role, limited by its scope (read: GET and HEAD only). It never starts a
session and never reaches the session or key routes (see deps.py), so no key can mint
another or outlive a password change by trading itself for a login.

A key dies, for good, when it expires, is revoked (by its owner, an admin or the CLI),
when its owner is deleted (the foreign key cascades), and when the owner's role or
password changes or the owner is deactivated: those changes call `revoke_all_staged` in
their own transaction, from sessions.end_all_staged, the same step that ends the
owner's sessions. Reactivating an account does not bring its keys back.

- create, revoke: commit once, with their audit event;
- check: the per-request look-up, one query; writes only when last_used_at is more
  than a minute old.
"""

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import crud
from backend.auth.models import (
    API_KEY_PATTERN,
    API_KEY_SHOWN_CHARS,
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyEndReason,
    ApiKeyPublic,
    new_api_key_secret,
)
from backend.clock import utcnow
from backend.db.session import lock_for_update
from backend.errors import BannedError, NotFoundError, ProblemCode, UnauthorizedError
from backend.http.listing import ListQuery
from backend.models import AuditAction, AuditEvent, User

KEY_REFUSED = "The API key is invalid, expired or revoked."
OWNER_CHANGED = (
    "The account changed meanwhile (its password, role or activation, or a logout "
    "everywhere): log in again."
)
# last_used_at is news at this resolution: a script calling every second writes once a
# minute, not once a request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
_WELL_FORMED = re.compile(API_KEY_PATTERN)


@dataclass(frozen=True)
class KeyCaller:
    """Whom an API key speaks for, and the key."""

    user: User
    api_key: ApiKey


def hash_secret(secret: str) -> str:
    """What the database keeps of a key. A plain SHA-256 suffices: the secret is 256
    random bits, not a password, so there is nothing for a slow hash to protect."""
    return hashlib.sha256(secret.encode()).hexdigest()


async def create(
    db: AsyncSession, *, user: User, data: ApiKeyCreate, actor_id: int | None
) -> ApiKeyCreated:
    """A new key for the user, recorded in the audit trail as `actor_id`'s doing; the
    answer is the only place its secret ever appears. Commits."""
    assert user.id is not None
    # The owner's row, locked (SQLite: its write lock) and still as the caller was
    # authenticated: a password or role change, a deactivation or a logout everywhere
    # either commits before this (and the key is refused) or waits for it, and then
    # revokes it with the others. Without the lock a key minted meanwhile would survive.
    owner_unchanged = select(User.id).where(
        col(User.id) == user.id,
        col(User.token_version) == user.token_version,
        col(User.is_active).is_(True),
    )
    if (await db.exec(await lock_for_update(db, owner_unchanged, table=User))).first() is None:
        await db.rollback()
        raise UnauthorizedError(OWNER_CHANGED, code=ProblemCode.ACCOUNT_CHANGED)
    secret = new_api_key_secret()
    now = utcnow()
    api_key = ApiKey(
        user_id=user.id,
        name=data.name,
        scope=data.scope,
        prefix=secret[:API_KEY_SHOWN_CHARS],
        secret_hash=hash_secret(secret),
        created_at=now,
        expires_at=now + timedelta(days=data.expires_in_days),
    )
    db.add(api_key)
    await db.flush()  # its id, for the audit event
    db.add(_audit(AuditAction.API_KEY_CREATE, api_key, actor_id))
    await db.commit()
    return ApiKeyCreated.model_validate(api_key, update={"secret": secret})


async def revoke(
    db: AsyncSession,
    *,
    key_id: int,
    user_id: int | None,
    reason: ApiKeyEndReason,
    actor_id: int | None,
) -> ApiKeyPublic:
    """Revoke a live (unrevoked) key, of `user_id` when given; recorded in the audit
    trail. NotFoundError when there is no such key. Commits."""
    statement = (
        update(ApiKey)
        .where(col(ApiKey.id) == key_id, col(ApiKey.revoked_at).is_(None))
        .values(revoked_at=utcnow(), revoked_reason=reason)
        .returning(ApiKey)
    )
    if user_id is not None:
        statement = statement.where(col(ApiKey.user_id) == user_id)
    revoked: ApiKey | None = (await db.exec(statement)).scalar_one_or_none()
    if revoked is None:
        await db.rollback()
        raise NotFoundError(
            f"There is no live API key {key_id}.", code=ProblemCode.API_KEY_NOT_FOUND
        )
    db.add(_audit(AuditAction.API_KEY_REVOKE, revoked, actor_id, reason=reason))
    await db.commit()
    return ApiKeyPublic.model_validate(revoked)


async def revoke_all_staged(db: AsyncSession, *, user_id: int, reason: ApiKeyEndReason) -> int:
    """Revoke every live key of the user inside the caller's transaction (the account
    change that ends them commits it); how many there were."""
    result = await db.exec(
        update(ApiKey)
        .where(col(ApiKey.user_id) == user_id, col(ApiKey.revoked_at).is_(None))
        .values(revoked_at=utcnow(), revoked_reason=reason)
    )
    return result.rowcount


async def list_live(
    db: AsyncSession, *, user_id: int | None, query: ListQuery
) -> tuple[Sequence[ApiKey], int]:
    """One page of the live (unrevoked) keys of a user, or of everyone's with no user;
    expired ones included, so that their owner sees why a script stopped."""
    live: list[ColumnElement[bool]] = [col(ApiKey.revoked_at).is_(None)]
    if user_id is not None:
        live.append(col(ApiKey.user_id) == user_id)
    return await crud.list_page(db, ApiKey, query, live)


async def check(db: AsyncSession, *, secret: str) -> KeyCaller:
    """The owner a key speaks for, if the key is well formed, known, unexpired and
    unrevoked, and its owner active: one query, the key's row joined with the owner's.
    Every refusal is the same 401, so nothing tells a revoked key from a made-up one."""
    if not _WELL_FORMED.fullmatch(secret):
        raise UnauthorizedError(
            KEY_REFUSED, code=ProblemCode.API_KEY_INVALID
        )  # no query for what cannot be a key
    statement = (
        select(ApiKey, User)
        .join(User, col(User.id) == col(ApiKey.user_id))
        .where(col(ApiKey.secret_hash) == hash_secret(secret))
    )
    row = (await db.exec(statement)).first()
    now = utcnow()
    if row is None:
        raise UnauthorizedError(KEY_REFUSED, code=ProblemCode.API_KEY_INVALID)
    api_key, user = row
    # Before the revocation the ban made: its owner is told of the ban and its end.
    if user.is_active and user.ban_in_force(now):
        raise BannedError(user.banned_until)
    if api_key.revoked_at is not None or api_key.expires_at <= now or not user.is_active:
        raise UnauthorizedError(KEY_REFUSED, code=ProblemCode.API_KEY_INVALID)
    if api_key.last_used_at is None or api_key.last_used_at <= now - LAST_USED_RESOLUTION:
        await _note_use(db, api_key, now)
    return KeyCaller(user=user, api_key=api_key)


async def _note_use(db: AsyncSession, api_key: ApiKey, now: datetime) -> None:
    """Set last_used_at, unless another request did within the minute: the condition is
    in the UPDATE, so concurrent requests write once. Committed at once, a short write
    transaction, before the request's own work."""
    await db.exec(
        update(ApiKey)
        .where(
            col(ApiKey.id) == api_key.id,
            or_(
                col(ApiKey.last_used_at).is_(None),
                col(ApiKey.last_used_at) <= now - LAST_USED_RESOLUTION,
            ),
        )
        .values(last_used_at=now)
    )
    await db.commit()
    api_key.last_used_at = now


def _audit(
    action: AuditAction,
    api_key: ApiKey,
    actor_id: int | None,
    *,
    reason: ApiKeyEndReason | None = None,
) -> AuditEvent:
    # The key's id, name and prefix: enough to find it, never its secret or hash.
    details: dict[str, object] = {
        "key_id": api_key.id,
        "name": api_key.name,
        "prefix": api_key.prefix,
        "scope": str(api_key.scope),
    }
    if reason is not None:
        details["reason"] = reason.value
    return AuditEvent(actor_id=actor_id, action=action, target_id=api_key.user_id, details=details)
