"""Keyword-only async functions over an AsyncSession. No HTTP here."""

import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, delete, false, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.config import Settings
from backend.confusables import email_skeleton
from backend.errors import (
    BadRequestError,
    ConflictError,
    EmailLookalikeError,
    EmailTakenError,
    ForbiddenError,
    PreconditionFailedError,
    UnauthorizedError,
    UserGoneError,
)
from backend.listing import Filter, ListQuery
from backend.models import (
    AuditAction,
    AuditEvent,
    LoginResponse,
    RefreshToken,
    RegisterRequest,
    TokenClaims,
    User,
    UserCreate,
    UserPublic,
    UserRole,
    UserUpdate,
    utcnow,
)
from backend.security import ACCESS, REFRESH, PasswordHasher, create_token, hash_token_id

ModelT = TypeVar("ModelT", User, AuditEvent)
NOT_HONOURED = "The token is invalid or has been revoked."


async def get_user(session: AsyncSession, *, user_id: int) -> User | None:
    return await session.get(User, user_id)


async def get_user_by_email(session: AsyncSession, *, email: str) -> User | None:
    result = await session.exec(select(User).where(User.email == email.lower()))
    return result.first()


async def list_users(session: AsyncSession, *, query: ListQuery) -> tuple[Sequence[User], int]:
    """One page of the users matching the query, and how many match in all."""
    search = []
    if query.search:
        term = query.search.lower()
        # lower() on both, to match the trigram indexes on PostgreSQL (see the migrations).
        search.append(
            or_(
                func.lower(User.email).contains(term, autoescape=True),
                func.lower(User.name).contains(term, autoescape=True),
            )
        )
    return await _page(session, User, query, search)


async def list_audit_events(
    session: AsyncSession, *, query: ListQuery
) -> tuple[Sequence[AuditEvent], int]:
    return await _page(session, AuditEvent, query, [])


async def _page(
    session: AsyncSession,
    model: type[ModelT],
    query: ListQuery,
    extra_conditions: list[ColumnElement[bool]],
) -> tuple[Sequence[ModelT], int]:
    conditions = [_condition(model, condition) for condition in query.filters]
    conditions += extra_conditions
    order = [
        getattr(model, name).desc() if descending else getattr(model, name).asc()
        for name, descending in query.sort
    ]
    if "id" not in {name for name, _ in query.sort}:
        # Ties broken by id, in the direction of the last key, so that an index on
        # (key, id) gives the whole order in one scan, forwards or backwards.
        descending = bool(query.sort) and query.sort[-1][1]
        order.append(col(model.id).desc() if descending else col(model.id).asc())
    # The page's ids first, then their rows: a deep OFFSET then skips index entries
    # (an index-only scan) instead of fetching every skipped row (10x at page 5,000).
    ids = (
        select(model.id)
        .where(*conditions)
        .order_by(*order)
        .offset(query.offset)
        .limit(query.limit)
        .subquery()
    )
    page = select(model).join(ids, col(model.id) == ids.c.id).order_by(*order)
    rows = (await session.exec(page)).all()
    total = (await session.exec(select(func.count()).select_from(model).where(*conditions))).one()
    return rows, total


def _condition(model: type[SQLModel], condition: Filter) -> ColumnElement[bool]:
    column = getattr(model, condition.field)
    value = condition.value
    match condition.operator:
        case "eq":
            return column == value  # type: ignore[no-any-return]
        case "in":
            return column.in_(value)  # type: ignore[no-any-return]
        case "ne":
            return column != value  # type: ignore[no-any-return]
        case "gt":
            return column > value  # type: ignore[no-any-return]
        case "gte":
            return column >= value  # type: ignore[no-any-return]
        case "lt":
            return column < value  # type: ignore[no-any-return]
        case "lte":
            return column <= value  # type: ignore[no-any-return]
        case "like":
            return func.lower(column).contains(str(value).lower(), autoescape=True)


