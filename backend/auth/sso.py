"""Sign-in with identity providers: the flow and the identities that link accounts.

- begin: a trip to the provider: a server-side record (the state's hash, the PKCE
  verifier, the nonce, where to return), bound to the browser by a cookie holding the
  state, expiring after SSO_FLOW_MINUTES;
- finish: the callback: the record used once (a conditional UPDATE), the code traded
  for the provider's word on who signed in (backend/auth/providers.py), then the account:
  its identity, an automatic link, a just-in-time account, or a refusal, audited; a
  sign-in ends in a one-time code, never tokens in a URL;
- exchange: that code, once and within CODE_SECONDS, for a normal login session;
- unlink: never a user's last way to sign in.

Accounts are matched by the provider's subject, never by email alone: an email links
an existing account only when the provider says it is verified and the account's own
address is verified too. Otherwise its owner logs in and links from My account.
"""

import hashlib
import hmac
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import crud
from backend.auth import mfa, sessions
from backend.auth.models import (
    ClientInfo,
    Identity,
    LoginResponse,
    SsoFlow,
    SsoMode,
    new_sso_secret,
)
from backend.auth.providers import ProviderIdentity, Providers, bad_answer
from backend.auth.sessions import DEACTIVATED
from backend.clock import utcnow
from backend.config import Settings, SsoProviderSettings
from backend.db.session import lock_for_update
from backend.errors import (
    BadRequestError,
    ConflictError,
    DomainError,
    FieldInvalidError,
    ForbiddenError,
    NotFoundError,
    ProblemCode,
)
from backend.models import (
    NAME_MAX_CHARS,
    NO_PASSWORD,
    AuditAction,
    Name,
    User,
    UserInvite,
    UserRole,
)
from backend.rules import normalise_email

# The one-time code's life: the front end trades it as soon as the redirect lands.
CODE_SECONDS = 60
CODE_VERIFIER_BYTES = 48  # 64 characters: RFC 7636 wants 43 to 128
LINK_FROM_MY_ACCOUNT = (
    "An account with this email exists: log in with its password, then link {name} from "
    "My account (POST /users/me/identities/{slug})."
)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def provider_or_404(settings: Settings, slug: str) -> SsoProviderSettings:
    provider = settings.sso_provider(slug)
    if provider is None:
        raise NotFoundError(
            f"No sign-in provider {slug!r} is configured.", code=ProblemCode.SSO_PROVIDER_UNKNOWN
        )
    return provider


@dataclass(frozen=True)
class Started:
    state: str  # for the browser's cookie
    authorization_url: str


async def begin(
    db: AsyncSession,
    *,
    providers: Providers,
    settings: Settings,
    slug: str,
    redirect_uri: str,
    return_to: str,
    user_id: int | None = None,
) -> Started:
    """Record a trip to the provider (for `user_id`: to link an identity to that user)
    and say where to send the browser; commits."""
    provider = provider_or_404(settings, slug)
    state, nonce = new_sso_secret(), new_sso_secret()
    code_verifier = secrets.token_urlsafe(CODE_VERIFIER_BYTES)
    # Asked first: a provider that is down leaves no record behind.
    url = await providers.authorization_url(
        provider,
        redirect_uri=redirect_uri,
        state=state,
        nonce=nonce,
        code_verifier=code_verifier,
    )
    now = utcnow()
    # Trips long over are deleted here, lazily, instead of by a job.
    await db.exec(
        delete(SsoFlow).where(
            col(SsoFlow.expires_at) <= now,
            or_(col(SsoFlow.code_expires_at).is_(None), col(SsoFlow.code_expires_at) <= now),
        )
    )
    db.add(
        SsoFlow(
            id=_hash(state),
            provider=slug,
            mode=SsoMode.LOGIN if user_id is None else SsoMode.LINK,
            user_id=user_id,
            code_verifier=code_verifier,
            nonce=nonce,
            return_to=return_to,
            created_at=now,
            expires_at=now + timedelta(minutes=settings.SSO_FLOW_MINUTES),
        )
    )
    await db.commit()
    return Started(state=state, authorization_url=url)


