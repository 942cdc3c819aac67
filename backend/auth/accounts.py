"""Account workflows: register, log in, change a password, invite, set a password or
verify an address with a mailed link, change one's address, delete one's account (or
schedule it, and purge the scheduled), and the admin's edits that end sessions.

Each is one transaction over crud's row functions, the links and the login sessions;
none knows HTTP. The password is hashed with the transaction's connection returned to
the pool (db.session.release_connection)."""

import hashlib
import hmac
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import crud
from backend.auth import links, mfa, sessions, sso
from backend.auth.links import Issued
from backend.auth.models import (
    ClientInfo,
    LinkPurpose,
    LoginResponse,
    Reauthenticated,
    RegisterRequest,
    SessionEndReason,
)
from backend.auth.passwords import PasswordHasher
from backend.auth.sessions import DEACTIVATED, Caller
from backend.clock import utcnow
from backend.config import Settings
from backend.db.session import release_connection
from backend.errors import (
    BadRequestError,
    BannedError,
    ConflictError,
    EmailTakenError,
    FieldInvalidError,
    ForbiddenError,
    ProblemCode,
    UserGoneError,
)
from backend.models import (
    NO_PASSWORD,
    AuditAction,
    User,
    UserCreate,
    UserInvite,
    UserRole,
    UserUpdate,
)
from backend.rules import password_email_problem
from backend.webhooks import outbox
from backend.webhooks.models import WebhookEventType

EMAIL_NOT_VERIFIED = (
    "This account's email address is not verified yet: follow the link mailed to it, or ask "
    "for a new one with POST /auth/verify/resend."
)


async def create_user(
    db: AsyncSession,
    *,
    data: UserCreate,
    hasher: PasswordHasher,
    audit: bool,
    actor_id: int | None = None,
    verified: bool = False,
) -> User:
    """Insert a user with the password given. With `audit`, the creation is recorded in
    the audit trail, in the same transaction, as `actor_id`'s doing (an admin, or None
    for the CLI). `verified`: the email counts as proven (the operator's own first admin).
    """
    hashed_password = await _hash(db, hasher, data.password, email=data.email)
    user = await crud.insert_user(
        db, data=data, hashed_password=hashed_password, is_verified=verified
    )
    await outbox.stage_user(db, event=WebhookEventType.USER_CREATED, user=user)
    if audit:
        details = {"email": user.email, "role": str(user.role)}
        crud.add_audit_event(
            db, action=AuditAction.CREATE, actor_id=actor_id, target_id=user.id, details=details
        )
    await db.commit()
    return user


async def ensure_user(db: AsyncSession, *, data: UserCreate, hasher: PasswordHasher) -> bool:
    """Create the user unless the email exists (never touching an existing password)."""
    if await crud.get_user_by_email(db, email=data.email) is not None:
        return False
    try:
        await create_user(db, data=data, hasher=hasher, audit=True, verified=True)
    except EmailTakenError:  # another worker created it meanwhile
        return False
    return True


@dataclass(frozen=True)
class Registered:
    user: User
    tokens: LoginResponse | None  # None when EMAIL_VERIFICATION=required: verify first
    verify_link: Issued | None  # to mail, unless EMAIL_VERIFICATION=off


async def register(
    db: AsyncSession,
    *,
    data: RegisterRequest,
    hasher: PasswordHasher,
    settings: Settings,
    client: ClientInfo,
) -> Registered:
    """Create an account and, unless its email must be verified first, log it in, in one
    transaction: a client that gets no answer may retry without finding its email taken
    by an account it never heard of. The verification link is issued in it too."""
    hashed_password = await _hash(db, hasher, data.password, email=data.email)
    user = await crud.insert_user(db, data=data, hashed_password=hashed_password)
    assert user.id is not None
    await outbox.stage_user(db, event=WebhookEventType.USER_CREATED, user=user)
    verify_link = None
    if settings.EMAIL_VERIFICATION != "off":
        verify_link = await links.issue(
            db, user_id=user.id, purpose=LinkPurpose.VERIFY, settings=settings, actor_id=user.id
        )
    if settings.EMAIL_VERIFICATION == "required":
        await db.commit()
        return Registered(user=user, tokens=None, verify_link=verify_link)
    tokens = await sessions.start(db, user=user, client=client, settings=settings)
    return Registered(user=user, tokens=tokens, verify_link=verify_link)


@dataclass(frozen=True)
class LoginRefused:
    """A wrong email or password; `user_id` is the account the email names, if any (for
    the sign-in history, never for the answer)."""

    user_id: int | None


