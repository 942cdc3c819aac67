"""Keyword-only row functions over the db session: users, the audit trail and the
generic pager. No HTTP, and no workflow: what also issues links, starts or ends login
sessions or hashes a password is in backend/auth/accounts.py."""

from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    UnaryExpression,
    and_,
    any_,
    bindparam,
    delete,
    func,
    or_,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from backend.clock import utcnow
from backend.confusables import email_skeleton
from backend.db.session import lock_for_update
from backend.errors import (
    ConflictError,
    EmailLookalikeError,
    EmailTakenError,
    PreconditionFailedError,
    ProblemCode,
    UserGoneError,
)
from backend.http.listing import Filter, JsonKey, ListQuery
from backend.models import (
    AuditAction,
    AuditEvent,
    AuthEvent,
    User,
    UserPublic,
    UserRole,
    UserUpdate,
)

ModelT = TypeVar("ModelT", bound=SQLModel)


async def get_user(db: AsyncSession, *, user_id: int) -> User | None:
    return await db.get(User, user_id)


async def get_user_by_email(db: AsyncSession, *, email: str) -> User | None:
    result = await db.exec(select(User).where(User.email == email.lower()))
    return result.first()


async def count_password_costs(db: AsyncSession) -> dict[int, int]:
    """How many stored bcrypt hashes there are of each cost (the NN of `$2b$NN$`)."""
    cost = func.substr(col(User.hashed_password), 5, 2)
    query = select(cost, func.count()).where(col(User.hashed_password).like("$2%")).group_by(cost)
    rows = (await db.exec(query)).all()
    return {int(text): count for text, count in rows if text.isdigit()}


# What a list of users shows, read as plain rows: an export page is a thousand users, and
# building a User object for each cost more than the query (~85 us a row).
PUBLIC_USER_COLUMNS = tuple(UserPublic.model_fields)


# One user's public columns and version (its ETag), as a plain row: no ORM object to
# build, track and expunge for a read.
_USER_TABLE = User.__table__  # type: ignore[attr-defined]
_PUBLIC_USER_BY_ID = select(
    *(_USER_TABLE.c[name] for name in (*PUBLIC_USER_COLUMNS, "version"))
).where(_USER_TABLE.c.id == bindparam("user_id"))


async def get_public_user(db: AsyncSession, *, user_id: int) -> Row[Any] | None:
    row: Row[Any] | None = (await db.exec(_PUBLIC_USER_BY_ID, params={"user_id": user_id})).first()
    return row


async def list_users(
    db: AsyncSession,
    *,
    query: ListQuery,
    only_id: int | None = None,
    where: Sequence[ColumnElement[bool]] = (),
) -> tuple[Sequence[Row[Any]], int]:
    """One page of the users matching the query, as rows of PUBLIC_USER_COLUMNS, and
    how many match in all; with `only_id`, among that one user only (a plain user under
    USERS_DIRECTORY=admins); `where`: further conditions (how they sign in)."""
    search: list[ColumnElement[bool]] = list(where)
    # `banned` is no column but a moment's state: the clock decides, as at every check.
    flags = [condition for condition in query.filters if condition.field == "banned"]
    if flags:
        query = replace(query, filters=tuple(f for f in query.filters if f not in flags))
        in_force = banned(now=utcnow())
        search += [in_force if flag.value else ~in_force for flag in flags]
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
    return await list_page_rows(db, User, query, search, PUBLIC_USER_COLUMNS)


async def list_audit_events(
    db: AsyncSession, *, query: ListQuery
) -> tuple[Sequence[AuditEvent], int]:
    return await list_page(db, AuditEvent, query, [])


async def list_auth_events(
    db: AsyncSession, *, query: ListQuery, user_id: int | None = None
) -> tuple[Sequence[AuthEvent], int]:
    """A page of sign-in events; with `user_id`, of that account's only."""
    conditions = [col(AuthEvent.user_id) == user_id] if user_id is not None else []
    return await list_page(db, AuthEvent, query, conditions)