@dataclass(frozen=True)
class Finished:
    return_to: str
    code: str | None  # a sign-in's one-time code; None after a link


async def finish(
    db: AsyncSession,
    *,
    providers: Providers,
    settings: Settings,
    slug: str,
    state: str | None,
    browser_state: str | None,
    code: str | None,
    error: str | None,
    redirect_uri: str,
) -> Finished:
    """The callback: check the trip, learn who signed in, and sign them in or link."""
    provider = provider_or_404(settings, slug)
    flow = await _use_flow(db, slug=slug, state=state, browser_state=browser_state)
    if error is not None or not code:
        raise ForbiddenError(
            f"{provider.name} did not sign you in ({error or 'no code'}).",
            code=ProblemCode.SSO_DENIED,
        )
    identity = await providers.identity(
        provider,
        code=code,
        redirect_uri=redirect_uri,
        code_verifier=flow.code_verifier,
        nonce=flow.nonce,
    )
    if flow.mode is SsoMode.LINK:
        assert flow.user_id is not None
        await _link_for(db, user_id=flow.user_id, provider=provider, identity=identity)
        return Finished(return_to=flow.return_to, code=None)
    user = await _sign_in(db, provider=provider, identity=identity, settings=settings)
    one_time = new_sso_secret()
    await db.exec(
        update(SsoFlow)
        .where(col(SsoFlow.id) == flow.id)
        .values(
            user_id=user.id,
            code_hash=_hash(one_time),
            code_expires_at=utcnow() + timedelta(seconds=CODE_SECONDS),
        )
    )
    await db.commit()
    return Finished(return_to=flow.return_to, code=one_time)


async def _use_flow(
    db: AsyncSession, *, slug: str, state: str | None, browser_state: str | None
) -> SsoFlow:
    """The trip this callback ends, used by this request and no other; commits."""
    if not state or not browser_state or not hmac.compare_digest(state, browser_state):
        raise BadRequestError(
            "This sign-in was not started in this browser (its state does not match the "
            "cookie): start it again.",
            code=ProblemCode.SSO_STATE_INVALID,
        )
    now = utcnow()
    flow_id = _hash(state)
    flow = (
        await db.exec(select(SsoFlow).where(col(SsoFlow.id) == flow_id, SsoFlow.provider == slug))
    ).first()
    if flow is None or flow.used_at is not None:
        await db.rollback()
        raise BadRequestError(
            "This sign-in is unknown or was already used: start it again.",
            code=ProblemCode.SSO_STATE_INVALID,
        )
    if flow.expires_at <= now:
        await db.rollback()
        raise BadRequestError(
            "This sign-in took too long: start it again.", code=ProblemCode.SSO_FLOW_EXPIRED
        )
    used = await db.exec(
        update(SsoFlow)
        .where(col(SsoFlow.id) == flow_id, col(SsoFlow.used_at).is_(None))
        .values(used_at=now)
    )
    if used.rowcount != 1:  # another request with the same state won
        await db.rollback()
        raise BadRequestError(
            "This sign-in was already used: start it again.", code=ProblemCode.SSO_STATE_INVALID
        )
    result = SsoFlow.model_validate(flow)  # before the commit expires the loaded row
    await db.commit()
    return result


async def _refuse(
    db: AsyncSession,
    error: DomainError,
    *,
    provider: SsoProviderSettings,
    identity: ProviderIdentity,
    user_id: int | None = None,
    actor_id: int | None = None,
) -> NoReturn:
    """Record a refusal in the audit trail (committed), then refuse."""
    await db.rollback()
    crud.add_audit_event(
        db,
        action=AuditAction.SSO_REFUSE,
        actor_id=actor_id,
        target_id=user_id,
        details={
            "provider": provider.slug,
            "subject": identity.subject,
            "email": identity.email,
            "code": str(error.code),
        },
    )
    await db.commit()
    raise error


