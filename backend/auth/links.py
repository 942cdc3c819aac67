"""Mailed links: invitations, password resets, address checks and email changes; their
tokens and mail.

A link carries `<row id>.<secret>`: 32 random bytes (secrets), of which the database
keeps only a SHA-256. The id finds the row, and the secret's hash is compared with the
stored one in constant time, so the time a guess takes says nothing about the secret.

- issue: a new link of a purpose for a user; the older ones of that purpose stop
  working (deleted); audited; the caller commits;
- find: the link a token names, checked (secret, purpose, unused, unexpired), read only;
- consume: marks it used by a conditional UPDATE ... WHERE used_at IS NULL, so that of
  two requests using one link at the same moment exactly one wins; audited; the caller
  commits, with whatever the link was for.

Lock order (backend/auth/sessions.py): the user's row, then their links. issue locks the
user first; the flows that consume a link change the user's row before the link's.
"""

import hashlib
import hmac
import html
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import crud
from backend.auth.models import LINK_SECRET_BYTES, LinkPurpose, LinkToken
from backend.clock import utcnow
from backend.config import Settings
from backend.db.session import lock_for_update
from backend.errors import BadRequestError, ProblemCode, UserGoneError
from backend.http.parsing import INT32_MAX, parse_int
from backend.mail import Mail, Mailer
from backend.models import NO_PASSWORD, AuditAction, User

INVALID = (
    "This link is not valid (it may have been replaced by a newer one): copy the whole "
    "link from the most recent mail, or ask for a new one."
)
USED = "This link has already been used; ask for a new one if you still need it."
EXPIRED = "This link has expired; ask for a new one."
ADDRESS_CHANGED = (
    "This link was mailed to an address the account no longer has; ask for a new one at "
    "the current address."
)
WHAT_FOR = {
    LinkPurpose.INVITE: "accepting an invitation",
    LinkPurpose.RESET: "resetting a password",
    LinkPurpose.VERIFY: "verifying an email address",
    LinkPurpose.EMAIL_CHANGE: "changing an account's email address",
}
# The front end's pages for each link. The token is in the fragment, which browsers
# never send to a server: it stays out of access logs and Referer headers.
PAGES = {
    LinkPurpose.INVITE: "accept-invite",
    LinkPurpose.RESET: "reset-password",
    LinkPurpose.VERIFY: "verify-email",
    LinkPurpose.EMAIL_CHANGE: "confirm-email",
}


@dataclass(frozen=True)
class Issued:
    token: str
    expires_at: datetime


class LinkError(BadRequestError):
    """A token that names no usable link: unknown, replaced, used, expired or for
    something else."""


def lifetime(purpose: LinkPurpose, settings: Settings) -> timedelta:
    match purpose:
        case LinkPurpose.INVITE:
            return timedelta(hours=settings.INVITE_EXPIRE_HOURS)
        case LinkPurpose.RESET:
            return timedelta(minutes=settings.RESET_EXPIRE_MINUTES)
        case LinkPurpose.VERIFY:
            return timedelta(hours=settings.VERIFY_EXPIRE_HOURS)
        case LinkPurpose.EMAIL_CHANGE:
            return timedelta(hours=settings.EMAIL_CHANGE_EXPIRE_HOURS)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def issue(
    db: AsyncSession,
    *,
    user_id: int,
    purpose: LinkPurpose,
    settings: Settings,
    actor_id: int | None,
    new_email: str | None = None,
    session_id: str | None = None,
) -> Issued:
    """A new link, bound to the user's address of now; the user's older links of this
    purpose are revoked. An email change's carries the new address and the session
    that asked for it. The caller commits."""
    email = await _lock_user(db, user_id=user_id)
    await db.exec(
        delete(LinkToken).where(
            col(LinkToken.user_id) == user_id, col(LinkToken.purpose) == purpose
        )
    )
    secret = secrets.token_urlsafe(LINK_SECRET_BYTES)
    now = utcnow()
    link = LinkToken(
        user_id=user_id,
        purpose=purpose,
        token_hash=_hash(secret),
        email=email,
        new_email=new_email,
        session_id=session_id,
        created_at=now,
        expires_at=now + lifetime(purpose, settings),
    )
    db.add(link)
    await db.flush()
    crud.add_audit_event(
        db,
        action=AuditAction.LINK_ISSUE,
        actor_id=actor_id,
        target_id=user_id,
        details={"purpose": purpose.value, "expires_at": link.expires_at.isoformat()},
    )
    return Issued(token=f"{link.id}.{secret}", expires_at=link.expires_at)


