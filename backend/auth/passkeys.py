"""Passkeys (WebAuthn): the one place their ceremonies live, on the `webauthn` library
(py_webauthn), which builds the options and verifies what the browser answers.

- registration_options, verify_registration: a signed-in user adds a passkey; the
  challenge is bound to that user and that session.
- authentication_options, verify_authentication: a passkey proves who is there. With a
  `user_id` it is that user's second factor (only their passkeys are offered and
  accepted); with None it is a passwordless sign-in (discoverable credentials: the
  browser offers whichever it holds for RP_ID, and the passkey names its user).
  verify_authentication returns the User, active; the caller starts the session (log_in
  does, for POST /auth/passkey/verify) or finishes its own login step.
- rename, remove, list_for_user: the owner's list.

Challenges are rows (passkey_challenges), not signed values: a signed challenge proves
it is ours and recent, but not that it has not been answered already, and a replayed
assertion is exactly what single use must stop. Each row is removed by the one DELETE
that accepts it (PostgreSQL's row lock, SQLite's write lock: of two concurrent answers
one gets it, the other finds nothing), and committed at once, so a failed answer spends
it too. Only a SHA-256 of the challenge is kept; it expires after CHALLENGE_MINUTES,
and expired rows are deleted whenever a new challenge is made.

Every answer is checked before the library sees it for what has a code of its own (the
origin, the RP id, user verification, the challenge, the credential); the library then
checks all of it again, with the signature and the attestation. The sign counter is
compared here, after the signature: a counter that does not grow (when either side is
not 0) means two copies of the authenticator's key, and is refused. Verification is CPU
work (a signature, CBOR), so it runs in a worker thread.
"""