def _link_details(provider: SsoProviderSettings, identity: ProviderIdentity) -> dict[str, object]:
    return {"provider": provider.slug, "subject": identity.subject, "email": identity.email}


async def _find_identity(db: AsyncSession, *, slug: str, subject: str) -> Identity | None:
    statement = select(Identity).where(Identity.provider == slug, Identity.subject == subject)
    return (await db.exec(statement)).first()


async def _sign_in(
    db: AsyncSession,
    *,
    provider: SsoProviderSettings,
    identity: ProviderIdentity,
    settings: Settings,
) -> User:
    """The account this identity signs in, linked or created now if the rules allow;
    staged in the caller's transaction."""
    known = await _find_identity(db, slug=provider.slug, subject=identity.subject)
    if known is not None:
        user = await crud.get_user(db, user_id=known.user_id)
        assert user is not None  # the identity goes with its user (ON DELETE CASCADE)
        if not user.is_active:
            await _refuse(
                db,
                ForbiddenError(DEACTIVATED, code=ProblemCode.ACCOUNT_DEACTIVATED),
                provider=provider,
                identity=identity,
                user_id=user.id,
            )
        known.last_used_at = utcnow()
        db.add(known)
        return user
    if identity.email is None or not identity.email_verified:
        await _refuse(
            db,
            ForbiddenError(
                f"{provider.name} has not verified your email address, so it cannot sign you "
                "in here: verify it there, or log in and link it from My account.",
                code=ProblemCode.SSO_EMAIL_NOT_VERIFIED,
            ),
            provider=provider,
            identity=identity,
        )
    try:
        email = normalise_email(identity.email, allow_international=True)
    except ValueError as error:
        raise bad_answer(provider.name, f"the email {identity.email!r} is not valid") from error
    user = await crud.get_user_by_email(db, email=email)
    if user is not None:
        if not user.is_verified:
            await _refuse(
                db,
                ConflictError(
                    LINK_FROM_MY_ACCOUNT.format(name=provider.name, slug=provider.slug),
                    code=ProblemCode.SSO_LINK_REQUIRED,
                ),
                provider=provider,
                identity=identity,
                user_id=user.id,
            )
        if not user.is_active:
            await _refuse(
                db,
                ForbiddenError(DEACTIVATED, code=ProblemCode.ACCOUNT_DEACTIVATED),
                provider=provider,
                identity=identity,
                user_id=user.id,
            )
    else:
        user = await _create_user(
            db, provider=provider, identity=identity, email=email, settings=settings
        )
    assert user.id is not None
    _add_identity(db, user_id=user.id, provider=provider, identity=identity, used=True)
    crud.add_audit_event(
        db,
        action=AuditAction.IDENTITY_LINK,
        actor_id=user.id,
        target_id=user.id,
        details={**_link_details(provider, identity), "automatic": True},
    )
    return user


async def _create_user(
    db: AsyncSession,
    *,
    provider: SsoProviderSettings,
    identity: ProviderIdentity,
    email: str,
    settings: Settings,
) -> User:
    """A just-in-time account, for the domains of SSO_ALLOWED_DOMAINS only."""
    domain = email.rpartition("@")[2]
    if domain not in settings.SSO_ALLOWED_DOMAINS:
        await _refuse(
            db,
            ForbiddenError(
                f"Accounts for {domain} are not created by signing in with {provider.name}: "
                "ask an admin for an invitation.",
                code=ProblemCode.SSO_DOMAIN_NOT_ALLOWED,
            ),
            provider=provider,
            identity=identity,
        )
    name = _name(identity.name, email)
    role = _role(provider, identity, default=UserRole(settings.SSO_DEFAULT_ROLE))
    data = UserInvite.model_construct(email=email, name=name, role=role)
    # The provider proved the address; there is no password until its owner sets one.
    user = await crud.insert_user(db, data=data, hashed_password=NO_PASSWORD, is_verified=True)
    crud.add_audit_event(
        db,
        action=AuditAction.CREATE,
        actor_id=None,
        target_id=user.id,
        details={"email": user.email, "role": str(user.role), "sso": provider.slug},
    )
    return user