async def purge_auth_events(db: AsyncSession, *, before: datetime) -> int:
    """Delete the sign-in events made before `before`, and commit; how many went."""
    result = await db.exec(delete(AuthEvent).where(col(AuthEvent.created_at) < before))
    await db.commit()
    return int(result.rowcount)


async def list_page(
    db: AsyncSession,
    model: type[ModelT],
    query: ListQuery,
    extra_conditions: list[ColumnElement[bool]],
) -> tuple[Sequence[ModelT], int]:
    page, count = _page_statements(db, model, query, extra_conditions, select(model))
    rows = (await db.exec(page)).all()
    return rows, (await db.exec(count)).one()


async def list_page_rows(
    db: AsyncSession,
    model: type[SQLModel],
    query: ListQuery,
    extra_conditions: list[ColumnElement[bool]],
    columns: Sequence[str],
) -> tuple[Sequence[Row[Any]], int]:
    """list_page's rows as plain tuples of these columns: no ORM object is built."""
    table = model.__table__  # type: ignore[attr-defined]
    target = select(*(table.c[name] for name in columns))
    page, count = _page_statements(db, model, query, extra_conditions, target)
    rows = (await db.exec(page)).all()
    return rows, (await db.exec(count)).one()


SelectT = TypeVar("SelectT", bound=Select[Any])


def _page_statements(
    db: AsyncSession,
    model: type[SQLModel],
    query: ListQuery,
    extra_conditions: list[ColumnElement[bool]],
    target: SelectT,
) -> tuple[SelectT, SelectOfScalar[int]]:
    """The page (selecting `target`) and the count of everything that matches."""
    dialect = db.get_bind().dialect.name
    conditions = [_condition(model, condition, dialect) for condition in query.filters]
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
    if dialect == "postgresql":
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


def _condition(model: type[SQLModel], condition: Filter, dialect: str) -> ColumnElement[bool]:
    column = getattr(model, condition.field)
    value = condition.value
    match condition.operator:
        case "key_eq":
            return _json_key_equals(column, value, dialect)
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


def _json_key_equals(column: Any, condition: JsonKey, dialect: str) -> ColumnElement[bool]:
    """The object's top-level key equals the JSON scalar, alike on both databases: a
    string only a string, a boolean only a boolean (not 1 or 0), a number any equal
    number (1 and 1.0), never an array that holds the value."""
    if dialect == "postgresql":
        # Containment, which the column's GIN index (jsonb_path_ops) answers.
        return type_coerce(column, JSONB).contains({condition.key: condition.value})
    path = f'$."{condition.key}"'  # JSON_KEY: nothing in a key needs escaping
    kind = func.json_type(column, path)
    value = condition.value
    if isinstance(value, bool):
        return kind == ("true" if value else "false")
    kinds = ["text"] if isinstance(value, str) else ["integer", "real"]
    return and_(kind.in_(kinds), func.json_extract(column, path) == value)


def add_audit_event(
    db: AsyncSession,
    *,
    action: AuditAction,
    actor_id: int | None,
    target_id: int | None,
    details: dict[str, Any] | None = None,
) -> None:
    """Stage an audit event, written in the transaction of the change it records."""
    db.add(AuditEvent(actor_id=actor_id, action=action, target_id=target_id, details=details or {}))


async def insert_user(
    db: AsyncSession,
    *,
    data: SQLModel,
    hashed_password: str,
    is_verified: bool = False,
    is_active: bool | None = None,
) -> User:
    """Add a user made from `data`'s user fields and flush it: its id assigned, and its
    email's uniqueness and look-alikes checked by the unique indexes (email, and its
    confusable skeleton), not by a prior look-up. The caller commits."""
    update_values: dict[str, Any] = {
        "hashed_password": hashed_password,
        "email_skeleton": email_skeleton(data.email),  # type: ignore[attr-defined]
        "is_verified": is_verified,
    }
    if is_active is not None:
        update_values["is_active"] = is_active
    user = User.model_validate(data, update=update_values)
    db.add(user)
    async with _email_must_be_free(db, email=user.email):
        await db.flush()
    return user