async def find(db: AsyncSession, *, token: str, purpose: LinkPurpose) -> LinkToken:
    """The usable link of this purpose the token names, or LinkError saying why not.
    The token's shape is checked at the edge (models.LINK_TOKEN_PATTERN)."""
    id_text, _, secret = token.partition(".")
    link_id = parse_int(id_text, low=1, high=INT32_MAX)
    link = await db.get(LinkToken, link_id) if link_id is not None else None
    # Only once the secret matches does the answer say more than "not valid".
    if link is None or not hmac.compare_digest(link.token_hash, _hash(secret)):
        raise LinkError(INVALID, code=ProblemCode.LINK_INVALID)
    if link.purpose != purpose:
        raise LinkError(
            f"This link is for {WHAT_FOR[link.purpose]}, not for {WHAT_FOR[purpose]}.",
            code=ProblemCode.LINK_WRONG_PURPOSE,
        )
    if link.used_at is not None:
        raise LinkError(USED, code=ProblemCode.LINK_USED)
    if link.expires_at <= utcnow():
        raise LinkError(EXPIRED, code=ProblemCode.LINK_EXPIRED)
    email = (await db.exec(select(User.email).where(col(User.id) == link.user_id))).first()
    if email != link.email:
        raise address_changed()
    return link


def address_changed() -> "LinkError":
    return LinkError(ADDRESS_CHANGED, code=ProblemCode.LINK_ADDRESS_CHANGED)


async def revoke_pending(
    db: AsyncSession, *, user_id: int, purposes: Collection[LinkPurpose]
) -> None:
    """Delete the user's unused links of these purposes, in the caller's transaction: an
    account change has made them wrong (an address or a password changed, a
    deactivation)."""
    await db.exec(
        delete(LinkToken).where(
            col(LinkToken.user_id) == user_id,
            col(LinkToken.purpose).in_(purposes),
            col(LinkToken.used_at).is_(None),
        )
    )


async def consume(db: AsyncSession, *, link: LinkToken, now: datetime) -> None:
    """Mark the link used, unless another request did first (then roll back and refuse).
    The caller has changed the user's row already (the lock order) and commits."""
    used = await db.exec(
        update(LinkToken)
        .where(
            col(LinkToken.id) == link.id,
            col(LinkToken.used_at).is_(None),
            col(LinkToken.expires_at) > now,
        )
        .values(used_at=now)
    )
    if used.rowcount != 1:
        await db.rollback()
        raise LinkError(USED, code=ProblemCode.LINK_USED)
    crud.add_audit_event(
        db,
        action=AuditAction.LINK_USE,
        actor_id=link.user_id,
        target_id=link.user_id,
        details={"purpose": link.purpose.value},
    )


async def _lock_user(db: AsyncSession, *, user_id: int) -> str:
    """Serialise two links issued at once for one user, so the newer revokes the older;
    the user's address, which the lock keeps until the link is written."""
    statement = select(User.email).where(col(User.id) == user_id)
    locked = await lock_for_update(db, statement, table=User, key_share=True)
    email = (await db.exec(locked)).first()
    if email is None:
        raise UserGoneError()
    return email


# --- the mail that carries a link ----------------------------------------------------

SUBJECTS = {
    LinkPurpose.INVITE: "You are invited to {project}",
    LinkPurpose.RESET: "Reset your {project} password",
    LinkPurpose.VERIFY: "Verify your email address for {project}",
    LinkPurpose.EMAIL_CHANGE: "Confirm your new email address for {project}",
}
INTROS = {
    LinkPurpose.INVITE: "An account on {project} was made for you. Choose your password "
    "to start using it:",
    LinkPurpose.RESET: "Someone (we hope you) asked to reset the password of your account "
    "on {project}. Choose a new one here; every device signed in to it will be signed out:",
    LinkPurpose.VERIFY: "Confirm that this address is yours to finish setting up your "
    "account on {project}:",
    LinkPurpose.EMAIL_CHANGE: "Someone (we hope you) asked to make this the email address "
    "of their account on {project}. Confirm it here; the account's other signed-in devices "
    "will be signed out:",
}
OUTRO = (
    "The link works once, until {expires} (UTC). If you did not expect this mail, ignore "
    "it: nothing changes unless the link is used."
)


def link_url(settings: Settings, purpose: LinkPurpose, token: str) -> str:
    return f"{settings.public_url}/{PAGES[purpose]}#token={token}"


@dataclass(frozen=True, slots=True)
class LinkLetter:
    """A link's mail as it waits for a sender: the fields its message is made from
    (about 0.5 kB), rendered only when it is sent."""

    to: str
    greeting: str
    purpose: LinkPurpose
    token: str
    expires_at: datetime
    user_id: int | None

    @property
    def what(self) -> str:
        return f"{self.purpose.value} link for user {self.user_id}"

    def render(self, settings: Settings) -> Mail:
        project = settings.PROJECT_NAME
        url = link_url(settings, self.purpose, self.token)
        intro = INTROS[self.purpose].format(project=project)
        outro = OUTRO.format(expires=self.expires_at.strftime("%Y-%m-%d %H:%M"))
        greeted = self.greeting
        text = f"Hello {greeted},\n\n{intro}\n\n{url}\n\n{outro}\n"
        html_body = (
            f"<p>Hello {html.escape(greeted)},</p>\n<p>{html.escape(intro)}</p>\n"
            f'<p><a href="{html.escape(url)}">{html.escape(url)}</a></p>\n'
            f"<p>{html.escape(outro)}</p>\n"
        )
        return Mail(
            to=self.to,
            subject=SUBJECTS[self.purpose].format(project=project),
            text=text,
            html=html_body,
        )