NAMES: TypeAdapter[str] = TypeAdapter(Name)


def _name(name: str | None, email: str) -> str:
    """The provider's name for the user if it passes the rules names typed here pass
    (no control characters, not blank, at most 100 characters), else the email's local
    part."""
    try:
        return NAMES.validate_python(name)
    except ValidationError:
        return email.partition("@")[0][:NAME_MAX_CHARS]


def _role(
    provider: SsoProviderSettings, identity: ProviderIdentity, *, default: UserRole
) -> UserRole:
    """The role a groups or roles claim maps to: admin if any value maps to it, else user
    if any maps to that, else the default."""
    if provider.roles_claim is None:
        return default
    value = identity.claims.get(provider.roles_claim)
    values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    mapped = {provider.roles[v] for v in values if isinstance(v, str) and v in provider.roles}
    for role in (UserRole.ADMIN, UserRole.USER):
        if role.value in mapped:
            return role
    return default


def _add_identity(
    db: AsyncSession,
    *,
    user_id: int,
    provider: SsoProviderSettings,
    identity: ProviderIdentity,
    used: bool,
) -> None:
    now = utcnow()
    db.add(
        Identity(
            user_id=user_id,
            provider=provider.slug,
            subject=identity.subject,
            email=identity.email or "",
            linked_at=now,
            last_used_at=now if used else None,
        )
    )


async def _link_for(
    db: AsyncSession, *, user_id: int, provider: SsoProviderSettings, identity: ProviderIdentity
) -> None:
    """Link the identity to the user who started the trip from My account; commits."""
    known = await _find_identity(db, slug=provider.slug, subject=identity.subject)
    if known is not None and known.user_id != user_id:
        await _refuse(
            db,
            ConflictError(
                f"This {provider.name} account is linked to another account here.",
                code=ProblemCode.IDENTITY_TAKEN,
            ),
            provider=provider,
            identity=identity,
            user_id=user_id,
            actor_id=user_id,
        )
    user = await crud.get_user(db, user_id=user_id)
    if user is None or not user.is_active:
        await _refuse(
            db,
            ForbiddenError(DEACTIVATED, code=ProblemCode.ACCOUNT_DEACTIVATED),
            provider=provider,
            identity=identity,
            user_id=user_id,
            actor_id=user_id,
        )
    if known is None:
        _add_identity(db, user_id=user_id, provider=provider, identity=identity, used=False)
        crud.add_audit_event(
            db,
            action=AuditAction.IDENTITY_LINK,
            actor_id=user_id,
            target_id=user_id,
            details=_link_details(provider, identity),
        )
    await db.commit()


async def exchange(
    db: AsyncSession, *, code: str, settings: Settings, client: ClientInfo
) -> LoginResponse:
    """A sign-in's one-time code, used once within CODE_SECONDS, for a login session."""
    now = utcnow()
    used = await db.exec(
        update(SsoFlow)
        .where(
            and_(
                col(SsoFlow.code_hash) == _hash(code),
                col(SsoFlow.exchanged_at).is_(None),
                col(SsoFlow.code_expires_at) > now,
            )
        )
        .values(exchanged_at=now)
        .returning(col(SsoFlow.user_id))
    )
    user_id = used.scalar_one_or_none()
    if user_id is None:
        await db.rollback()
        raise BadRequestError(
            "This sign-in code is unknown, used or expired: sign in again.",
            code=ProblemCode.SSO_EXCHANGE_CODE_INVALID,
        )
    user = await crud.get_user(db, user_id=user_id)
    if user is None:
        await db.rollback()
        raise BadRequestError(
            "This sign-in's account was deleted meanwhile.",
            code=ProblemCode.SSO_EXCHANGE_CODE_INVALID,
        )
    exempt = settings.MFA_EXEMPT_SSO
    if not exempt and await sessions.has_factor(db, user_id=user_id):
        # The provider proved the account at the provider, not this account's factor.
        raise await mfa.challenge(db, user=user)  # commits the code's use with it
    return await sessions.start(db, user=user, client=client, settings=settings, mfa_exempt=exempt)