import asyncio
import hashlib
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import webauthn
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from webauthn.helpers import (
    bytes_to_base64url,
    options_to_json_dict,
    parse_attestation_object,
    parse_authentication_credential_json,
    parse_authenticator_data,
    parse_client_data_json,
    parse_registration_credential_json,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticationCredential,
    AuthenticatorData,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    RegistrationCredential,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from backend.auth import sessions
from backend.auth.models import (
    AuthenticationCredentialJSON,
    ClientInfo,
    LoginResponse,
    Passkey,
    PasskeyChallenge,
    PasskeyPurpose,
    RegistrationCredentialJSON,
    UserSession,
)
from backend.clock import utcnow
from backend.config import Settings
from backend.errors import (
    BadRequestError,
    ConflictError,
    DomainError,
    ForbiddenError,
    NotFoundError,
    ProblemCode,
    UnauthorizedError,
)
from backend.models import AuditAction, AuditEvent, User

logger = logging.getLogger(__name__)
T = TypeVar("T")

CHALLENGE_MINUTES = 5
# What the browser waits for the user, in the options: the challenge outlives it.
CEREMONY_TIMEOUT_MS = 4 * 60 * 1000
DEFAULT_NAME = "Passkey"
DEACTIVATED = "This account is deactivated."
EMAIL_NOT_VERIFIED = "Verify your email address first: follow the link mailed to it."
# One answer for an unknown credential and another user's: which passkeys exist is not
# for a stranger to learn.
UNKNOWN = "This passkey is not registered here (it may have been removed)."
TRANSPORTS = {transport.value for transport in AuthenticatorTransport}

# Parsing a hostile answer: the library raises its own errors for what it recognises,
# and ValueError (base64, CBOR), KeyError, TypeError or AttributeError for structures it
# assumes (a map where a list is, a missing key deep in the attestation).
MALFORMED = (WebAuthnException, ValueError, KeyError, TypeError, AttributeError, IndexError)


def user_handle(user: User) -> bytes:
    """The WebAuthn user.id of an account: not its email or row id (the authenticator
    shows and may sync it), but a digest of its random, never-shown account key, so it is
    fixed for the account's life and no other account ever has it."""
    return hashlib.sha256(b"passkey user handle:" + user.account_key.encode()).digest()


def _hash(challenge: bytes) -> str:
    return hashlib.sha256(challenge).hexdigest()


async def _new_challenge(
    db: AsyncSession,
    *,
    purpose: PasskeyPurpose,
    user_id: int | None,
    session_id: str | None,
) -> bytes:
    """A challenge recorded for one ceremony; expired ones are deleted first. Commits."""
    now = utcnow()
    await db.exec(delete(PasskeyChallenge).where(col(PasskeyChallenge.expires_at) <= now))
    challenge = webauthn.helpers.generate_challenge()
    db.add(
        PasskeyChallenge(
            challenge_hash=_hash(challenge),
            purpose=purpose,
            user_id=user_id,
            session_id=session_id,
            expires_at=now + timedelta(minutes=CHALLENGE_MINUTES),
        )
    )
    await db.commit()
    return challenge


async def _spend_challenge(
    db: AsyncSession,
    *,
    challenge: bytes,
    purpose: PasskeyPurpose,
    user_id: int | None,
    session_id: str | None,
    refuse: type[DomainError],
) -> None:
    """Accept a challenge once: the DELETE that finds it is the check. Committed at
    once, so that the answer it came with spends it whatever follows."""
    conditions = [
        col(PasskeyChallenge.challenge_hash) == _hash(challenge),
        col(PasskeyChallenge.purpose) == purpose,
        col(PasskeyChallenge.user_id).is_(None)
        if user_id is None
        else col(PasskeyChallenge.user_id) == user_id,
        col(PasskeyChallenge.session_id).is_(None)
        if session_id is None
        else col(PasskeyChallenge.session_id) == session_id,
    ]
    spent = await db.exec(
        delete(PasskeyChallenge).where(*conditions).returning(col(PasskeyChallenge.expires_at))
    )
    expires_at = spent.scalar_one_or_none()
    await db.commit()
    if expires_at is None:
        raise refuse(
            "This passkey answer does not match a challenge of ours for you: it was used "
            "already, or made for another request. Start again with new options.",
            code=ProblemCode.PASSKEY_CHALLENGE_INVALID,
        )
    if expires_at <= utcnow():
        raise refuse(
            f"The challenge expired (after {CHALLENGE_MINUTES} minutes): start again.",
            code=ProblemCode.PASSKEY_CHALLENGE_EXPIRED,
        )


def _check_client_data(
    client_data_json: bytes, *, ceremony: str, settings: Settings, refuse: type[DomainError]
) -> bytes:
    """The challenge the browser signed, once the origin is one of ours."""
    try:
        client_data = parse_client_data_json(client_data_json)
    except MALFORMED as error:
        _malformed(error, refuse)
    if client_data.type != ceremony:
        raise refuse(
            f"clientDataJSON.type is {client_data.type!r}, not {ceremony!r}.",
            code=ProblemCode.PASSKEY_INVALID,
        )
    if client_data.origin not in settings.webauthn_origins:
        raise refuse(
            f"The passkey was used on {str(client_data.origin)[:200]!r}, which is not one of "
            "this server's origins (WEBAUTHN_ORIGINS).",
            code=ProblemCode.PASSKEY_ORIGIN_MISMATCH,
        )
    return client_data.challenge


def _check_authenticator_data(
    auth_data: AuthenticatorData, settings: Settings, refuse: type[DomainError]
) -> None:
    if auth_data.rp_id_hash != hashlib.sha256(settings.webauthn_rp_id.encode()).digest():
        raise refuse(
            f"The passkey was made for another site, not for {settings.webauthn_rp_id!r} (RP_ID).",
            code=ProblemCode.PASSKEY_RP_ID_MISMATCH,
        )
    if not auth_data.flags.uv:
        raise refuse(
            "The authenticator did not verify the user (PIN, fingerprint or face): this "
            "server requires it.",
            code=ProblemCode.PASSKEY_USER_NOT_VERIFIED,
        )


def _malformed(error: Exception, refuse: type[DomainError]) -> NoReturn:
    raise refuse(
        f"The passkey answer could not be verified: {str(error)[:300] or type(error).__name__}",
        code=ProblemCode.PASSKEY_INVALID,
    ) from error


# --- registration ---------------------------------------------------------------------
async def registration_options(
    db: AsyncSession, *, user: User, session_id: str, settings: Settings
) -> dict[str, Any]:
    """The options for navigator.credentials.create() (PublicKeyCredentialCreationOptions
    as JSON, binary fields in base64url): a discoverable credential with user
    verification, not one the user already has here. Commits the challenge."""
    assert user.id is not None
    existing = await _passkeys_of(db, user.id)
    challenge = await _new_challenge(
        db, purpose=PasskeyPurpose.REGISTER, user_id=user.id, session_id=session_id
    )
    options = webauthn.generate_registration_options(
        rp_id=settings.webauthn_rp_id,
        rp_name=settings.webauthn_rp_name,
        user_id=user_handle(user),
        user_name=user.email,
        user_display_name=user.name,
        challenge=challenge,
        timeout=CEREMONY_TIMEOUT_MS,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[_descriptor(passkey) for passkey in existing],
    )
    return options_to_json_dict(options)


async def verify_registration(
    db: AsyncSession,
    *,
    user: User,
    session_id: str,
    credential: RegistrationCredentialJSON,
    name: str | None,
    settings: Settings,
) -> Passkey:
    """Store the passkey the browser made from registration_options' challenge, once
    verified; audited as `user.passkey_add`. 400 with a passkey code when it is not
    acceptable, 409 when this credential is registered already. Commits."""
    assert user.id is not None
    refuse = BadRequestError
    try:
        parsed = parse_registration_credential_json(credential.model_dump(exclude_none=True))
    except MALFORMED as error:
        _malformed(error, refuse)
    challenge = _check_client_data(
        parsed.response.client_data_json,
        ceremony="webauthn.create",
        settings=settings,
        refuse=refuse,
    )
    await _spend_challenge(
        db,
        challenge=challenge,
        purpose=PasskeyPurpose.REGISTER,
        user_id=user.id,
        session_id=session_id,
        refuse=refuse,
    )
    try:
        attestation = parse_attestation_object(parsed.response.attestation_object)
    except MALFORMED as error:
        _malformed(error, refuse)
    _check_authenticator_data(attestation.auth_data, settings, refuse)
    verified = await _verify_in_thread(
        lambda: webauthn.verify_registration_response(
            credential=parsed,
            expected_challenge=challenge,
            expected_rp_id=settings.webauthn_rp_id,
            expected_origin=settings.webauthn_origins,
            require_user_verification=True,
        ),
        refuse,
    )
    credential_id = bytes_to_base64url(verified.credential_id)
    passkey = Passkey(
        user_id=user.id,
        name=name or DEFAULT_NAME,
        credential_id=credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        transports=_transports(parsed),
        backed_up=verified.credential_backed_up,
        device_type=verified.credential_device_type.value,
        created_at=utcnow(),
    )
    db.add(passkey)
    try:
        await db.flush()  # its id, for the audit event; the unique credential id
    except IntegrityError as error:
        await db.rollback()
        raise ConflictError(
            "This passkey is registered already.", code=ProblemCode.PASSKEY_TAKEN
        ) from error
    db.add(_audit(AuditAction.PASSKEY_ADD, passkey, actor_id=user.id))
    # A second factor now: the session that added it is no longer restricted by
    # MFA_REQUIRED (backend/auth/deps.py), as after an authenticator app's confirmation.
    await db.exec(
        update(UserSession).where(col(UserSession.id) == session_id).values(restricted=False)
    )
    await db.commit()
    return passkey


def _transports(parsed: RegistrationCredential) -> list[str]:
    # Only the names WebAuthn knows: they are sent back to browsers in later options.
    named = parsed.response.transports or []
    return sorted({transport.value for transport in named if transport.value in TRANSPORTS})


# --- authentication -------------------------------------------------------------------
async def authentication_options(
    db: AsyncSession, *, user_id: int | None, settings: Settings
) -> dict[str, Any]:
    """The options for navigator.credentials.get() (PublicKeyCredentialRequestOptions as
    JSON). With a user_id (a second factor), that user's passkeys are listed and the
    challenge is bound to them; with None (passwordless), none are listed and the browser
    offers its discoverable credentials for RP_ID. User verification is required.
    Commits the challenge."""
    allowed = await _passkeys_of(db, user_id) if user_id is not None else []
    challenge = await _new_challenge(
        db, purpose=PasskeyPurpose.AUTHENTICATE, user_id=user_id, session_id=None
    )
    options = webauthn.generate_authentication_options(
        rp_id=settings.webauthn_rp_id,
        challenge=challenge,
        timeout=CEREMONY_TIMEOUT_MS,
        allow_credentials=[_descriptor(passkey) for passkey in allowed],
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    return options_to_json_dict(options)


async def verify_authentication(
    db: AsyncSession,
    *,
    user_id: int | None,
    credential: AuthenticationCredentialJSON,
    settings: Settings,
) -> User:
    """The active user a passkey assertion proves, answering authentication_options'
    challenge for the same `user_id` (None: passwordless, any registered passkey).

    401 with a passkey code when it proves nothing (see ProblemCode.PASSKEY_*), 403
    `account_deactivated` for a deactivated account. The passkey's sign counter and
    last use are committed; no session is started.
    """
    refuse = UnauthorizedError
    try:
        parsed = parse_authentication_credential_json(credential.model_dump(exclude_none=True))
    except MALFORMED as error:
        _malformed(error, refuse)
    challenge = _check_client_data(
        parsed.response.client_data_json, ceremony="webauthn.get", settings=settings, refuse=refuse
    )
    await _spend_challenge(
        db,
        challenge=challenge,
        purpose=PasskeyPurpose.AUTHENTICATE,
        user_id=user_id,
        session_id=None,
        refuse=refuse,
    )
    try:
        auth_data = parse_authenticator_data(parsed.response.authenticator_data)
    except MALFORMED as error:
        _malformed(error, refuse)
    _check_authenticator_data(auth_data, settings, refuse)
    found = await _find(db, parsed, user_id)
    passkey, user = found
    if parsed.response.user_handle is not None and parsed.response.user_handle != user_handle(user):
        raise refuse(UNKNOWN, code=ProblemCode.PASSKEY_UNKNOWN)
    verified = await _verify_in_thread(
        lambda: webauthn.verify_authentication_response(
            credential=parsed,
            expected_challenge=challenge,
            expected_rp_id=settings.webauthn_rp_id,
            expected_origin=settings.webauthn_origins,
            credential_public_key=passkey.public_key,
            # 0: the counter is compared below, where it has a code of its own.
            credential_current_sign_count=0,
            require_user_verification=True,
        ),
        refuse,
    )
    await _note_use(db, passkey, verified.new_sign_count, verified.credential_backed_up)
    if not user.is_active:
        raise ForbiddenError(DEACTIVATED, code=ProblemCode.ACCOUNT_DEACTIVATED)
    return user


async def log_in(
    db: AsyncSession,
    *,
    credential: AuthenticationCredentialJSON,
    settings: Settings,
    client: ClientInfo,
) -> LoginResponse:
    """A passwordless sign-in: the passkey's user, held to the rules a password login
    is (active; verified when EMAIL_VERIFICATION=required), gets a new session."""
    user = await verify_authentication(db, user_id=None, credential=credential, settings=settings)
    if settings.EMAIL_VERIFICATION == "required" and not user.is_verified:
        raise ForbiddenError(EMAIL_NOT_VERIFIED, code=ProblemCode.EMAIL_NOT_VERIFIED)
    return await sessions.start(db, user=user, client=client, settings=settings)


async def _find(
    db: AsyncSession, parsed: AuthenticationCredential, user_id: int | None
) -> tuple[Passkey, User]:
    statement = (
        select(Passkey, User)
        .join(User, col(User.id) == col(Passkey.user_id))
        .where(col(Passkey.credential_id) == bytes_to_base64url(parsed.raw_id))
    )
    if user_id is not None:
        statement = statement.where(col(Passkey.user_id) == user_id)
    row = (await db.exec(statement)).first()
    if row is None:
        raise UnauthorizedError(UNKNOWN, code=ProblemCode.PASSKEY_UNKNOWN)
    return row


async def _note_use(db: AsyncSession, passkey: Passkey, new_count: int, backed_up: bool) -> None:
    """The new counter and the use, if the counter grew (or both are 0: authenticators
    that keep none). The condition is in the UPDATE, so of two assertions read with the
    same counter only one moves it. Commits."""
    old_count = passkey.sign_count
    regressed = (new_count > 0 or old_count > 0) and new_count <= old_count
    if not regressed:
        moved = await db.exec(
            update(Passkey)
            .where(col(Passkey.id) == passkey.id, col(Passkey.sign_count) == old_count)
            .values(sign_count=new_count, last_used_at=utcnow(), backed_up=backed_up)
        )
        regressed = moved.rowcount != 1 and new_count > 0
    await db.commit()
    if regressed:
        logger.warning(
            "passkey %s of user %s: sign counter %s after %s; refused (a cloned authenticator?)",
            passkey.id,
            passkey.user_id,
            new_count,
            old_count,
        )
        raise UnauthorizedError(
            "This passkey's signature counter went backwards, which is what a copy of it "
            "would do: refused. Use another passkey, or remove this one and add it again.",
            code=ProblemCode.PASSKEY_COUNTER_REGRESSED,
        )


async def _verify_in_thread(verify: Callable[[], T], refuse: type[DomainError]) -> T:
    try:
        result: T = await asyncio.to_thread(verify)
    except MALFORMED as error:
        _malformed(error, refuse)
    return result


# --- the owner's list -----------------------------------------------------------------
async def _passkeys_of(db: AsyncSession, user_id: int) -> Sequence[Passkey]:
    statement = select(Passkey).where(col(Passkey.user_id) == user_id)
    return (await db.exec(statement.order_by(col(Passkey.id)))).all()


async def list_for_user(db: AsyncSession, *, user_id: int) -> Sequence[Passkey]:
    """A user's passkeys, oldest first."""
    return await _passkeys_of(db, user_id)


async def rename(db: AsyncSession, *, passkey_id: int, user_id: int, name: str) -> Passkey:
    """Rename one of the user's passkeys. Commits."""
    statement = (
        update(Passkey)
        .where(col(Passkey.id) == passkey_id, col(Passkey.user_id) == user_id)
        .values(name=name)
        .returning(Passkey)
    )
    renamed: Passkey | None = (await db.exec(statement)).scalar_one_or_none()
    if renamed is None:
        await db.rollback()
        raise _not_found(passkey_id)
    await db.commit()
    return renamed


async def remove(db: AsyncSession, *, passkey_id: int, user_id: int, actor_id: int) -> None:
    """Delete one of the user's passkeys, audited as `user.passkey_remove`. Commits."""
    statement = (
        delete(Passkey)
        .where(col(Passkey.id) == passkey_id, col(Passkey.user_id) == user_id)
        .returning(Passkey)
    )
    removed: Passkey | None = (await db.exec(statement)).scalar_one_or_none()
    if removed is None:
        await db.rollback()
        raise _not_found(passkey_id)
    db.add(_audit(AuditAction.PASSKEY_REMOVE, removed, actor_id=actor_id))
    await db.commit()


def _not_found(passkey_id: int) -> NotFoundError:
    return NotFoundError(f"You have no passkey {passkey_id}.", code=ProblemCode.PASSKEY_NOT_FOUND)


def _descriptor(passkey: Passkey) -> PublicKeyCredentialDescriptor:
    return PublicKeyCredentialDescriptor(
        id=webauthn.base64url_to_bytes(passkey.credential_id),
        transports=[AuthenticatorTransport(name) for name in passkey.transports],
    )


def _audit(action: AuditAction, passkey: Passkey, *, actor_id: int) -> AuditEvent:
    # Enough to tell it apart in the trail; its public key is no one's business there.
    details: dict[str, object] = {"passkey_id": passkey.id, "name": passkey.name}
    return AuditEvent(actor_id=actor_id, action=action, target_id=passkey.user_id, details=details)
