"""Login sessions: the one place their protocol lives.

A session is one login. Its refresh tokens rotate within it, each usable once; every
token names it (`sid`), and every request checks it with the user in one query, so
ending a session ends its access tokens at their next request.

- start: a login (also registration and a password change): a session and its first pair;
- rotate: a refresh: the presented token retired, a new pair in the same session;
- end, log_out: one session (logout, its user or an admin ending it);
- end_all: every session of a user (logout-all, an admin, the CLI); end_all_staged does
  it inside a caller's transaction (an account change that revokes);
- check: the per-request look-up of a token's user and session.

Transactions: start, rotate, end and end_all commit once. start commits whatever its
caller staged with it (a new account, a rehash, a new password), so a login is one
transaction. A refusal rolls back, except that a session ended for its lifetime or for
a reused token is committed before the 401.

Lock order, the same everywhere, so that no two transactions wait on each other in a
cycle. PostgreSQL takes row locks; SQLite has one database write lock, which each of
these functions takes with its first statement, a write.
1. The user's row: start (FOR NO KEY UPDATE), end_all and revoking account changes
   (their UPDATE of it), the user's deletion (its DELETE).
2. Then a session's row: rotate and end (SELECT ... FOR UPDATE), end_all (its UPDATE),
   the deletion (its cascade).
3. Then that session's refresh tokens.
rotate and end never lock the user's row: they only read it, and a refresh token
references its session alone, so inserting one locks no user row either. (Taking the
session and then the user deadlocks against the user's deletion, which holds the user's
row while its cascade waits for the session's.) Holding the session's row, nothing else
can change its tokens or end it meanwhile: a refresh and a logout, a reuse or a
revocation happen one after the other, and none leaves a rotated token alive.
end_all changes the user's row (token_version) first so that a login, which takes that
row before creating its session, is either all before it (and ended by it) or all after.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from sqlalchemy import Update, and_, delete, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import crud
from backend.auth import api_keys
from backend.auth.authcache import AuthCache
from backend.auth.jwt import ACCESS, REFRESH, create_token, decode_token, hash_token_id
from backend.auth.mfa_models import TotpFactor
from backend.auth.models import (
    ApiKeyEndReason,
    ClientInfo,
    LoginResponse,
    Passkey,
    Reauthenticated,
    RefreshToken,
    SessionEndReason,
    TokenClaims,
    TokenType,
    UserSession,
)
from backend.clock import utcnow
from backend.config import Settings
from backend.db.session import lock_for_update
from backend.errors import (
    BannedError,
    ConflictError,
    DomainError,
    ForbiddenError,
    NotFoundError,
    ProblemCode,
    UnauthorizedError,
)
from backend.http.listing import ListQuery
from backend.models import LAST_LOGIN_RESOLUTION, AuditAction, User, UserPublic, UserRole
from backend.webhooks import outbox

NOT_HONOURED = "The token is invalid or has been revoked."
SESSION_ENDED = "This session has ended; log in again."
DEACTIVATED = "This account is deactivated."
EXPIRED = "This session has expired; log in again."
REFUSALS = {
    SessionEndReason.EXPIRED: (EXPIRED, ProblemCode.SESSION_EXPIRED),
    SessionEndReason.IDLE: (EXPIRED, ProblemCode.SESSION_EXPIRED),
    SessionEndReason.REUSE: (
        "Refresh token reuse detected: this session has been revoked.",
        ProblemCode.REFRESH_TOKEN_REUSED,
    ),
}
UNKNOWN_REFRESH_TOKEN = "The refresh token is unknown or has been revoked."  # noqa: S105


@dataclass(frozen=True)
class Caller:
    """Whom an access token speaks for, and the live session it belongs to."""

    user: User
    user_session: UserSession


async def start(
    db: AsyncSession,
    *,
    user: User,
    client: ClientInfo,
    settings: Settings,
    mfa_exempt: bool = False,
) -> LoginResponse:
    """A new session for the user and its first pair; commits (see the module's note).
    Unless `mfa_exempt` (MFA_EXEMPT_SSO), MFA_REQUIRED restricts it until a factor."""
    assert user.id is not None
    now = utcnow()
    locked = await _lock_user_noting_login(db, user_id=user.id, now=now)
    if locked is None:
        await _refuse(
            db,
            UnauthorizedError(
                "This account was deleted meanwhile.", code=ProblemCode.ACCOUNT_CHANGED
            ),
        )
    if not locked.is_active:  # deactivated while the password was being checked
        await _refuse(db, ForbiddenError(DEACTIVATED, code=ProblemCode.ACCOUNT_DEACTIVATED))
    if locked.ban_in_force(now):  # banned meanwhile, or a link's login while banned
        await _refuse(db, BannedError(locked.banned_until))
    cancelled = locked.deletion_scheduled_at is not None
    if cancelled:
        _cancel_deletion(db, user=locked, now=now)
    # Sessions past their absolute expiry are deleted here, lazily, instead of by a job.
    await db.exec(
        delete(UserSession).where(
            col(UserSession.user_id) == user.id, col(UserSession.expires_at) <= now
        )
    )
    restricted = (
        not mfa_exempt
        and enrolment_required(locked, settings)
        and not await has_factor(db, user_id=user.id)
    )
    user_session = UserSession(
        user_id=user.id,
        restricted=restricted,
        created_at=now,
        last_used_at=now,
        authenticated_at=now,
        expires_at=now + timedelta(days=settings.SESSION_MAX_DAYS),
        user_agent=client.user_agent,
        ip_address=client.ip_address,
    )
    db.add(user_session)
    await db.flush()  # the session's row before its token's, which references it
    tokens = _issue_pair(db, user=locked, user_session=user_session, settings=settings)
    await db.commit()
    return tokens.model_copy(update={"deletion_cancelled": True}) if cancelled else tokens


def _cancel_deletion(db: AsyncSession, *, user: User, now: datetime) -> None:
    """A new session of an account whose deletion is scheduled (ACCOUNT_DELETION=grace):
    its owner is back, so the account stays. Under the user's lock, which `backend
    purge` takes too (its DELETE): either the purge removed the account before this
    login locked it (and the login is refused), or the login wins and the purge skips
    it. An edit of the record like any other: a new version (its ETag) and updated_at,
    read and written under that lock."""
    user.deletion_scheduled_at = None
    user.version += 1
    user.updated_at = now
    db.add(user)
    crud.add_audit_event(
        db, action=AuditAction.DELETION_CANCEL, actor_id=user.id, target_id=user.id
    )


async def factors(db: AsyncSession, *, user_id: int) -> set[str]:
    """The user's second factors on (backend/auth/mfa.py): `totp` (an authenticator app)
    and `passkey` (one or more); here, where a login asks it of every session it starts."""
    totp = select(TotpFactor.user_id).where(
        col(TotpFactor.user_id) == user_id, col(TotpFactor.confirmed_at).is_not(None)
    )
    passkey = select(Passkey.user_id).where(col(Passkey.user_id) == user_id)
    found = set()
    if (await db.exec(totp)).first() is not None:
        found.add("totp")
    if (await db.exec(passkey)).first() is not None:
        found.add("passkey")
    return found


async def has_factor(db: AsyncSession, *, user_id: int) -> bool:
    """Whether the user has any second factor on."""
    return bool(await factors(db, user_id=user_id))


def enrolment_required(user: User, settings: Settings) -> bool:
    """Whether MFA_REQUIRED asks this user for a second factor."""
    return settings.MFA_REQUIRED == "all" or (
        settings.MFA_REQUIRED == "admins" and user.role == UserRole.ADMIN
    )


async def start_impersonation(
    db: AsyncSession, *, admin: User, user_id: int, client: ClientInfo, settings: Settings
) -> LoginResponse:
    """A new session of the user for an admin to act as them: marked with the admin's id
    (in the row and in its tokens), lasting IMPERSONATION_MINUTES at most, and audited.
    Never for an admin (oneself included), an inactive or a banned user. It is not the
    user's login: last_login_at stays. Commits."""
    assert admin.id is not None
    now = utcnow()
    target = await _lock_user(db, user_id=user_id)  # the lock order: the user's row first
    if target is None:
        await _refuse(
            db, NotFoundError(f"User {user_id} does not exist.", code=ProblemCode.USER_NOT_FOUND)
        )
    refusal = _impersonation_refusal(admin, target, now)
    if refusal is not None:
        await _refuse(db, ForbiddenError(refusal, code=ProblemCode.IMPERSONATION_REFUSED))
    user_session = UserSession(
        user_id=user_id,
        created_at=now,
        last_used_at=now,
        authenticated_at=now,
        expires_at=now + timedelta(minutes=settings.IMPERSONATION_MINUTES),
        user_agent=client.user_agent,
        ip_address=client.ip_address,
        impersonator_id=admin.id,
    )
    db.add(user_session)
    await db.flush()
    tokens = _issue_pair(db, user=target, user_session=user_session, settings=settings)
    crud.add_audit_event(
        db,
        action=AuditAction.IMPERSONATION_START,
        actor_id=admin.id,
        target_id=user_id,
        details={"session_id": user_session.id, "expires_at": user_session.expires_at.isoformat()},
    )
    await db.commit()
    return tokens


def _impersonation_refusal(admin: User, target: User, now: datetime) -> str | None:
    if target.id == admin.id:
        return "You cannot impersonate yourself."
    if target.role == UserRole.ADMIN:
        # An admin acting as another could act with that admin's name on the trail.
        return "Admins cannot be impersonated."
    if not target.is_active:
        return "This account is deactivated: there is nothing to see as its user."
    if target.ban_in_force(now):
        return "This account is banned: lift the ban first to see what its user sees."
    return None


async def stop_impersonation(db: AsyncSession, *, caller: Caller) -> None:
    """End the caller's impersonation session, recorded as its admin's doing; the
    admin's own sessions are untouched. Commits."""
    impersonator_id = caller.user_session.impersonator_id
    if impersonator_id is None:
        raise ConflictError(
            "This session is not an impersonation: log out instead.",
            code=ProblemCode.NOT_IMPERSONATING,
        )
    locked = await _lock_session(
        db, session_id=caller.user_session.id, user_id=caller.user_session.user_id
    )
    if locked is None or locked[0].revoked_at is not None:
        await _refuse(db, UnauthorizedError(SESSION_ENDED, code=ProblemCode.SESSION_ENDED))
    user_session = locked[0]
    user_session.revoked_at = utcnow()
    user_session.revoked_reason = SessionEndReason.LOGOUT
    crud.add_audit_event(
        db,
        action=AuditAction.IMPERSONATION_STOP,
        actor_id=impersonator_id,
        target_id=user_session.user_id,
        details={"session_id": user_session.id},
    )
    await db.commit()


@dataclass(frozen=True)
class Rotated:
    tokens: LoginResponse
    # Whether it was the user's own session, whose refresh counts as their latest login
    # (an admin's impersonation is not the user signing in).
    own: bool


async def rotate(db: AsyncSession, *, refresh_token: str, settings: Settings) -> Rotated:
    """Trade a refresh token for a new pair in its session, once and only once; commits.

    A token presented again after its rotation means it leaked (or a client kept an old
    copy): the session ends, unless the second use comes within the grace window, which
    is what two tabs refreshing at the same moment look like.
    """
    claims = decode_token(refresh_token, REFRESH, settings)
    locked = await _lock_session(db, session_id=claims.sid, user_id=claims.sub)
    if locked is None:
        await _refuse(
            db, UnauthorizedError(UNKNOWN_REFRESH_TOKEN, code=ProblemCode.REFRESH_TOKEN_INVALID)
        )
    user_session, user = locked
    await _check_user(db, user, claims)
    now = utcnow()
    ended = user_session.end_reason(now, settings.SESSION_IDLE_DAYS)
    if ended is not None and user_session.revoked_reason is None:
        await _end_now(db, user_session, ended)  # its lifetime is over: recorded, refused
    if ended is not None:
        await _refuse(db, UnauthorizedError(SESSION_ENDED, code=ProblemCode.SESSION_ENDED))
    # Conditional: the token is retired only if unused. Under the session's lock nothing
    # else rotates it meanwhile; the condition is the check, in the same statement.
    jti_hash = hash_token_id(claims.jti)
    retired = await db.exec(
        update(RefreshToken)
        .where(
            col(RefreshToken.jti_hash) == jti_hash,
            col(RefreshToken.session_id) == user_session.id,
            col(RefreshToken.used_at).is_(None),
        )
        .values(used_at=now)
    )
    if retired.rowcount != 1:
        await _refuse_retired(db, user_session, jti_hash, now, settings)
    user_session.last_used_at = now
    tokens = _issue_pair(db, user=user, user_session=user_session, settings=settings)
    own = user_session.impersonator_id is None
    await db.commit()
    return Rotated(tokens=tokens, own=own)


async def _refuse_retired(
    db: AsyncSession, user_session: UserSession, jti_hash: str, now: datetime, settings: Settings
) -> NoReturn:
    """Why a token could not be retired: unknown, rotated just now, or reused."""
    statement = select(RefreshToken.used_at).where(
        col(RefreshToken.jti_hash) == jti_hash, col(RefreshToken.session_id) == user_session.id
    )
    used_at = (await db.exec(statement)).first()
    if used_at is None:
        await _refuse(
            db, UnauthorizedError(UNKNOWN_REFRESH_TOKEN, code=ProblemCode.REFRESH_TOKEN_INVALID)
        )
    if now - used_at <= timedelta(seconds=settings.REFRESH_REUSE_GRACE_SECONDS):
        await _refuse(
            db,
            UnauthorizedError(
                "This refresh token was just rotated by another request; use the new one.",
                code=ProblemCode.REFRESH_TOKEN_ROTATED,
            ),
        )
    await _end_now(db, user_session, SessionEndReason.REUSE)


async def _end_now(
    db: AsyncSession, user_session: UserSession, reason: SessionEndReason
) -> NoReturn:
    """End a locked session, commit, and refuse the request that found it ending."""
    user_session.revoked_at = utcnow()
    user_session.revoked_reason = reason
    if reason not in LAPSED:
        await _stage_revoked(db, user_session, reason)
    await db.commit()
    detail, code = REFUSALS.get(reason, (SESSION_ENDED, ProblemCode.SESSION_ENDED))
    raise UnauthorizedError(detail, code=code)


async def log_out(db: AsyncSession, *, refresh_token: str, settings: Settings) -> int:
    """End the session a refresh token belongs to; commits. The account's id."""
    claims = decode_token(refresh_token, REFRESH, settings)
    ended = await _end(
        db,
        user_id=claims.sub,
        session_id=claims.sid,
        reason=SessionEndReason.LOGOUT,
        settings=settings,
        actor_id=None,
        audit=False,
    )
    if not ended:
        raise UnauthorizedError(UNKNOWN_REFRESH_TOKEN, code=ProblemCode.REFRESH_TOKEN_INVALID)
    return claims.sub


def refresh_token_user_id(refresh_token: str, settings: Settings) -> int | None:
    """The account a refresh token names when it is one of ours (signed, unexpired), for
    the record of a refused refresh; None for anything else."""
    try:
        return decode_token(refresh_token, REFRESH, settings).sub
    except DomainError:
        return None


async def end(
    db: AsyncSession,
    *,
    user: User,
    session_id: str,
    reason: SessionEndReason,
    settings: Settings,
    actor_id: int | None = None,
    audit: bool = False,
) -> bool:
    """End one live session of the user; False (nothing changed) when the user has no
    such live session. With `audit`, recorded as `actor_id`'s doing. Commits."""
    assert user.id is not None
    return await _end(
        db,
        user_id=user.id,
        session_id=session_id,
        reason=reason,
        settings=settings,
        actor_id=actor_id,
        audit=audit,
    )


async def _end(
    db: AsyncSession,
    *,
    user_id: int,
    session_id: str | None,
    reason: SessionEndReason,
    settings: Settings,
    actor_id: int | None,
    audit: bool,
) -> bool:
    locked = await _lock_session(db, session_id=session_id, user_id=user_id)
    if locked is None or locked[0].end_reason(utcnow(), settings.SESSION_IDLE_DAYS) is not None:
        await db.rollback()
        return False
    user_session = locked[0]
    user_session.revoked_at = utcnow()
    user_session.revoked_reason = reason
    await _stage_revoked(db, user_session, reason)
    if audit:
        crud.add_audit_event(
            db,
            action=AuditAction.SESSION_END,
            actor_id=actor_id,
            target_id=user_id,
            details={"session_id": user_session.id},
        )
    await db.commit()
    return True


# Sessions that ran out their lifetime: they lapse, nobody revokes them, and no event
# reports them.
LAPSED = frozenset({SessionEndReason.EXPIRED, SessionEndReason.IDLE})


async def _stage_revoked(
    db: AsyncSession, user_session: UserSession, reason: SessionEndReason
) -> None:
    await outbox.stage_session_revoked(
        db, session_id=user_session.id, user_id=user_session.user_id, reason=str(reason)
    )


async def end_all(
    db: AsyncSession,
    *,
    user: User,
    reason: SessionEndReason,
    actor_id: int | None = None,
    audit: bool = False,
) -> int:
    """End every session of the user and refuse every token it holds; how many sessions
    were live. With `audit`, recorded as `actor_id`'s doing. Commits."""
    assert user.id is not None
    await db.exec(
        update(User)
        .where(col(User.id) == user.id)
        .values(token_version=col(User.token_version) + 1)
    )
    ended = await end_all_staged(db, user_id=user.id, reason=reason)
    if audit:
        crud.add_audit_event(
            db,
            action=AuditAction.SESSIONS_END_ALL,
            actor_id=actor_id,
            target_id=user.id,
            details={"sessions": ended},
        )
    await db.commit()
    return ended


# Account changes that end the user's API keys too, not only their sessions: a logout
# everywhere leaves the scripts' keys alone, as GitHub does.
KEYS_END_WITH = {
    SessionEndReason.PASSWORD_CHANGE: ApiKeyEndReason.PASSWORD_CHANGE,
    SessionEndReason.ROLE_CHANGE: ApiKeyEndReason.ROLE_CHANGE,
    SessionEndReason.DEACTIVATED: ApiKeyEndReason.DEACTIVATED,
}


async def end_all_staged(db: AsyncSession, *, user_id: int, reason: SessionEndReason) -> int:
    """end_all's sessions part, for a caller that already changed the user's row (the
    lock order) and commits itself; how many sessions were live. A password or role
    change and a deactivation revoke the user's API keys as well."""
    ended = (
        await db.exec(
            update(UserSession)
            .where(col(UserSession.user_id) == user_id, col(UserSession.revoked_at).is_(None))
            .values(revoked_at=utcnow(), revoked_reason=reason)
            .returning(col(UserSession.id))
        )
    ).all()
    for (session_id,) in ended:
        await outbox.stage_session_revoked(
            db, session_id=session_id, user_id=user_id, reason=str(reason)
        )
    # The sessions this user opened as others (an admin's impersonations) end with theirs:
    # an admin demoted, deactivated, banned or logged out everywhere acts as nobody. One
    # UPDATE per impersonated user, each naming that user, so that the auth cache forgets
    # those users alone, not everyone (authcache._user_ids_in); usually there are none.
    impersonating = select(UserSession.user_id).where(
        col(UserSession.impersonator_id) == user_id, col(UserSession.revoked_at).is_(None)
    )
    for impersonated_id in set((await db.exec(impersonating)).all()):
        impersonations = (
            await db.exec(
                update(UserSession)
                .where(
                    col(UserSession.user_id) == impersonated_id,
                    col(UserSession.impersonator_id) == user_id,
                    col(UserSession.revoked_at).is_(None),
                )
                .values(revoked_at=utcnow(), revoked_reason=reason)
                .returning(col(UserSession.id))
            )
        ).all()
        for (session_id,) in impersonations:
            await outbox.stage_session_revoked(
                db, session_id=session_id, user_id=impersonated_id, reason=str(reason)
            )
    if reason in KEYS_END_WITH:
        await api_keys.revoke_all_staged(db, user_id=user_id, reason=KEYS_END_WITH[reason])
    return len(ended)


async def end_others_staged(
    db: AsyncSession, *, user_id: int, keep: str | None, reason: SessionEndReason
) -> int:
    """End every live session of the user but `keep`, inside the caller's transaction
    (after its change of the user's row: the lock order); how many ended. The tokens of
    the ended ones are refused by their session, with no new token version, which would
    refuse the kept session's too."""
    conditions = [col(UserSession.user_id) == user_id, col(UserSession.revoked_at).is_(None)]
    if keep is not None:
        conditions.append(col(UserSession.id) != keep)
    result = await db.exec(
        update(UserSession).where(*conditions).values(revoked_at=utcnow(), revoked_reason=reason)
    )
    return result.rowcount


def reauthenticated_until(user_session: UserSession, settings: Settings) -> datetime:
    """Until when the session counts as having proven its user recently."""
    window = timedelta(seconds=settings.REAUTHENTICATION_WINDOW_SECONDS)
    return user_session.authenticated_at + window


async def note_reauthentication(
    db: AsyncSession, *, caller: Caller, settings: Settings
) -> Reauthenticated:
    """Record that the caller proved it again just now; commits. A session ended
    meanwhile stays ended: the UPDATE skips it and the caller is refused."""
    now = utcnow()
    result = await db.exec(
        update(UserSession)
        .where(
            col(UserSession.id) == caller.user_session.id,
            col(UserSession.revoked_at).is_(None),
        )
        .values(authenticated_at=now)
    )
    if result.rowcount != 1:
        await _refuse(db, UnauthorizedError(SESSION_ENDED, code=ProblemCode.SESSION_ENDED))
    await db.commit()
    caller.user_session.authenticated_at = now
    return Reauthenticated(
        authenticated_at=now, valid_until=reauthenticated_until(caller.user_session, settings)
    )


async def list_live(
    db: AsyncSession, *, user_id: int, query: ListQuery, idle_days: int
) -> tuple[Sequence[UserSession], int]:
    """One page of the user's live sessions (not ended, not past either lifetime)."""
    now = utcnow()
    live = [
        col(UserSession.user_id) == user_id,
        col(UserSession.revoked_at).is_(None),
        col(UserSession.expires_at) > now,
        col(UserSession.last_used_at) > now - timedelta(days=idle_days),
    ]
    return await crud.list_page(db, UserSession, query, live)


async def check(
    db: AsyncSession, *, access_token: str, settings: Settings, auth_cache: AuthCache
) -> Caller:
    """The user an access token speaks for and its session, if both still honour it:
    one query, the user's row joined with the session's, or none when the worker's
    auth cache has both rows (see backend/auth/authcache.py)."""
    claims = decode_token(access_token, ACCESS, settings)

    async def load() -> tuple[User | None, UserSession | None]:
        statement = (
            select(User, UserSession)
            .outerjoin(
                UserSession,
                and_(col(UserSession.id) == claims.sid, col(UserSession.user_id) == col(User.id)),
            )
            .where(col(User.id) == claims.sub)
        )
        row = (await db.exec(statement)).first()
        return (row[0], row[1]) if row is not None else (None, None)

    user, user_session = await auth_cache.read(claims.sub, claims.sid, load)
    await _check_user(db, user, claims)
    if (
        user_session is None
        or user_session.end_reason(utcnow(), settings.SESSION_IDLE_DAYS) is not None
        or user_session.impersonator_id != claims.imp
    ):
        raise UnauthorizedError(NOT_HONOURED, code=ProblemCode.TOKEN_REVOKED)
    assert user is not None
    if user_session.impersonator_id is not None:
        await _check_impersonator(db, user_session.impersonator_id)
    return Caller(user=user, user_session=user_session)


async def _check_impersonator(db: AsyncSession, admin_id: int) -> None:
    """An impersonation session acts only while its admin is an active, unbanned admin:
    one query more, for these sessions alone (never cached), which also covers an admin
    deleted meanwhile."""
    admin = (await db.exec(select(User).where(col(User.id) == admin_id))).first()
    if (
        admin is None
        or admin.role != UserRole.ADMIN
        or not admin.is_active
        or admin.ban_in_force(utcnow())
    ):
        raise UnauthorizedError(
            "The admin who opened this session can no longer act as anyone.",
            code=ProblemCode.SESSION_ENDED,
        )


async def _check_user(db: AsyncSession, user: User | None, claims: TokenClaims) -> None:
    # One message for a deleted user, another account that has its id now (of which
    # nothing may show, not even that it is deactivated) and a revoked token.
    if user is None or user.account_key != claims.acc:
        await _refuse(db, UnauthorizedError(NOT_HONOURED, code=ProblemCode.TOKEN_REVOKED))
    if not user.is_active:
        await _refuse(db, ForbiddenError(DEACTIVATED, code=ProblemCode.ACCOUNT_DEACTIVATED))
    # Before the token version, which the ban bumped: the holder of a token from before
    # is told of the ban and its end, not that the token was revoked.
    if user.ban_in_force(utcnow()):
        await _refuse(db, BannedError(user.banned_until))
    if user.token_version != claims.ver:
        await _refuse(db, UnauthorizedError(NOT_HONOURED, code=ProblemCode.TOKEN_REVOKED))


async def _refuse(db: AsyncSession, error: DomainError) -> NoReturn:
    """Roll back (releasing any lock at once, not when the request ends) and raise."""
    await db.rollback()
    raise error


def _note_login(user_id: int, now: datetime) -> Update:
    """Set the user's last_login_at to now, unless it is already within
    LAST_LOGIN_RESOLUTION of it: a conditional UPDATE, returning the row it wrote."""
    return (
        update(User)
        .where(
            col(User.id) == user_id,
            or_(
                col(User.last_login_at).is_(None),
                col(User.last_login_at) <= now - LAST_LOGIN_RESOLUTION,
            ),
        )
        .values(last_login_at=now)
        .returning(User)
        .execution_options(populate_existing=True)
    )


async def _lock_user_noting_login(db: AsyncSession, *, user_id: int, now: datetime) -> User | None:
    """_lock_user's lock, taken by the UPDATE that records the login: the lock a login
    needs anyway (an UPDATE of a column no key holds locks the row as FOR NO KEY UPDATE
    does), so last_login_at costs no extra statement. Only a login within a minute of
    the previous one, which leaves the row alone, takes the plain lock after it."""
    noted: User | None = (await db.exec(_note_login(user_id, now))).scalar_one_or_none()
    return noted if noted is not None else await _lock_user(db, user_id=user_id)


async def note_refresh(db: AsyncSession, *, user_id: int) -> None:
    """Record a refresh as the user's latest login; commits.

    Called after the refresh's response is sent (routers/auth.py): its transaction
    holds the session's row, and the user's row comes before it in the lock order, so
    writing the user's there could deadlock against the user's deletion; before the
    lock it would be a statement more on every refresh. After the response it delays
    nobody, and the condition makes it a write at most once a minute per user.
    """
    await db.exec(_note_login(user_id, utcnow()))
    await db.commit()


async def lock_user(db: AsyncSession, *, user_id: int) -> User | None:
    """The user's row, locked as a login locks it (first in the lock order), for a
    workflow that writes rows of the user's before starting a session."""
    return await _lock_user(db, user_id=user_id)


async def _lock_user(db: AsyncSession, *, user_id: int) -> User | None:
    """The user's row, locked against its deletion and against end_all, and reloaded:
    what a concurrent change committed meanwhile is what the new tokens carry."""
    statement = select(User).where(col(User.id) == user_id)
    locked = await lock_for_update(db, statement, table=User, key_share=True)
    return (await db.exec(locked.execution_options(populate_existing=True))).first()


async def _lock_session(
    db: AsyncSession, *, session_id: str | None, user_id: int
) -> tuple[UserSession, User] | None:
    """The user's session, its row locked (FOR UPDATE; SQLite's write lock), with the
    user's row read, not locked (see the lock order)."""
    if session_id is None:
        return None
    statement = (
        select(UserSession, User)
        .join(User, col(User.id) == col(UserSession.user_id))
        .where(col(UserSession.id) == session_id, col(UserSession.user_id) == user_id)
        .execution_options(populate_existing=True)
    )
    locked = await lock_for_update(db, statement, table=UserSession)
    row = (await db.exec(locked)).first()
    return None if row is None else (row[0], row[1])


def _token(
    user: User, token_type: TokenType, user_session: UserSession, settings: Settings
) -> tuple[str, TokenClaims]:
    return create_token(
        user,
        token_type,
        settings,
        session_id=user_session.id,
        session_expires=user_session.expires_at,
        impersonator_id=user_session.impersonator_id,
    )


def _issue_pair(
    db: AsyncSession, *, user: User, user_session: UserSession, settings: Settings
) -> LoginResponse:
    """An access + refresh pair of the session; the refresh token is recorded (hashed)
    for the caller to commit. Neither outlives the session."""
    access_token, _ = _token(user, ACCESS, user_session, settings)
    refresh_token, claims = _token(user, REFRESH, user_session, settings)
    db.add(
        RefreshToken(
            jti_hash=hash_token_id(claims.jti),
            session_id=user_session.id,
            created_at=utcnow(),
            expires_at=datetime.fromtimestamp(claims.exp, UTC),
        )
    )
    return LoginResponse(
        access_token=access_token,
        refresh_token=refresh_token,
        expires_in=settings.ACCESS_TOKEN_EXPIRE_MINUTES * 60,
        user=UserPublic.model_validate(user),
    )