async def list_identities(db: AsyncSession, *, user_id: int) -> list[Identity]:
    statement = select(Identity).where(Identity.user_id == user_id).order_by(col(Identity.id))
    return list((await db.exec(statement)).all())


async def unlink(db: AsyncSession, *, user_id: int, identity_id: int, actor_id: int) -> None:
    """Remove an identity, unless it is the user's last way to sign in (no password and
    no other identity); commits. The user's row is locked first, so that two unlinks of
    a user's last two identities cannot both pass the check."""
    statement = await lock_for_update(db, select(User).where(User.id == user_id), table=User)
    user = (await db.exec(statement)).first()
    identity = (
        await db.exec(
            select(Identity).where(Identity.id == identity_id, Identity.user_id == user_id)
        )
    ).first()
    if user is None or identity is None:
        await db.rollback()
        raise NotFoundError(
            "This account has no such linked identity.", code=ProblemCode.IDENTITY_NOT_FOUND
        )
    count = (await db.exec(select(func.count()).where(Identity.user_id == user_id))).one()
    if user.hashed_password == NO_PASSWORD and count <= 1:
        await db.rollback()
        raise ConflictError(
            "This is the account's only way to sign in: set a password (Forgot password) or "
            "link another provider first.",
            code=ProblemCode.LAST_SIGN_IN_METHOD,
        )
    await db.delete(identity)
    crud.add_audit_event(
        db,
        action=AuditAction.IDENTITY_UNLINK,
        actor_id=actor_id,
        target_id=user_id,
        details={"provider": identity.provider, "subject": identity.subject, "id": identity_id},
    )
    await db.commit()


PASSWORD = "password"  # noqa: S105  (a way to sign in, not a secret)


def sign_in_condition(settings: Settings, method: str) -> ColumnElement[bool]:
    """Users who can sign in with `method`: `password`, or a provider's slug."""
    if method == PASSWORD:
        return col(User.hashed_password) != NO_PASSWORD
    if settings.sso_provider(method) is None:
        slugs = ", ".join([PASSWORD, *(p.slug for p in settings.OIDC_PROVIDERS)])
        raise FieldInvalidError("sign_in", f"must be one of: {slugs}", field_code="sign_in_unknown")
    return exists().where(col(Identity.user_id) == User.id, col(Identity.provider) == method)


async def sign_in_methods(db: AsyncSession, *, user_ids: Collection[int]) -> dict[int, list[str]]:
    """How each of these users signs in: `password` first if they have one, then the
    providers linked, in the order they were linked."""
    if not user_ids:
        return {}
    has_password = col(User.hashed_password) != NO_PASSWORD
    users = select(User.id, has_password).where(col(User.id).in_(user_ids))
    methods: dict[int, list[str]] = {}
    for user_id, password in (await db.exec(users)).all():
        assert user_id is not None
        methods[user_id] = [PASSWORD] if password else []
    identities = (
        select(Identity.user_id, Identity.provider)
        .where(col(Identity.user_id).in_(user_ids))
        .order_by(col(Identity.id))
    )
    for user_id, provider in (await db.exec(identities)).all():
        if provider not in methods.setdefault(user_id, []):
            methods[user_id].append(provider)
    return methods


def check_password_allowed(settings: Settings, email: str) -> None:
    """SSO_ONLY_DOMAINS: no password login, reset or registration for these addresses, so
    that disabling someone at the company's provider is the end of their access."""
    if settings.sso_only(email):
        raise ForbiddenError(
            f"Accounts of {email.rpartition('@')[2]} sign in with the company's identity "
            "provider only, not with a password.",
            code=ProblemCode.SSO_REQUIRED,
        )
