"""Keyword-only async functions over an AsyncSession. No HTTP here."""

from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    UnaryExpression,
    any_,
    bindparam,
    delete,
    false,
    func,
    or_,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from backend import links, sessions
from backend.config import Settings
from backend.confusables import email_skeleton
from backend.errors import (
    BadRequestError,
    ConflictError,
    EmailLookalikeError,
    EmailTakenError,
    ForbiddenError,
    PreconditionFailedError,
    UserGoneError,
)
from backend.links import Issued
from backend.listing import Filter, ListQuery
from backend.models import (
    NO_PASSWORD,
    ApiKey,
    AuditAction,
    AuditEvent,
    LinkPurpose,
    LoginResponse,
    RegisterRequest,
    SessionEndReason,
    User,
    UserCreate,
    UserInvite,
    UserPublic,
    UserRole,
    UserSession,
    UserUpdate,
    utcnow,
)
from backend.security import PasswordHasher
from backend.sessions import ClientInfo

EMAIL_NOT_VERIFIED = (
    "This account's email address is not verified yet: follow the link mailed to it, or ask "
    "for a new one with POST /auth/verify/resend."
)

ModelT = TypeVar("ModelT", User, AuditEvent, UserSession, ApiKey)


async def get_user(session: AsyncSession, *, user_id: int) -> User | None:
    return await session.get(User, user_id)


async def get_user_by_email(session: AsyncSession, *, email: str) -> User | None:
    result = await session.exec(select(User).where(User.email == email.lower()))
    return result.first()


# What a list of users shows, read as plain rows: an export page is a thousand users, and
# building a User object for each cost more than the query (~85 us a row, issue 12).
PUBLIC_USER_COLUMNS = tuple(UserPublic.model_fields)


# One user's public columns and version (its ETag), as a plain row: no ORM object to
# build, track and expunge for a read (bench/README.md, issue 13).
_USER_TABLE = User.__table__  # type: ignore[attr-defined]
_PUBLIC_USER_BY_ID = select(
    *(_USER_TABLE.c[name] for name in (*PUBLIC_USER_COLUMNS, "version"))
).where(_USER_TABLE.c.id == bindparam("user_id"))


async def get_public_user(session: AsyncSession, *, user_id: int) -> Row[Any] | None:
    row: Row[Any] | None = (
        await session.exec(_PUBLIC_USER_BY_ID, params={"user_id": user_id})
    ).first()
    return row


async def list_users(
    session: AsyncSession, *, query: ListQuery, only_id: int | None = None
) -> tuple[Sequence[Row[Any]], int]:
    """One page of the users matching the query, as rows of PUBLIC_USER_COLUMNS, and
    how many match in all; with `only_id`, among that one user only (a plain user under
    USERS_DIRECTORY=admins)."""
    search: list[ColumnElement[bool]] = []
    if only_id is not None:
        search.append(col(User.id) == only_id)
    if query.search:
        term = query.search.lower()
        # lower() on both, to match the trigram indexes on PostgreSQL (see the migrations).
        search.append(
            or_(
                func.lower(User.email).contains(term, autoescape=True),
                func.lower(User.name).contains(term, autoescape=True),
            )
        )
    return await _page_rows(session, User, query, search, PUBLIC_USER_COLUMNS)


async def list_audit_events(
    session: AsyncSession, *, query: ListQuery
) -> tuple[Sequence[AuditEvent], int]:
    return await _page(session, AuditEvent, query, [])


async def list_live_sessions(
    session: AsyncSession, *, user_id: int, query: ListQuery, idle_days: int
) -> tuple[Sequence[UserSession], int]:
    """One page of the user's live sessions (not ended, not past either lifetime)."""
    now = utcnow()
    live = [
        col(UserSession.user_id) == user_id,
        col(UserSession.revoked_at).is_(None),
        col(UserSession.expires_at) > now,
        col(UserSession.last_used_at) > now - timedelta(days=idle_days),
    ]
    return await _page(session, UserSession, query, live)


async def list_api_keys(
    session: AsyncSession, *, user_id: int | None, query: ListQuery
) -> tuple[Sequence[ApiKey], int]:
    """One page of the live (unrevoked) keys of a user, or of everyone's with no user;
    expired ones included, so that their owner sees why a script stopped."""
    live: list[ColumnElement[bool]] = [col(ApiKey.revoked_at).is_(None)]
    if user_id is not None:
        live.append(col(ApiKey.user_id) == user_id)
    return await _page(session, ApiKey, query, live)


async def _page(
    session: AsyncSession,
    model: type[ModelT],
    query: ListQuery,
    extra_conditions: list[ColumnElement[bool]],
) -> tuple[Sequence[ModelT], int]:
    page, count = _page_statements(session, model, query, extra_conditions, select(model))
    rows = (await session.exec(page)).all()
    return rows, (await session.exec(count)).one()