async def create_user(
    session: AsyncSession,
    *,
    data: UserCreate,
    hasher: PasswordHasher,
    audit: bool,
    actor_id: int | None = None,
) -> User:
    """Insert a user; the unique indexes (email, and its confusable skeleton), not a
    prior look-up, decide duplicates and look-alikes.

    With `audit`, the creation is recorded in the audit trail, in the same transaction,
    as `actor_id`'s doing (an admin, or None for the CLI).
    """
    user = await _insert_user(session, data=data, hasher=hasher)
    if audit:
        details = {"email": user.email, "role": str(user.role)}
        session.add(
            AuditEvent(
                actor_id=actor_id, action=AuditAction.CREATE, target_id=user.id, details=details
            )
        )
    await session.commit()
    return user


async def register(
    session: AsyncSession, *, data: RegisterRequest, hasher: PasswordHasher, settings: Settings
) -> LoginResponse:
    """Create an account and log it in, in one transaction: a client that gets no answer
    may retry without finding its email taken by an account it never heard of."""
    user = await _insert_user(session, data=data, hasher=hasher)
    return await issue_tokens(session, user=user, settings=settings)


async def _insert_user(
    session: AsyncSession, *, data: UserCreate | RegisterRequest, hasher: PasswordHasher
) -> User:
    """Add a user and flush it (its id assigned, the email's uniqueness and look-alikes
    checked); the caller commits."""
    hashed_password = await _hash(session, hasher, data.password)
    user = User.model_validate(
        data,
        update={"hashed_password": hashed_password, "email_skeleton": email_skeleton(data.email)},
    )
    session.add(user)
    async with _email_must_be_free(session, email=user.email):
        await session.flush()
    return user


async def update_user(
    session: AsyncSession,
    *,
    user: User,
    changes: UserUpdate,
    hasher: PasswordHasher,
    actor_id: int | None = None,
    expected_versions: Collection[int] | None = None,
) -> User:
    """Apply the fields sent, in one UPDATE of just those columns (no read-modify-write),
    and record the change in the audit trail in the same transaction.

    With expected_versions (the versions the caller read), a row changed since then is
    left alone and PreconditionFailedError raised.
    """
    updated = await _update_user(
        session,
        user=user,
        changes=changes,
        hasher=hasher,
        actor_id=actor_id,
        expected_versions=expected_versions,
    )
    await session.commit()
    return updated


async def _update_user(
    session: AsyncSession,
    *,
    user: User,
    changes: UserUpdate,
    hasher: PasswordHasher,
    actor_id: int | None,
    expected_versions: Collection[int] | None = None,
) -> User:
    """update_user's UPDATE and audit events, for the caller to commit."""
    values = {
        name: value
        for name, value in changes.model_dump(exclude_unset=True, exclude={"password"}).items()
        if getattr(user, name) != value
    }
    if "email" in values:
        values["email_skeleton"] = email_skeleton(values["email"])
    if changes.password is not None:
        values["hashed_password"] = await _hash(session, hasher, changes.password)
    role_changed = "role" in values
    deactivated = values.get("is_active") is False
    if (role_changed or deactivated) and user.role == UserRole.ADMIN:
        await _ensure_another_active_admin(session, user=user)
    # A role change, a deactivation or a new password refuses every token issued so far.
    revoke = role_changed or deactivated or "hashed_password" in values
    statement = (
        update(User)
        .where(col(User.id) == user.id)
        .values(
            **values,
            updated_at=utcnow(),
            version=col(User.version) + 1,
            token_version=col(User.token_version) + int(revoke),
        )
        .returning(User)
        .execution_options(populate_existing=True)
    )
    if expected_versions is not None:
        statement = statement.where(col(User.version).in_(expected_versions))
    events = _audit_update(user, values, actor_id)  # before RETURNING refreshes `user`
    async with _email_must_be_free(session, email=values.get("email")):
        updated: User | None = (await session.exec(statement)).scalar_one_or_none()
        if updated is None:
            await session.rollback()
            raise PreconditionFailedError() if expected_versions is not None else UserGoneError()
        session.add_all(events)
        await session.flush()  # a duplicate email is refused here, inside the guard
    return updated