async def log_in(
    db: AsyncSession,
    *,
    email: str,
    password: str,
    hasher: PasswordHasher,
    settings: Settings,
    client: ClientInfo,
) -> LoginResponse | LoginRefused:
    """Tokens for the user whose password this is, or LoginRefused; unknown emails cost
    one verify too. A rehash (BCRYPT_ROUNDS changed) is written with the new refresh token.
    A user with a second factor gets the mfa_required refusal instead (backend/auth/mfa.py)."""
    with hasher.reserve():
        if not hasher.knows_costs:  # once per process: the costs an unknown email may take
            hasher.learn_costs(await crud.count_password_costs(db))
        user = await crud.get_user_by_email(db, email=email)
        matched, new_hash = await _verify(
            db,
            hasher,
            password,
            user.hashed_password if user else NO_PASSWORD,
            account=email.lower(),  # the form get_user_by_email looks up
        )
    if user is None or not matched:
        return LoginRefused(user.id if user is not None else None)
    if not user.is_active:
        raise ForbiddenError(DEACTIVATED, code=ProblemCode.ACCOUNT_DEACTIVATED)
    if user.ban_in_force(utcnow()):  # after the password, as a deactivation: no oracle
        raise BannedError(user.banned_until)
    if settings.EMAIL_VERIFICATION == "required" and not user.is_verified:
        raise ForbiddenError(EMAIL_NOT_VERIFIED, code=ProblemCode.EMAIL_NOT_VERIFIED)
    if new_hash is not None:  # BCRYPT_ROUNDS changed, or the hash predates NFKC
        user.hashed_password = new_hash
        db.add(user)
    assert user.id is not None
    if await sessions.has_factor(db, user_id=user.id):
        raise await mfa.challenge(db, user=user)  # commits the rehash with it
    return await sessions.start(db, user=user, client=client, settings=settings)