async def _page_rows(
    session: AsyncSession,
    model: type[SQLModel],
    query: ListQuery,
    extra_conditions: list[ColumnElement[bool]],
    columns: Sequence[str],
) -> tuple[Sequence[Row[Any]], int]:
    """_page's rows as plain tuples of these columns: no ORM object is built."""
    table = model.__table__  # type: ignore[attr-defined]
    target = select(*(table.c[name] for name in columns))
    page, count = _page_statements(session, model, query, extra_conditions, target)
    rows = (await session.exec(page)).all()
    return rows, (await session.exec(count)).one()


SelectT = TypeVar("SelectT", bound=Select[Any])


def _page_statements(
    session: AsyncSession,
    model: type[SQLModel],
    query: ListQuery,
    extra_conditions: list[ColumnElement[bool]],
    target: SelectT,
) -> tuple[SelectT, SelectOfScalar[int]]:
    """The page (selecting `target`) and the count of everything that matches."""
    conditions = [_condition(model, condition) for condition in query.filters]
    conditions += extra_conditions
    order = [_order(model, name, descending) for name, descending in query.sort]
    model_id = col(model.id)  # type: ignore[attr-defined]
    if "id" not in {name for name, _ in query.sort}:
        # Ties broken by id, in the direction of the last key, so that an index on
        # (key, id) gives the whole order in one scan, forwards or backwards.
        descending = bool(query.sort) and query.sort[-1][1]
        order.append(model_id.desc() if descending else model_id.asc())
    # The page's ids first, then their rows: a deep OFFSET then skips index entries
    # (an index-only scan) instead of fetching every skipped row (10x at page 5,000).
    ids = select(model_id).where(*conditions).order_by(*order).offset(query.offset)
    ids = ids.limit(query.limit)
    if session.get_bind().dialect.name == "postgresql":
        # As an array, not a join: joined to a thousand ids (an export page), PostgreSQL
        # hashes them and scans the whole table (50 ms at 100,000 users); `id = ANY`
        # of the array fetches just those rows by primary key (bench/list_latency.py).
        page = target.where(model_id == any_(func.array(ids.scalar_subquery())))
    else:
        subquery = ids.subquery()
        page = target.join(subquery, model_id == subquery.c.id)
    count = select(func.count()).select_from(model).where(*conditions)
    return page.order_by(*order), count


def _order(model: type[SQLModel], name: str, descending: bool) -> UnaryExpression[Any]:
    column = getattr(model, name)
    if not model.__table__.c[name].nullable:  # type: ignore[attr-defined]
        return column.desc() if descending else column.asc()  # type: ignore[no-any-return]
    # No value (an account that never logged in, an event by nobody) sorts as the
    # smallest, on both databases: SQLite's order, the opposite of PostgreSQL's default.
    return column.desc().nulls_last() if descending else column.asc().nulls_first()  # type: ignore[no-any-return]


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
    verified: bool = False,
) -> User:
    """Insert a user; the unique indexes (email, and its confusable skeleton), not a
    prior look-up, decide duplicates and look-alikes.

    With `audit`, the creation is recorded in the audit trail, in the same transaction,
    as `actor_id`'s doing (an admin, or None for the CLI). `verified`: the email counts
    as proven (the operator's own first admin).
    """
    hashed_password = await _hash(session, hasher, data.password)
    user = await _insert_user(
        session, data=data, hashed_password=hashed_password, is_verified=verified
    )
    if audit:
        details = {"email": user.email, "role": str(user.role)}
        session.add(
            AuditEvent(
                actor_id=actor_id, action=AuditAction.CREATE, target_id=user.id, details=details
            )
        )
    await session.commit()
    return user


@dataclass(frozen=True)
class Registered:
    user: User
    tokens: LoginResponse | None  # None when EMAIL_VERIFICATION=required: verify first
    verify_link: Issued | None  # to mail, unless EMAIL_VERIFICATION=off


async def register(
    session: AsyncSession,
    *,
    data: RegisterRequest,
    hasher: PasswordHasher,
    settings: Settings,
    client: ClientInfo,
) -> Registered:
    """Create an account and, unless its email must be verified first, log it in, in one
    transaction: a client that gets no answer may retry without finding its email taken
    by an account it never heard of. The verification link is issued in it too."""
    hashed_password = await _hash(session, hasher, data.password)
    user = await _insert_user(session, data=data, hashed_password=hashed_password)
    assert user.id is not None
    verify_link = None
    if settings.EMAIL_VERIFICATION != "off":
        verify_link = await links.issue(
            session,
            user_id=user.id,
            purpose=LinkPurpose.VERIFY,
            settings=settings,
            actor_id=user.id,
        )
    if settings.EMAIL_VERIFICATION == "required":
        await session.commit()
        return Registered(user=user, tokens=None, verify_link=verify_link)
    tokens = await sessions.start(session, user=user, client=client, settings=settings)
    return Registered(user=user, tokens=tokens, verify_link=verify_link)


