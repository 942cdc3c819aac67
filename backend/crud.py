"""Keyword-only async functions over an AsyncSession. No HTTP here."""

from collections.abc import Sequence

from sqlalchemy import false, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.errors import ConflictError, EmailTakenError
from backend.models import RegisterRequest, User, UserCreate, UserRole, UserUpdate, utcnow
from backend.security import PasswordHasher


async def get_user(session: AsyncSession, *, user_id: int) -> User | None:
    return await session.get(User, user_id)


async def get_user_by_email(session: AsyncSession, *, email: str) -> User | None:
    result = await session.exec(select(User).where(User.email == email.lower()))
    return result.first()


async def list_users(session: AsyncSession, *, page: int, per_page: int) -> Sequence[User]:
    statement = select(User).order_by(col(User.id)).offset((page - 1) * per_page).limit(per_page)
    return (await session.exec(statement)).all()


async def count_users(session: AsyncSession) -> int:
    return (await session.exec(select(func.count()).select_from(User))).one()


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
    deactivated = user.is_active and data.get("is_active") is False
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