def _audit_update(user: User, values: dict[str, Any], actor_id: int | None) -> list[AuditEvent]:
    events = []
    if "role" in values:
        details = {"from": str(user.role), "to": str(values["role"])}
        events.append(
            AuditEvent(
                actor_id=actor_id,
                action=AuditAction.ROLE_CHANGE,
                target_id=user.id,
                details=details,
            )
        )
    if "is_active" in values:
        action = AuditAction.ACTIVATE if values["is_active"] else AuditAction.DEACTIVATE
        events.append(AuditEvent(actor_id=actor_id, action=action, target_id=user.id))
    # Names of the changed fields only: never a value, so never a password or its hash.
    fields = sorted(
        "password" if name == "hashed_password" else name
        for name in values
        if name not in {"role", "is_active", "email_skeleton"}
    )
    if fields:
        events.append(
            AuditEvent(
                actor_id=actor_id,
                action=AuditAction.UPDATE,
                target_id=user.id,
                details={"fields": fields},
            )
        )
    return events


async def delete_user(
    session: AsyncSession,
    *,
    user: User,
    actor_id: int | None,
    expected_versions: Collection[int] | None = None,
) -> None:
    if user.id == actor_id:
        raise ConflictError("You cannot delete your own account.")
    if user.role == UserRole.ADMIN and user.is_active:
        await _ensure_another_active_admin(session, user=user)
    statement = delete(User).where(col(User.id) == user.id)
    if expected_versions is not None:
        statement = statement.where(col(User.version).in_(expected_versions))
    deleted = await session.exec(statement)
    if deleted.rowcount != 1:
        await session.rollback()
        raise PreconditionFailedError() if expected_versions is not None else UserGoneError()
    session.add(
        AuditEvent(
            actor_id=actor_id,
            action=AuditAction.DELETE,
            target_id=user.id,
            details={"email": user.email},
        )
    )
    await session.commit()


async def log_in(
    session: AsyncSession, *, email: str, password: str, hasher: PasswordHasher, settings: Settings
) -> LoginResponse | None:
    """Tokens for the user whose password this is, or None; unknown emails cost one
    verify too. A rehash (BCRYPT_ROUNDS changed) is written with the new refresh token."""
    user = await get_user_by_email(session, email=email)
    matched, new_hash = await _verify(
        session, hasher, password, user.hashed_password if user else None
    )
    if user is None or not matched:
        return None
    if not user.is_active:
        raise ForbiddenError("This account is deactivated.")
    if new_hash is not None:  # BCRYPT_ROUNDS changed, or the hash predates NFKC
        user.hashed_password = new_hash
        session.add(user)
    return await issue_tokens(session, user=user, settings=settings)


async def change_password(
    session: AsyncSession,
    *,
    user: User,
    current_password: str,
    new_password: str,
    hasher: PasswordHasher,
    settings: Settings,
) -> LoginResponse:
    """Set a new password once the current one is proven: every token of the user ends,
    and a new pair is issued in the same transaction."""
    matched, _ = await _verify(session, hasher, current_password, user.hashed_password)
    if not matched:
        raise BadRequestError("The current password is incorrect.")
    changes = UserUpdate(password=new_password)
    updated = await _update_user(
        session, user=user, changes=changes, hasher=hasher, actor_id=user.id
    )
    return await issue_tokens(session, user=updated, settings=settings)


async def _hash(session: AsyncSession, hasher: PasswordHasher, password: str) -> str:
    await _release_connection(session)
    return await hasher.hash(password)


async def _verify(
    session: AsyncSession, hasher: PasswordHasher, password: str, hashed_password: str | None
) -> tuple[bool, str | None]:
    await _release_connection(session)
    return await hasher.verify(password, hashed_password)