def link_letter(
    *, purpose: LinkPurpose, user: User, link: Issued, to: str | None = None
) -> LinkLetter:
    """The letter of a link, to the user's address, or to `to` (an email change's new
    address, which is greeted by itself: its reader has proven nothing yet)."""
    return LinkLetter(
        to=to or user.email,
        greeting=to or _greeting_name(user, purpose),
        purpose=purpose,
        token=link.token,
        expires_at=link.expires_at,
        user_id=user.id,
    )


def _greeting_name(user: User, purpose: LinkPurpose) -> str:
    """The name a mail greets: one an admin gave (an invitation) or whose owner proved
    the address. Anyone may register any address under any name, so a mail to an address
    not yet proven greets the address: our mail never carries a stranger's words."""
    if purpose is LinkPurpose.INVITE or user.is_verified:
        return user.name
    return user.email


def send_link(
    mailer: Mailer, *, purpose: LinkPurpose, user: User, link: Issued, to: str | None = None
) -> None:
    """Mail a link just issued (and committed), after the response."""
    mailer.send_later(link_letter(purpose=purpose, user=user, link=link, to=to))


NOTICE_SUBJECT = "A change of your email address on {project} was asked for"
NOTICE_TEXT = (
    "Someone (we hope you) asked to change the email address of your account on {project} "
    "from {old} to {new}. A link to confirm it was mailed to {new}: the address changes "
    "only if it is followed, until {expires} (UTC).\n\n"
    "If it was not you, someone has your password or a device signed in to your account: "
    "sign in, change your password (every device is then signed out and the link stops "
    "working), and check your account's sessions and API keys."
)


@dataclass(frozen=True, slots=True)
class EmailChangeNotice:
    """The mail to the address an account is leaving: what was asked and what to do if
    it was not its owner. No link: it changes nothing."""

    to: str
    greeting: str
    new_email: str
    expires_at: datetime
    user_id: int | None

    @property
    def what(self) -> str:
        return f"email change notice for user {self.user_id}"

    def render(self, settings: Settings) -> Mail:
        project = settings.PROJECT_NAME
        body = NOTICE_TEXT.format(
            project=project,
            old=self.to,
            new=self.new_email,
            expires=self.expires_at.strftime("%Y-%m-%d %H:%M"),
        )
        paragraphs = [f"Hello {self.greeting},", *body.split("\n\n")]
        return Mail(
            to=self.to,
            subject=NOTICE_SUBJECT.format(project=project),
            text="\n\n".join(paragraphs) + "\n",
            html="\n".join(f"<p>{html.escape(part)}</p>" for part in paragraphs) + "\n",
        )


def send_email_change(mailer: Mailer, *, user: User, new_email: str, link: Issued) -> None:
    """Mail the link to the new address and the notice to the current one, after the
    response."""
    send_link(mailer, purpose=LinkPurpose.EMAIL_CHANGE, user=user, link=link, to=new_email)
    mailer.send_later(
        EmailChangeNotice(
            to=user.email,
            greeting=_greeting_name(user, LinkPurpose.EMAIL_CHANGE),
            new_email=new_email,
            expires_at=link.expires_at,
            user_id=user.id,
        )
    )


def mail_link_later(
    sessionmaker: async_sessionmaker[AsyncSession],
    mailer: Mailer,
    settings: Settings,
    *,
    email: str,
    purpose: LinkPurpose,
) -> None:
    """Look the address up, and mail it a link if its account may have one, all after
    the response: the answer is the same, in content and in time, whether or not the
    account exists."""

    async def look_up_and_send() -> None:
        async with sessionmaker() as db:
            found = await db.exec(select(User).where(User.email == email))
            user = found.first()
            if user is None or user.id is None or not _may_have(user, purpose):
                return
            await db.commit()  # a read-only transaction, ended before issue's write
            link = await issue(
                db, user_id=user.id, purpose=purpose, settings=settings, actor_id=None
            )
            await db.commit()
        mailer.send_later(link_letter(purpose=purpose, user=user, link=link))

    mailer.run_later(look_up_and_send(), f"{purpose.value} link on request")


def _may_have(user: User, purpose: LinkPurpose) -> bool:
    if purpose == LinkPurpose.RESET:
        # An invited account has no password to reset: its invitation is its link.
        return user.is_active and user.hashed_password != NO_PASSWORD
    return user.is_active and not user.is_verified
