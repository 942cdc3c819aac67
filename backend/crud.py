"""Keyword-only async functions over an AsyncSession. No HTTP here."""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, delete, false, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.config import Settings
from backend.errors import ConflictError, EmailTakenError, UnauthorizedError
from backend.listing import Filter, ListQuery
from backend.models import (
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


async def get_user(session: AsyncSession, *, user_id: int) -> User | None:
    return await session.get(User, user_id)


async def get_user_by_email(session: AsyncSession, *, email: str) -> User | None:
    result = await session.exec(select(User).where(User.email == email.lower()))
    return result.first()


async def list_users(session: AsyncSession, *, query: ListQuery) -> tuple[Sequence[User], int]:
    """One page of the users matching the query, and how many match in all."""
    conditions = [_condition(condition) for condition in query.filters]
    if query.search:
        term = query.search.lower()
        conditions.append(
            or_(
                col(User.email).contains(term, autoescape=True),  # stored lower-case
                func.lower(User.name).contains(term, autoescape=True),
            )
        )
    order = [
        getattr(User, name).desc() if descending else getattr(User, name).asc()
        for name, descending in query.sort
    ]
    if "id" not in {name for name, _ in query.sort}:
        order.append(col(User.id).asc())  # a stable order for paging
    page = select(User).where(*conditions).order_by(*order)
    users = (await session.exec(page.offset(query.offset).limit(query.limit))).all()
    total = (await session.exec(select(func.count()).select_from(User).where(*conditions))).one()
    return users, total


def _condition(condition: Filter) -> ColumnElement[bool]:
    column = getattr(User, condition.field)
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
    session: AsyncSession, *, data: UserCreate | RegisterRequest, hashed_password: str
) -> User:
    """Insert a user; the unique index, not a prior look-up, decides duplicates."""
    user = User.model_validate(data, update={"hashed_password": hashed_password})
    session.add(user)
    await _commit_or_email_taken(session)
    return user


async def update_user(
    session: AsyncSession, *, user: User, changes: UserUpdate, hashed_password: str | None = None
) -> User:
    data = changes.model_dump(exclude_unset=True, exclude={"password"})
    if hashed_password is not None:
        data["hashed_password"] = hashed_password
    demoted = data.get("role", user.role) != user.role
    deactivated = user.is_active and not data.get("is_active", True)
    if (demoted or deactivated) and user.role == UserRole.ADMIN:
        await _ensure_another_active_admin(session, user=user)
    user.sqlmodel_update(data)
    if demoted or deactivated or hashed_password is not None:
        user.token_version += 1  # every token issued so far is refused from now on
    user.updated_at = utcnow()
    session.add(user)
    await _commit_or_email_taken(session)
    return user


async def delete_user(session: AsyncSession, *, user: User, actor_id: int | None) -> None:
    if user.id == actor_id:
        raise ConflictError("You cannot delete your own account.")
    if user.role == UserRole.ADMIN and user.is_active:
        await _ensure_another_active_admin(session, user=user)
    await session.delete(user)
    await session.commit()


async def authenticate(
    session: AsyncSession, *, email: str, password: str, hasher: PasswordHasher
) -> User | None:
    """The user whose password this is, or None; unknown emails cost one verify too."""
    user = await get_user_by_email(session, email=email)
    matched, new_hash = await hasher.verify(password, user.hashed_password if user else None)
    if user is None or not matched:
        return None
    if new_hash is not None:  # BCRYPT_ROUNDS changed since this hash was made
        user.hashed_password = new_hash
        session.add(user)
        await session.commit()
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


async def _commit_or_email_taken(session: AsyncSession) -> None:
    try:
        await session.commit()
    except IntegrityError as error:
        await session.rollback()
        if "email" in str(error.orig):
            raise EmailTakenError() from error
        raise


async def ensure_user(session: AsyncSession, *, data: UserCreate, hasher: PasswordHasher) -> bool:
    """Create the user unless the email exists (never touching an existing password)."""
    if await get_user_by_email(session, email=data.email) is not None:
        return False
    try:
        await create_user(session, data=data, hashed_password=await hasher.hash(data.password))
    except EmailTakenError:  # another worker created it meanwhile
        return False
    return True


async def issue_tokens(
    session: AsyncSession, *, user: User, settings: Settings, family_id: str | None = None
) -> LoginResponse:
    """A new access + refresh pair; the refresh token is recorded (hashed) in its family.

    Expired refresh records of this user are pruned here, lazily, instead of by a job.
    """
    assert user.id is not None
    access_token, _ = create_token(user, ACCESS, settings)
    family_id = family_id or uuid.uuid4().hex
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


async def use_refresh_token(
    session: AsyncSession, *, record: RefreshToken, grace_seconds: int
) -> None:
    """Retire a refresh token so it can be rotated once, and only once.

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
    await session.refresh(record)
    if record.revoked_at is None and record.used_at is not None:
        if now - record.used_at <= timedelta(seconds=grace_seconds):
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
    user.token_version += 1
    session.add(user)
    await session.exec(delete(RefreshToken).where(col(RefreshToken.user_id) == user.id))
    await session.commit()