async def invite_user(
    session: AsyncSession, *, data: UserInvite, settings: Settings, actor_id: int | None
) -> tuple[User, Issued]:
    """Create an account without a password, inactive, and its invitation link, in one
    transaction; it can log in once its owner sets a password through the link."""
    user = await _insert_user(session, data=data, hashed_password=NO_PASSWORD, is_active=False)
    assert user.id is not None
    details = {"email": user.email, "role": str(user.role), "invited": True}
    session.add(
        AuditEvent(actor_id=actor_id, action=AuditAction.CREATE, target_id=user.id, details=details)
    )
    link = await links.issue(
        session, user_id=user.id, purpose=LinkPurpose.INVITE, settings=settings, actor_id=actor_id
    )
    await session.commit()
    return user, link


async def reinvite_user(
    session: AsyncSession, *, user: User, settings: Settings, actor_id: int | None
) -> Issued:
    """A new invitation link for an account whose owner has not set a password yet; the
    previous link stops working."""
    assert user.id is not None
    if user.hashed_password != NO_PASSWORD:
        raise ConflictError("This user already has a password: the invitation was accepted.")
    await _release_connection(session)  # the read ends before issue's write (SQLite)
    link = await links.issue(
        session, user_id=user.id, purpose=LinkPurpose.INVITE, settings=settings, actor_id=actor_id
    )
    await session.commit()
    return link


async def set_password_with_link(
    session: AsyncSession,
    *,
    token: str,
    purpose: LinkPurpose,
    new_password: str,
    hasher: PasswordHasher,
    settings: Settings,
    client: ClientInfo,
) -> LoginResponse:
    """Accept an invitation (purpose INVITE: the account is activated) or reset a
    forgotten password (RESET), with a mailed link, used once. Either proves the email.
    Every session of the user ends, their tokens too, and a new one starts: one
    transaction, in which the link is used, so a link that loses a race changes nothing."""
    link = await links.find(session, token=token, purpose=purpose)
    user_id = link.user_id  # read now: a rollback expires the loaded rows
    hashed_password = await _hash(session, hasher, new_password)  # ends the read, too
    now = utcnow()
    values: dict[str, Any] = {"hashed_password": hashed_password, "is_verified": True}
    conditions = [col(User.id) == user_id]
    if purpose == LinkPurpose.INVITE:
        values["is_active"] = True
    else:
        conditions.append(col(User.is_active).is_(True))  # no way back in for the deactivated
    updated = await _update_user_row(session, conditions, values, now=now, revoke=True)
    if updated is None:
        await session.rollback()
        if await get_user(session, user_id=user_id) is None:  # its links went with it
            raise links.LinkError(links.INVALID)
        raise ForbiddenError("This account is deactivated.")
    await links.consume(session, link=link, now=now)
    fields = ["is_active", "password"] if purpose == LinkPurpose.INVITE else ["password"]
    session.add(
        AuditEvent(
            actor_id=updated.id,
            action=AuditAction.UPDATE,
            target_id=updated.id,
            details={"fields": fields},
        )
    )
    assert updated.id is not None
    await sessions.end_all_staged(
        session, user_id=updated.id, reason=SessionEndReason.PASSWORD_CHANGE
    )
    return await sessions.start(session, user=updated, client=client, settings=settings)


async def verify_email(session: AsyncSession, *, token: str) -> User:
    """Mark the email of the link's user verified, using the link."""
    link = await links.find(session, token=token, purpose=LinkPurpose.VERIFY)
    await _release_connection(session)  # the read ends before the write (SQLite)
    now = utcnow()
    updated = await _update_user_row(
        session, [col(User.id) == link.user_id], {"is_verified": True}, now=now, revoke=False
    )
    if updated is None:  # deleted meanwhile: its links went with it
        await session.rollback()
        raise links.LinkError(links.INVALID)
    await links.consume(session, link=link, now=now)
    await session.commit()
    return updated


async def _update_user_row(
    session: AsyncSession,
    conditions: list[ColumnElement[bool]],
    values: dict[str, Any],
    *,
    now: datetime,
    revoke: bool,
) -> User | None:
    """One UPDATE of the user's row where `conditions` hold (the first lock of the lock
    order): the values, a new version, and with `revoke` a new token version (every
    token refused). The row as updated, or None when the conditions matched none."""
    statement = (
        update(User)
        .where(*conditions)
        .values(
            **values,
            updated_at=now,
            version=col(User.version) + 1,
            token_version=col(User.token_version) + int(revoke),
        )
        .returning(User)
        .execution_options(populate_existing=True)
    )
    updated: User | None = (await session.exec(statement)).scalar_one_or_none()
    return updated