async def _release_connection(session: AsyncSession) -> None:
    """End the session's read-only transaction, returning its pooled connection, before
    seconds of waiting for a password hash: a burst of logins holding connections
    "idle in transaction" starved every other request of the pool (issue 16: 22
    concurrent logins held all 20). Rows already loaded stay usable (expire_on_commit
    is off); the next statement opens a new, short transaction."""
    await session.commit()


async def get_token_user(session: AsyncSession, *, claims: TokenClaims) -> User:
    """The user a verified token speaks for, if the token is still honoured."""
    user = await get_user(session, user_id=claims.sub)
    # One message for a deleted user, another account that has its id now (of which
    # nothing may show, not even that it is deactivated) and a revoked token.
    if user is None or user.account_key != claims.acc:
        raise UnauthorizedError(NOT_HONOURED)
    if not user.is_active:
        raise ForbiddenError("This account is deactivated.")
    if user.token_version != claims.ver:
        raise UnauthorizedError(NOT_HONOURED)
    return user


async def _ensure_another_active_admin(session: AsyncSession, *, user: User) -> None:
    # Locking every active admin row (in id order, so no deadlock) serialises two
    # admins demoting each other: the second sees the first's change and is refused.
    if session.get_bind().dialect.name == "sqlite":
        # SQLite ignores FOR UPDATE; an empty UPDATE takes its single write lock instead.
        await session.exec(update(User).where(false()).values(id=User.id))
    statement = (
        select(User.id)
        .where(User.role == UserRole.ADMIN, col(User.is_active).is_(True))
        .order_by(col(User.id))
        .with_for_update()
    )
    admin_ids = (await session.exec(statement)).all()
    if not any(admin_id != user.id for admin_id in admin_ids):
        raise ConflictError("The last active admin cannot be demoted, deactivated or deleted.")


@asynccontextmanager
async def _email_must_be_free(session: AsyncSession, *, email: str | None) -> AsyncIterator[None]:
    """Turn a unique index's refusal of a taken email into EmailTakenError, or of a
    look-alike of another account's into EmailLookalikeError."""
    try:
        yield
    except IntegrityError as error:
        await session.rollback()
        refusal = str(error.orig)
        if "email" not in refusal:
            raise
        # The same email breaks both indexes, and either may be the one reported.
        if (
            "email_skeleton" in refusal
            and email is not None
            and await get_user_by_email(session, email=email) is None
        ):
            raise EmailLookalikeError() from error
        raise EmailTakenError() from error


async def ensure_user(session: AsyncSession, *, data: UserCreate, hasher: PasswordHasher) -> bool:
    """Create the user unless the email exists (never touching an existing password)."""
    if await get_user_by_email(session, email=data.email) is not None:
        return False
    try:
        await create_user(session, data=data, hasher=hasher, audit=True)
    except EmailTakenError:  # another worker created it meanwhile
        return False
    return True


async def issue_tokens(session: AsyncSession, *, user: User, settings: Settings) -> LoginResponse:
    """A new session: an access + refresh pair, the refresh token the first of its family."""
    await _lock_owner(session, user=user)
    return await _issue_pair(session, user=user, settings=settings, family_id=uuid.uuid4().hex)


async def rotate_refresh_token(
    session: AsyncSession, *, record: RefreshToken, user: User, settings: Settings
) -> LoginResponse:
    """Trade a refresh token for a new pair in its family, once and only once."""
    await _lock_owner(session, user=user)
    await _retire(session, record=record, grace_seconds=settings.REFRESH_REUSE_GRACE_SECONDS)
    return await _issue_pair(session, user=user, settings=settings, family_id=record.family_id)


async def _lock_owner(session: AsyncSession, *, user: User) -> None:
    """Lock the user's row before touching its refresh tokens, in the order the user's
    deletion and logout-all take them (the row, then its tokens): the other order
    deadlocks with them on PostgreSQL. A user deleted meanwhile gets nothing."""
    if session.get_bind().dialect.name == "sqlite":
        # SQLite ignores FOR UPDATE and begins a transaction only at its first write: a
        # no-op UPDATE takes the single write lock at once, and finds the row or not.
        touched = await session.exec(update(User).where(col(User.id) == user.id).values(id=User.id))
        found = touched.rowcount == 1
    else:
        locked = await session.exec(
            select(User.id).where(col(User.id) == user.id).with_for_update(key_share=True)
        )
        found = locked.first() is not None
    if not found:
        await session.rollback()
        raise UnauthorizedError("This account was deleted meanwhile.")