def changed_values(user: User, changes: UserUpdate) -> dict[str, Any]:
    """The columns an edit changes: the fields sent that differ from the row (the
    password aside, which only a hash can store)."""
    values = {
        name: value
        for name, value in changes.model_dump(exclude_unset=True, exclude={"password"}).items()
        if getattr(user, name) != value
    }
    if "email" in values:
        values["email_skeleton"] = email_skeleton(values["email"])
    return values


async def update_user_row(
    db: AsyncSession,
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
    updated: User | None = (await db.exec(statement)).scalar_one_or_none()
    return updated


async def update_user(
    db: AsyncSession,
    *,
    user: User,
    values: dict[str, Any],
    now: datetime,
    revoke: bool,
    actor_id: int | None,
    expected_versions: Collection[int] | None = None,
) -> User:
    """Write `values` (changed_values, and a hashed password) in one UPDATE of just those
    columns (no read-modify-write), with their audit events, for the caller to commit.

    The last active admin is never demoted or deactivated. With expected_versions (the
    versions the caller read), a row changed since then is left alone and
    PreconditionFailedError raised.
    """
    deactivated = values.get("is_active") is False
    if ("role" in values or deactivated) and user.role == UserRole.ADMIN:
        await ensure_another_active_admin(db, user=user)
    conditions = [col(User.id) == user.id]
    if expected_versions is not None:
        conditions.append(col(User.version).in_(expected_versions))
    events = _audit_update(user, values, actor_id)  # before RETURNING refreshes `user`
    async with _email_must_be_free(db, email=values.get("email")):
        updated = await update_user_row(db, conditions, values, now=now, revoke=revoke)
        if updated is None:
            await db.rollback()
            raise PreconditionFailedError() if expected_versions is not None else UserGoneError()
        db.add_all(events)
        await db.flush()  # a duplicate email is refused here, inside the guard
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
    db: AsyncSession,
    *,
    user: User,
    actor_id: int | None,
    expected_versions: Collection[int] | None = None,
) -> None:
    """Delete the user's row (its sessions, keys and links go with it) and audit it,
    for the caller to commit."""
    if user.id == actor_id:
        raise ConflictError(
            "You cannot delete your own account.", code=ProblemCode.CANNOT_DELETE_SELF
        )
    if user.role == UserRole.ADMIN and user.is_active:
        await ensure_another_active_admin(db, user=user)
    statement = delete(User).where(col(User.id) == user.id)
    if expected_versions is not None:
        statement = statement.where(col(User.version).in_(expected_versions))
    deleted = await db.exec(statement)
    if deleted.rowcount != 1:
        await db.rollback()
        raise PreconditionFailedError() if expected_versions is not None else UserGoneError()
    db.add(
        AuditEvent(
            actor_id=actor_id,
            action=AuditAction.DELETE,
            target_id=user.id,
            details={"email": user.email},
        )
    )


async def ensure_email_free(db: AsyncSession, *, email: str, user_id: int) -> None:
    """Refuse an address another account has, or one that looks like another's (its
    skeleton): the answer a request gets now, before a link is mailed. The unique
    indexes decide again when the change is written."""
    statement = select(User.email).where(
        col(User.id) != user_id,
        or_(col(User.email) == email, col(User.email_skeleton) == email_skeleton(email)),
    )
    found = (await db.exec(statement)).all()
    if email in found:
        raise EmailTakenError()
    if found:
        raise EmailLookalikeError()


async def change_email(
    db: AsyncSession, *, user_id: int, old_email: str, new_email: str, now: datetime
) -> User | None:
    """Set the user's address, proven by a link mailed to it, where the user is active
    and still has `old_email`; None when it is not. A taken or look-alike address is
    refused by the unique indexes, as any insert's. Audited; the caller commits."""
    conditions = [
        col(User.id) == user_id,
        col(User.email) == old_email,
        col(User.is_active).is_(True),
    ]
    values = {"email": new_email, "email_skeleton": email_skeleton(new_email), "is_verified": True}
    async with _email_must_be_free(db, email=new_email):
        updated = await update_user_row(db, conditions, values, now=now, revoke=False)
    if updated is not None:
        add_audit_event(
            db,
            action=AuditAction.UPDATE,
            actor_id=user_id,
            target_id=user_id,
            details={"fields": ["email"]},
        )
    return updated