async def _insert_user(
    session: AsyncSession,
    *,
    data: UserCreate | RegisterRequest | UserInvite,
    hashed_password: str,
    is_verified: bool = False,
    is_active: bool | None = None,
) -> User:
    """Add a user and flush it (its id assigned, the email's uniqueness and look-alikes
    checked); the caller commits."""
    update_values: dict[str, Any] = {
        "hashed_password": hashed_password,
        "email_skeleton": email_skeleton(data.email),
        "is_verified": is_verified,
    }
    if is_active is not None:
        update_values["is_active"] = is_active
    user = User.model_validate(data, update=update_values)
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
    end_reason = _sessions_end_reason(values)
    conditions = [col(User.id) == user.id]
    if expected_versions is not None:
        conditions.append(col(User.version).in_(expected_versions))
    events = _audit_update(user, values, actor_id)  # before RETURNING refreshes `user`
    async with _email_must_be_free(session, email=values.get("email")):
        updated = await _update_user_row(
            session, conditions, values, now=utcnow(), revoke=end_reason is not None
        )
        if updated is None:
            await session.rollback()
            raise PreconditionFailedError() if expected_versions is not None else UserGoneError()
        session.add_all(events)
        await session.flush()  # a duplicate email is refused here, inside the guard
    if end_reason is not None:  # after the user's row: the lock order of backend/sessions.py
        assert updated.id is not None
        await sessions.end_all_staged(session, user_id=updated.id, reason=end_reason)
    return updated


def _sessions_end_reason(values: dict[str, Any]) -> SessionEndReason | None:
    """Why an account change ends every session and refuses every token of the user:
    a deactivation, a role change or a new password."""
    if values.get("is_active") is False:
        return SessionEndReason.DEACTIVATED
    if "role" in values:
        return SessionEndReason.ROLE_CHANGE
    if "hashed_password" in values:
        return SessionEndReason.PASSWORD_CHANGE
    return None


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
    session: AsyncSession,
    *,
    email: str,
    password: str,
    hasher: PasswordHasher,
    settings: Settings,
    client: ClientInfo,
) -> LoginResponse | None:
    """Tokens for the user whose password this is, or None; unknown emails cost one
    verify too. A rehash (BCRYPT_ROUNDS changed) is written with the new refresh token."""
    user = await get_user_by_email(session, email=email)
    matched, new_hash = await _verify(
        session, hasher, password, user.hashed_password if user else NO_PASSWORD
    )
    if user is None or not matched:
        return None
    if not user.is_active:
        raise ForbiddenError("This account is deactivated.")
    if settings.EMAIL_VERIFICATION == "required" and not user.is_verified:
        raise ForbiddenError(EMAIL_NOT_VERIFIED)
    if new_hash is not None:  # BCRYPT_ROUNDS changed, or the hash predates NFKC
        user.hashed_password = new_hash
        session.add(user)
    return await sessions.start(session, user=user, client=client, settings=settings)


async def change_password(
    session: AsyncSession,
    *,
    user: User,
    current_password: str,
    new_password: str,
    hasher: PasswordHasher,
    settings: Settings,
    client: ClientInfo,
) -> LoginResponse:
    """Set a new password once the current one is proven: every session of the user
    ends, and a new one starts, in the same transaction."""
    matched, _ = await _verify(session, hasher, current_password, user.hashed_password)
    if not matched:
        raise BadRequestError("The current password is incorrect.")
    changes = UserUpdate(password=new_password)
    updated = await _update_user(
        session, user=user, changes=changes, hasher=hasher, actor_id=user.id
    )
    return await sessions.start(session, user=updated, client=client, settings=settings)


async def _hash(session: AsyncSession, hasher: PasswordHasher, password: str) -> str:
    await _release_connection(session)
    return await hasher.hash(password)


async def _verify(
    session: AsyncSession, hasher: PasswordHasher, password: str, hashed_password: str
) -> tuple[bool, str | None]:
    await _release_connection(session)
    # No account, or one invited and without a password yet: the same time, no match.
    return await hasher.verify(password, hashed_password or None)


async def _release_connection(session: AsyncSession) -> None:
    """End the session's read-only transaction, returning its pooled connection, before
    seconds of waiting for a password hash: a burst of logins holding connections
    "idle in transaction" starved every other request of the pool (issue 16: 22
    concurrent logins held all 20). Rows already loaded stay usable (expire_on_commit
    is off); the next statement opens a new, short transaction."""
    await session.commit()


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
        await create_user(session, data=data, hasher=hasher, audit=True, verified=True)
    except EmailTakenError:  # another worker created it meanwhile
        return False
    return True