async def _issue_pair(
    session: AsyncSession, *, user: User, settings: Settings, family_id: str
) -> LoginResponse:
    """An access + refresh pair; the refresh token is recorded (hashed) in its family.

    Expired refresh records of this user are pruned here, lazily, instead of by a job.
    """
    assert user.id is not None
    access_token, _ = create_token(user, ACCESS, settings)
    refresh_token, claims = create_token(user, REFRESH, settings, family=family_id)
    now = utcnow()
    await session.exec(
        delete(RefreshToken).where(
            col(RefreshToken.user_id) == user.id, col(RefreshToken.expires_at) < now
        )
    )
    session.add(
        RefreshToken(
            jti_hash=hash_token_id(claims.jti),
            family_id=family_id,
            user_id=user.id,
            created_at=now,
            expires_at=datetime.fromtimestamp(claims.exp, UTC),
        )
    )
    await session.commit()
    return LoginResponse(
        access_token=access_token,
        refresh_token=refresh_token,
        expires_in=settings.ACCESS_TOKEN_EXPIRE_MINUTES * 60,
        user=UserPublic.model_validate(user),
    )


async def get_refresh_token(session: AsyncSession, *, claims: TokenClaims) -> RefreshToken | None:
    statement = select(RefreshToken).where(RefreshToken.jti_hash == hash_token_id(claims.jti))
    record = (await session.exec(statement)).first()
    if record is None or record.user_id != claims.sub or record.family_id != claims.fam:
        return None
    return record


async def _retire(session: AsyncSession, *, record: RefreshToken, grace_seconds: int) -> None:
    """Mark a refresh token used, so it can be rotated once, and only once.

    A token presented again after its rotation means it leaked (or a client kept an
    old copy): its whole family is revoked, unless the second use comes within the
    grace window, which is what two tabs refreshing at the same moment look like.
    """
    now = utcnow()
    # A conditional UPDATE, so two concurrent refreshes cannot both win.
    retired = await session.exec(
        update(RefreshToken)
        .where(
            col(RefreshToken.id) == record.id,
            col(RefreshToken.used_at).is_(None),
            col(RefreshToken.revoked_at).is_(None),
        )
        .values(used_at=now)
    )
    if retired.rowcount == 1:
        return
    # Why not: used, revoked, or gone meanwhile (logout-all, the user's deletion).
    current = (
        await session.exec(
            select(RefreshToken)
            .where(col(RefreshToken.id) == record.id)
            .execution_options(populate_existing=True)
        )
    ).first()
    if current is not None and current.revoked_at is None and current.used_at is not None:
        if now - current.used_at <= timedelta(seconds=grace_seconds):
            await session.rollback()
            raise UnauthorizedError(
                "This refresh token was just rotated by another request; use the new one."
            )
        await revoke_family(session, family_id=record.family_id)
        raise UnauthorizedError("Refresh token reuse detected: this session has been revoked.")
    await session.rollback()
    raise UnauthorizedError("This session has been revoked; log in again.")


async def revoke_family(session: AsyncSession, *, family_id: str) -> None:
    """End one login session: every refresh token rotated from it."""
    await session.exec(
        update(RefreshToken)
        .where(col(RefreshToken.family_id) == family_id, col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )
    await session.commit()


async def revoke_all_tokens(session: AsyncSession, *, user: User) -> None:
    """Refuse every token the user holds from the next request on (logout everywhere)."""
    await session.exec(
        update(User)
        .where(col(User.id) == user.id)
        .values(token_version=col(User.token_version) + 1)
    )
    await session.exec(delete(RefreshToken).where(col(RefreshToken.user_id) == user.id))
    await session.commit()