async def change_password(
    db: AsyncSession,
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
    matched, _ = await _verify(db, hasher, current_password, user.hashed_password)
    if not matched:
        raise BadRequestError(
            "The current password is incorrect.", code=ProblemCode.PASSWORD_INCORRECT
        )
    changes = UserUpdate(password=new_password)
    updated = await _stage_update(db, user=user, changes=changes, hasher=hasher, actor_id=user.id)
    return await sessions.start(db, user=updated, client=client, settings=settings)


async def reauthenticate(
    db: AsyncSession,
    *,
    caller: Caller,
    password: str,
    hasher: PasswordHasher,
    settings: Settings,
) -> Reauthenticated:
    """Prove the caller's password again, for the routes that ask for a recent proof."""
    matched, _ = await _verify(db, hasher, password, caller.user.hashed_password)
    if not matched:
        raise BadRequestError("The password is incorrect.", code=ProblemCode.PASSWORD_INCORRECT)
    return await sessions.note_reauthentication(db, caller=caller, settings=settings)


async def update_user(
    db: AsyncSession,
    *,
    user: User,
    changes: UserUpdate,
    hasher: PasswordHasher,
    actor_id: int | None = None,
    by_api_key: bool = False,
    expected_versions: Collection[int] | None = None,
) -> User:
    """Apply the fields sent (crud.update_user) and commit. A deactivation, a role change
    or a new password also ends every session and API key of the user, and refuses
    every token already issued, in the same transaction.

    Credentials are changed only with proof of who asks: never with an API key (which a
    script holds, for months), and one's own password only with the current one
    (change_password), never as an admin's edit."""
    sets_email = changes.email is not None and changes.email != user.email
    if by_api_key and (changes.password is not None or sets_email):
        raise ForbiddenError(
            "An API key cannot set a password or an email address: use an access token "
            "from a login.",
            code=ProblemCode.API_KEY_NOT_ALLOWED,
        )
    if changes.password is not None and actor_id is not None and user.id == actor_id:
        raise ForbiddenError(
            "Change your own password with POST /users/me/password, which asks for the "
            "current one.",
            code=ProblemCode.CURRENT_PASSWORD_REQUIRED,
        )
    updated = await _stage_update(
        db,
        user=user,
        changes=changes,
        hasher=hasher,
        actor_id=actor_id,
        expected_versions=expected_versions,
    )
    await db.commit()
    return updated


async def _stage_update(
    db: AsyncSession,
    *,
    user: User,
    changes: UserUpdate,
    hasher: PasswordHasher,
    actor_id: int | None,
    expected_versions: Collection[int] | None = None,
) -> User:
    values = crud.changed_values(user, changes)
    if changes.password is not None:
        email = values.get("email", user.email)
        values["hashed_password"] = await _hash(db, hasher, changes.password, email=email)
    if "email" in values:
        values["is_verified"] = False  # nobody has proven the new address yet
    end_reason = _sessions_end_reason(values)
    updated = await crud.update_user(
        db,
        user=user,
        values=values,
        now=utcnow(),
        revoke=end_reason is not None,
        actor_id=actor_id,
        expected_versions=expected_versions,
    )
    assert updated.id is not None
    if values:
        await outbox.stage_user(db, event=WebhookEventType.USER_UPDATED, user=updated)
    # After the user's row, in the same transaction: the lock order of auth/sessions.py.
    stale_links = _stale_links(values, deactivating=changes.is_active is False)
    if stale_links:
        await links.revoke_pending(db, user_id=updated.id, purposes=stale_links)
    if end_reason is not None:
        await sessions.end_all_staged(db, user_id=updated.id, reason=end_reason)
    return updated


def _stale_links(values: dict[str, Any], *, deactivating: bool) -> set[LinkPurpose]:
    """The pending links an account change makes wrong: every one mailed to an address
    the account leaves, a reset once the password changed, an invitation once an admin
    deactivated the account (even one never activated: a pending invitation), and an
    email change after either: whoever asked for it may be who the change shuts out."""
    if "email" in values:
        return set(LinkPurpose)
    stale = set()
    if "hashed_password" in values:
        stale |= {LinkPurpose.RESET, LinkPurpose.EMAIL_CHANGE}
    if deactivating:
        stale |= {LinkPurpose.INVITE, LinkPurpose.EMAIL_CHANGE}
    return stale


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


async def delete_user(
    db: AsyncSession,
    *,
    user: User,
    actor_id: int | None,
    expected_versions: Collection[int] | None = None,
) -> None:
    """Delete the user (crud.delete_user: audited, never the last active admin) and
    report it to webhooks, in one transaction."""
    await crud.delete_user(db, user=user, actor_id=actor_id, expected_versions=expected_versions)
    await outbox.stage_user(db, event=WebhookEventType.USER_DELETED, user=user)
    await db.commit()


async def invite_user(
    db: AsyncSession, *, data: UserInvite, settings: Settings, actor_id: int | None
) -> tuple[User, Issued]:
    """Create an account without a password, inactive, and its invitation link, in one
    transaction; it can log in once its owner sets a password through the link."""
    user = await crud.insert_user(db, data=data, hashed_password=NO_PASSWORD, is_active=False)
    assert user.id is not None
    await outbox.stage_user(db, event=WebhookEventType.USER_CREATED, user=user)
    details = {"email": user.email, "role": str(user.role), "invited": True}
    crud.add_audit_event(
        db, action=AuditAction.CREATE, actor_id=actor_id, target_id=user.id, details=details
    )
    link = await links.issue(
        db, user_id=user.id, purpose=LinkPurpose.INVITE, settings=settings, actor_id=actor_id
    )
    await db.commit()
    return user, link


async def reinvite_user(
    db: AsyncSession, *, user: User, settings: Settings, actor_id: int | None
) -> Issued:
    """A new invitation link for an account whose owner has not set a password yet; the
    previous link stops working."""
    assert user.id is not None
    if user.hashed_password != NO_PASSWORD:
        raise ConflictError(
            "This user already has a password: the invitation was accepted.",
            code=ProblemCode.INVITATION_ACCEPTED,
        )
    await release_connection(db)  # the read ends before issue's write (SQLite)
    link = await links.issue(
        db, user_id=user.id, purpose=LinkPurpose.INVITE, settings=settings, actor_id=actor_id
    )
    await db.commit()
    return link


async def set_password_with_link(
    db: AsyncSession,
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
    with hasher.reserve():
        link = await links.find(db, token=token, purpose=purpose)
        user_id, email = link.user_id, link.email  # now: a rollback expires the loaded rows
        if purpose == LinkPurpose.RESET:  # a link mailed before the domain went SSO-only
            sso.check_password_allowed(settings, email)
        hashed_password = await _hash(db, hasher, new_password, email=email)  # ends the read
    now = utcnow()
    values: dict[str, Any] = {"hashed_password": hashed_password, "is_verified": True}
    # The address is checked again in the write: it may have changed during the hash.
    conditions = [col(User.id) == user_id, col(User.email) == email]
    if purpose == LinkPurpose.INVITE:
        values["is_active"] = True
    else:
        conditions.append(col(User.is_active).is_(True))  # no way back in for the deactivated
    updated = await crud.update_user_row(db, conditions, values, now=now, revoke=True)
    if updated is None:
        await db.rollback()
        current = await crud.get_user(db, user_id=user_id)
        if current is None:  # its links went with it
            raise links.LinkError(links.INVALID, code=ProblemCode.LINK_INVALID)
        if current.email != email:
            raise links.address_changed()
        raise ForbiddenError(DEACTIVATED, code=ProblemCode.ACCOUNT_DEACTIVATED)
    await links.consume(db, link=link, now=now)
    assert updated.id is not None
    await outbox.stage_user(db, event=WebhookEventType.USER_UPDATED, user=updated)
    stale = {LinkPurpose.RESET, LinkPurpose.EMAIL_CHANGE}  # see _stale_links
    await links.revoke_pending(db, user_id=updated.id, purposes=stale)
    fields = ["is_active", "password"] if purpose == LinkPurpose.INVITE else ["password"]
    crud.add_audit_event(
        db,
        action=AuditAction.UPDATE,
        actor_id=updated.id,
        target_id=updated.id,
        details={"fields": fields},
    )
    await sessions.end_all_staged(db, user_id=updated.id, reason=SessionEndReason.PASSWORD_CHANGE)
    # A mailed link proves the inbox, not the second factor: the new password is set,
    # and the session waits for the factor as a login's does.
    if await sessions.has_factor(db, user_id=updated.id):
        raise await mfa.challenge(db, user=updated)
    return await sessions.start(db, user=updated, client=client, settings=settings)


async def verify_email(db: AsyncSession, *, token: str) -> User:
    """Mark the email of the link's user verified, using the link."""
    link = await links.find(db, token=token, purpose=LinkPurpose.VERIFY)
    await release_connection(db)  # the read ends before the write (SQLite)
    now = utcnow()
    # The address is the link's, checked in the write itself.
    conditions = [col(User.id) == link.user_id, col(User.email) == link.email]
    updated = await crud.update_user_row(
        db, conditions, {"is_verified": True}, now=now, revoke=False
    )
    if updated is None:  # deleted meanwhile (its links went with it), or its address changed
        await db.rollback()
        raise links.LinkError(links.INVALID, code=ProblemCode.LINK_INVALID)
    await links.consume(db, link=link, now=now)
    await outbox.stage_user(db, event=WebhookEventType.USER_UPDATED, user=updated)
    await db.commit()
    return updated


async def request_email_change(
    db: AsyncSession, *, caller: Caller, new_email: str, settings: Settings
) -> Issued:
    """A link that makes `new_email` the caller's address, to mail there, once the
    address is neither taken nor like another account's; the caller's session is
    recorded in it, to stay signed in when the change happens. A newer request replaces
    a pending one. Commits."""
    user = caller.user
    assert user.id is not None
    if new_email == user.email:
        raise FieldInvalidError(
            "email", "is already this account's address", field_code="email_unchanged"
        )
    await crud.ensure_email_free(db, email=new_email, user_id=user.id)
    await release_connection(db)  # the read ends before issue's write (SQLite)
    link = await links.issue(
        db,
        user_id=user.id,
        purpose=LinkPurpose.EMAIL_CHANGE,
        settings=settings,
        actor_id=user.id,
        new_email=new_email,
        session_id=caller.user_session.id,
    )
    await db.commit()
    return link


# An email change ends the other sessions as a logout everywhere does: a reason of its
# own would change the sessions table's CHECK, which SQLite does by copying the table,
# and dropping the old copy cascades to every refresh token.
EMAIL_CHANGE_ENDS_SESSIONS = SessionEndReason.LOGOUT_ALL


async def confirm_email_change(db: AsyncSession, *, token: str) -> User:
    """Make the change an email-change link was mailed for: the address is checked
    again (taken, look-alike: 409), marked verified, the account's other pending links
    die (all were for the old address) and every session ends but the one that asked.
    One transaction, in which the link is used. Commits."""
    link = await links.find(db, token=token, purpose=LinkPurpose.EMAIL_CHANGE)
    # Now: a rollback expires the loaded rows.
    user_id, old_email, new_email, keep = link.user_id, link.email, link.new_email, link.session_id
    assert new_email is not None
    await release_connection(db)  # the read ends before the write (SQLite)
    now = utcnow()
    updated = await crud.change_email(
        db, user_id=user_id, old_email=old_email, new_email=new_email, now=now
    )
    if updated is None:
        await db.rollback()
        current = await crud.get_user(db, user_id=user_id)
        if current is None:  # its links went with it
            raise links.LinkError(links.INVALID, code=ProblemCode.LINK_INVALID)
        if current.email != old_email:
            raise links.address_changed()
        raise ForbiddenError(DEACTIVATED, code=ProblemCode.ACCOUNT_DEACTIVATED)
    await links.consume(db, link=link, now=now)
    await links.revoke_pending(db, user_id=user_id, purposes=set(LinkPurpose))
    await sessions.end_others_staged(
        db, user_id=user_id, keep=keep, reason=EMAIL_CHANGE_ENDS_SESSIONS
    )
    await db.commit()
    return updated


def email_digest(email: str, settings: Settings) -> str:
    """What the audit trail keeps of a deleted account's address: an HMAC-SHA256 under
    a key derived from SECRET_KEY. A plain hash of an address is no secret: addresses
    are few and guessable, and hashing a list of them finds the one that matches. Keyed,
    only the server can test an address (to answer "was this account deleted?"); the
    digests change with SECRET_KEY."""
    key = hmac.new(settings.SECRET_KEY.encode(), b"deleted account email", hashlib.sha256)
    return hmac.new(key.digest(), email.encode(), hashlib.sha256).hexdigest()


async def delete_own_account(
    db: AsyncSession, *, caller: Caller, settings: Settings
) -> datetime | None:
    """Delete the caller's account now (ACCOUNT_DELETION=immediate: None) or schedule
    it (grace: when `backend purge` may remove it). The last active admin is refused.
    Scheduled, every session and API key ends, every token is refused and pending email
    changes die; a login cancels it (sessions.start). Commits."""
    user = caller.user
    assert user.id is not None
    if user.role == UserRole.ADMIN and user.is_active:
        await crud.ensure_another_active_admin(db, user=user)
    if settings.ACCOUNT_DELETION == "immediate":
        digest = email_digest(user.email, settings)
        if not await crud.delete_account(
            db, user_id=user.id, conditions=[], actor_id=user.id, email_digest=digest
        ):
            await db.rollback()
            raise UserGoneError()
        await db.commit()
        return None
    now = utcnow()
    when = now + timedelta(days=settings.ACCOUNT_DELETION_GRACE_DAYS)
    conditions = [col(User.id) == user.id]
    values = {"deletion_scheduled_at": when}
    if await crud.update_user_row(db, conditions, values, now=now, revoke=True) is None:
        await db.rollback()
        raise UserGoneError()
    crud.add_audit_event(
        db,
        action=AuditAction.DELETION_SCHEDULE,
        actor_id=user.id,
        target_id=user.id,
        details={"deletion_scheduled_at": when.isoformat()},
    )
    await links.revoke_pending(db, user_id=user.id, purposes={LinkPurpose.EMAIL_CHANGE})
    # DEACTIVATED: the reason that ends the API keys with the sessions.
    await sessions.end_all_staged(db, user_id=user.id, reason=SessionEndReason.DEACTIVATED)
    await db.commit()
    return when


async def purge_scheduled_deletions(db: AsyncSession, *, settings: Settings) -> int:
    """Delete the accounts whose scheduled deletion is due, each in its own transaction
    and only if still due then: a login that cancelled it meanwhile keeps the account.
    How many were deleted."""
    now = utcnow()
    due = await crud.scheduled_deletions(db, now=now)
    await db.commit()  # the read ends before the deletions (SQLite)
    deleted = 0
    for user_id, email in due:
        if await crud.delete_account(
            db,
            user_id=user_id,
            conditions=[col(User.deletion_scheduled_at) <= now],
            actor_id=None,
            email_digest=email_digest(email, settings),
        ):
            deleted += 1
        await db.commit()
    return deleted


async def _hash(db: AsyncSession, hasher: PasswordHasher, password: str, *, email: str) -> str:
    """The hash of a password for the account with this email. Every path that sets a
    password comes here, so the one rule that needs the email is checked here."""
    problem = password_email_problem(password, email)
    if problem:
        raise FieldInvalidError("password", problem.message, field_code=problem.code)
    await release_connection(db)
    return await hasher.hash(password)


async def _verify(
    db: AsyncSession,
    hasher: PasswordHasher,
    password: str,
    hashed_password: str,
    *,
    account: str = "",
) -> tuple[bool, str | None]:
    await release_connection(db)
    # No account, or one invited and without a password yet: the time a stored hash
    # would take (the cost drawn for `account`), no match.
    return await hasher.verify(password, hashed_password or None, account=account)