async def delete_account(
    db: AsyncSession,
    *,
    user_id: int,
    conditions: Sequence[ColumnElement[bool]],
    actor_id: int | None,
    email_digest: str,
) -> bool:
    """Delete the user where `conditions` hold (False when they do not), its sessions,
    keys and links by their cascading foreign keys; the trail keeps the deletion with
    `email_digest` in place of the address, which the events about the user lose too.
    The caller commits."""
    deleted = await db.exec(delete(User).where(col(User.id) == user_id, *conditions))
    if deleted.rowcount != 1:
        return False
    events = await db.exec(select(AuditEvent).where(col(AuditEvent.target_id) == user_id))
    for event in events:
        if "email" in event.details:
            details = {name: value for name, value in event.details.items() if name != "email"}
            event.details = {**details, "email_hmac": email_digest}
            db.add(event)
    add_audit_event(
        db,
        action=AuditAction.DELETE,
        actor_id=actor_id,
        target_id=user_id,
        details={"email_hmac": email_digest},
    )
    return True


async def scheduled_deletions(db: AsyncSession, *, now: datetime) -> list[tuple[int, str]]:
    """The (id, email) of the accounts whose scheduled deletion is due."""
    statement = (
        select(col(User.id), User.email)
        .where(col(User.deletion_scheduled_at) <= now)
        .order_by(col(User.id))
    )
    rows = (await db.exec(statement)).all()
    return [(user_id, email) for user_id, email in rows if user_id is not None]


async def list_audit_events_about(db: AsyncSession, *, user_id: int) -> Sequence[AuditEvent]:
    """Every audit event whose target or actor the user is, oldest first."""
    statement = (
        select(AuditEvent)
        .where(or_(col(AuditEvent.target_id) == user_id, col(AuditEvent.actor_id) == user_id))
        .order_by(col(AuditEvent.id))
    )
    return (await db.exec(statement)).all()


async def ensure_another_active_admin(db: AsyncSession, *, user: User) -> None:
    # Locking every active admin row (in id order, so no deadlock) serialises two
    # admins demoting each other: the second sees the first's change and is refused.
    # A banned admin counts as locked out: the clock may end the ban, but until then
    # nobody could administer.
    statement = (
        select(User.id)
        .where(
            User.role == UserRole.ADMIN,
            col(User.is_active).is_(True),
            ~banned(now=utcnow()),
            # One whose deletion is scheduled is about to go: no successor.
            col(User.deletion_scheduled_at).is_(None),
        )
        .order_by(col(User.id))
    )
    admin_ids = (await db.exec(await lock_for_update(db, statement, table=User))).all()
    if not any(admin_id != user.id for admin_id in admin_ids):
        raise ConflictError(
            "The last active admin cannot be demoted, deactivated, banned or deleted.",
            code=ProblemCode.LAST_ADMIN,
        )


def banned(*, now: datetime) -> ColumnElement[bool]:
    """Users whose ban is in force at `now` (User.ban_in_force, in SQL)."""
    return and_(
        col(User.banned_at).is_not(None),
        or_(col(User.banned_until).is_(None), col(User.banned_until) > now),
    )


@asynccontextmanager
async def _email_must_be_free(db: AsyncSession, *, email: str | None) -> AsyncIterator[None]:
    """Turn a unique index's refusal of a taken email into EmailTakenError, or of a
    look-alike of another account's into EmailLookalikeError."""
    try:
        yield
    except IntegrityError as error:
        await db.rollback()
        refusal = str(error.orig)
        if "email" not in refusal:
            raise
        # The same email breaks both indexes, and either may be the one reported.
        if (
            "email_skeleton" in refusal
            and email is not None
            and await get_user_by_email(db, email=email) is None
        ):
            raise EmailLookalikeError() from error
        raise EmailTakenError() from error
