"""Second factors: authenticator apps (TOTP, RFC 6238, via pyotp) and recovery codes;
the second step of a login; the admin's reset.

- TOTP secrets are stored encrypted (Fernet: AES-128-CBC with HMAC-SHA256) under a key
  derived by HKDF from MFA_ENCRYPTION_KEY, or SECRET_KEY when that is unset. The values
  in MFA_ENCRYPTION_KEYS_OLD still decrypt, and `backend users reencrypt-mfa` writes
  every secret again under the current key (rotation: docs/mfa.md).
- A code is accepted for its own time step and one on either side (clocks drift), and
  once only: the step of the last accepted code is stored, and a conditional UPDATE
  accepts a code only for a later step, so two requests with one code cannot both pass.
- Recovery codes carry 50 random bits each. Stored as an HMAC-SHA256 keyed like the
  secrets: a fast hash is enough where the input is random, not chosen by a person (no
  dictionary to try), and the key keeps someone holding only a copy of the database from
  testing guesses at all. A code is used by a conditional UPDATE (used_at still null).
- A login that passed its password and needs its second step gets an mfa_token: the
  key of a challenge row (only its SHA-256 stored), used once, for MFA_TOKEN_SECONDS,
  dead after MAX_CHALLENGE_FAILURES wrong codes. It is never a session.

Lock order (backend/auth/sessions.py): the user's row first (the second step of a login
locks it before its conditional UPDATEs, as sessions.start would), then these rows.
"""

import base64
import functools
import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

import anyio
import pyotp
import segno
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import crud
from backend.auth import passkeys, sessions
from backend.auth.mfa_models import (
    MFA_TOKEN_BYTES,
    RECOVERY_CODE_COUNT,
    MfaChallenge,
    MfaMethod,
    MfaStatus,
    RecoveryCode,
    RecoveryCodes,
    TotpEnrolment,
    TotpFactor,
)
from backend.auth.models import (
    AuthenticationCredentialJSON,
    ClientInfo,
    LoginResponse,
    Reauthenticated,
    SessionEndReason,
    UserSession,
)
from backend.auth.sessions import DEACTIVATED, Caller
from backend.clock import utcnow
from backend.config import Settings
from backend.db.session import release_connection
from backend.errors import (
    BadRequestError,
    ConflictError,
    DomainError,
    ForbiddenError,
    NotFoundError,
    ProblemCode,
    UnauthorizedError,
)
from backend.models import AuditAction, User

MFA_TOKEN_SECONDS = 300
MAX_CHALLENGE_FAILURES = 5
TOTP_DIGITS = 6
# Crockford's base32: no I, L, O or U to misread; 10 characters carry 50 bits.
RECOVERY_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
RECOVERY_CODE_CHARS = 10
READ_ALIKE = str.maketrans({"i": "1", "l": "1", "o": "0"})
SEPARATORS = re.compile(r"[\s-]+")
SECRETS_INFO = b"users-api mfa totp secrets"
RECOVERY_INFO = b"users-api mfa recovery codes"

TOKEN_INVALID = "The mfa_token is unknown, expired, used, or spent by wrong codes: log in again."  # noqa: S105
CODE_INVALID = "The code is wrong, already used, or from too long ago or ahead."
NOT_ENABLED = "No authenticator app is on for this account."


# --- keys -----------------------------------------------------------------------------
def _key_materials(settings: Settings) -> tuple[bytes, ...]:
    """The current key's material first, then the old ones (decryption only)."""
    current = settings.MFA_ENCRYPTION_KEY or None
    first = current.get_secret_value() if current is not None else settings.SECRET_KEY
    return (
        first.encode(),
        *(old.get_secret_value().encode() for old in settings.MFA_ENCRYPTION_KEYS_OLD),
    )


def _derive(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


@functools.lru_cache(maxsize=8)
def _fernet(materials: tuple[bytes, ...]) -> MultiFernet:
    return MultiFernet(
        [Fernet(base64.urlsafe_b64encode(_derive(m, SECRETS_INFO))) for m in materials]
    )


@functools.lru_cache(maxsize=8)
def _recovery_keys(materials: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return tuple(_derive(material, RECOVERY_INFO) for material in materials)


def encrypt_secret(secret: str, settings: Settings) -> str:
    return _fernet(_key_materials(settings)).encrypt(secret.encode()).decode()


def decrypt_secret(encrypted: str, settings: Settings) -> str:
    try:
        return _fernet(_key_materials(settings)).decrypt(encrypted.encode()).decode()
    except InvalidToken as error:
        raise RuntimeError(
            "A TOTP secret does not decrypt with MFA_ENCRYPTION_KEY (or SECRET_KEY) nor any "
            "of MFA_ENCRYPTION_KEYS_OLD: was the key changed without keeping the old one?"
        ) from error


def _recovery_hashes(code: str, settings: Settings) -> list[str]:
    """The code's hash under each key, current first."""
    keys = _recovery_keys(_key_materials(settings))
    return [hmac.new(key, code.encode(), hashlib.sha256).hexdigest() for key in keys]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- codes ----------------------------------------------------------------------------
def _normalise(code: str) -> str:
    return SEPARATORS.sub("", code).lower().translate(READ_ALIKE)


def _is_totp_code(code: str) -> bool:
    return len(code) == TOTP_DIGITS and code.isascii() and code.isdigit()


def _matching_step(secret: str, code: str, now: datetime) -> int | None:
    """The time step whose code this is: the current one or one either side."""
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS)
    current = totp.timecode(now)
    for step in (current, current - 1, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def _new_recovery_codes() -> list[str]:
    codes = []
    for _ in range(RECOVERY_CODE_COUNT):
        raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_CODE_CHARS))
        codes.append(f"{raw[:5]}-{raw[5:]}")
    return codes


def _stage_recovery_codes(
    db: AsyncSession, *, user_id: int, settings: Settings, now: datetime
) -> list[str]:
    """New recovery codes for the user (the caller deletes the old ones first)."""
    codes = _new_recovery_codes()
    for code in codes:
        code_hash = _recovery_hashes(_normalise(code), settings)[0]
        db.add(RecoveryCode(user_id=user_id, code_hash=code_hash, created_at=now))
    return codes


# --- reads ----------------------------------------------------------------------------
async def status(db: AsyncSession, *, user_id: int) -> MfaStatus:
    totp = await sessions.has_factor(db, user_id=user_id)
    left_query = select(func.count()).where(
        col(RecoveryCode.user_id) == user_id, col(RecoveryCode.used_at).is_(None)
    )
    left = (await db.exec(left_query)).one() if totp else 0
    methods = [MfaMethod.TOTP, MfaMethod.RECOVERY_CODE] if totp else []
    return MfaStatus(totp=totp, recovery_codes_left=left, methods=methods)


# --- enrolment ------------------------------------------------------------------------
def _qr_svg(uri: str) -> str:
    return segno.make(uri, error="m").svg_inline(scale=4)


async def start_totp(db: AsyncSession, *, user: User, settings: Settings) -> TotpEnrolment:
    """A new secret for the user's authenticator app, pending until confirm_totp: any
    earlier pending one is replaced. Commits."""
    assert user.id is not None
    if await sessions.has_factor(db, user_id=user.id):
        raise ConflictError(
            "An authenticator app is on already: remove it first (DELETE /users/me/mfa/totp).",
            code=ProblemCode.MFA_ALREADY_ENABLED,
        )
    secret = pyotp.random_base32()
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=settings.PROJECT_NAME)
    # A QR code of this size takes milliseconds of pure Python: off the event loop.
    qr_svg = await anyio.to_thread.run_sync(_qr_svg, uri)
    await release_connection(db)  # the read ends before the write (SQLite)
    # The pending one only: an app confirmed meanwhile stays, and the insert then
    # meets it in the unique index, as it meets a concurrent enrolment's.
    await db.exec(
        delete(TotpFactor).where(
            col(TotpFactor.user_id) == user.id, col(TotpFactor.confirmed_at).is_(None)
        )
    )
    db.add(TotpFactor(user_id=user.id, secret_encrypted=encrypt_secret(secret, settings)))
    try:
        await db.commit()
    except IntegrityError as error:
        await db.rollback()
        raise ConflictError(
            "An authenticator app was turned on, or another enrolment started, meanwhile: "
            "check GET /users/me/mfa and start again if needed.",
            code=ProblemCode.MFA_ALREADY_ENABLED,
        ) from error
    return TotpEnrolment(secret=secret, otpauth_uri=uri, qr_svg=qr_svg)


async def confirm_totp(
    db: AsyncSession, *, caller: Caller, code: str, settings: Settings
) -> RecoveryCodes:
    """Turn the pending authenticator app on with a code from it, with new recovery
    codes; the caller's session is no longer restricted. Commits."""
    user_id = caller.user.id
    assert user_id is not None
    pending = (
        await db.exec(
            select(TotpFactor).where(
                col(TotpFactor.user_id) == user_id, col(TotpFactor.confirmed_at).is_(None)
            )
        )
    ).first()
    if pending is None:
        if await sessions.has_factor(db, user_id=user_id):
            raise ConflictError(
                "The authenticator app is on already.", code=ProblemCode.MFA_ALREADY_ENABLED
            )
        raise NotFoundError(
            "No enrolment to confirm: start one with POST /users/me/mfa/totp.",
            code=ProblemCode.MFA_NOT_ENABLED,
        )
    now = utcnow()
    normalised = _normalise(code)
    step = (
        _matching_step(decrypt_secret(pending.secret_encrypted, settings), normalised, now)
        if _is_totp_code(normalised)
        else None
    )
    await release_connection(db)
    if step is None:
        raise BadRequestError(CODE_INVALID, code=ProblemCode.MFA_CODE_INVALID)
    # Conditional: this very enrolment, still pending (a restart meanwhile replaced it).
    confirmed = await db.exec(
        update(TotpFactor)
        .where(
            col(TotpFactor.user_id) == user_id,
            col(TotpFactor.secret_encrypted) == pending.secret_encrypted,
            col(TotpFactor.confirmed_at).is_(None),
        )
        .values(confirmed_at=now, last_used_step=step)
    )
    if confirmed.rowcount != 1:
        await db.rollback()
        raise ConflictError(
            "This enrolment was replaced or confirmed meanwhile: start again.",
            code=ProblemCode.MFA_NOT_ENABLED,
        )
    await db.exec(delete(RecoveryCode).where(col(RecoveryCode.user_id) == user_id))
    codes = _stage_recovery_codes(db, user_id=user_id, settings=settings, now=now)
    await db.exec(
        update(UserSession)
        .where(col(UserSession.id) == caller.user_session.id)
        .values(restricted=False)
    )
    crud.add_audit_event(
        db, action=AuditAction.MFA_ENABLE, actor_id=user_id, target_id=user_id, details={}
    )
    await db.commit()
    caller.user_session.restricted = False
    return RecoveryCodes(recovery_codes=codes)


async def disable_totp(db: AsyncSession, *, caller: Caller, settings: Settings) -> None:
    """Remove the user's authenticator app and recovery codes. Where MFA_REQUIRED asks
    this user for a factor, their sessions are restricted again until they enrol one.
    Commits."""
    user = caller.user
    assert user.id is not None
    removed = await db.exec(delete(TotpFactor).where(col(TotpFactor.user_id) == user.id))
    if removed.rowcount == 0:
        await db.rollback()
        raise NotFoundError(NOT_ENABLED, code=ProblemCode.MFA_NOT_ENABLED)
    await db.exec(delete(RecoveryCode).where(col(RecoveryCode.user_id) == user.id))
    if sessions.enrolment_required(user, settings):
        await db.exec(
            update(UserSession)
            .where(col(UserSession.user_id) == user.id, col(UserSession.revoked_at).is_(None))
            .values(restricted=True)
        )
    crud.add_audit_event(
        db, action=AuditAction.MFA_DISABLE, actor_id=user.id, target_id=user.id, details={}
    )
    await db.commit()


async def regenerate_recovery_codes(
    db: AsyncSession, *, user: User, settings: Settings
) -> RecoveryCodes:
    """New recovery codes in place of every earlier one, used or not. Commits."""
    assert user.id is not None
    if not await sessions.has_factor(db, user_id=user.id):
        raise NotFoundError(NOT_ENABLED, code=ProblemCode.MFA_NOT_ENABLED)
    await release_connection(db)
    now = utcnow()
    await db.exec(delete(RecoveryCode).where(col(RecoveryCode.user_id) == user.id))
    codes = _stage_recovery_codes(db, user_id=user.id, settings=settings, now=now)
    crud.add_audit_event(
        db,
        action=AuditAction.RECOVERY_CODES_NEW,
        actor_id=user.id,
        target_id=user.id,
        details={},
    )
    await db.commit()
    return RecoveryCodes(recovery_codes=codes)


# --- proofs ---------------------------------------------------------------------------
async def _prove(
    db: AsyncSession,
    *,
    user_id: int,
    code: str,
    settings: Settings,
    recovery: bool,
) -> MfaMethod | None:
    """Use a code of the user's (a TOTP code, or with `recovery` a recovery code): by a
    conditional UPDATE in the caller's transaction; the method it proved, or None."""
    normalised = _normalise(code)
    now = utcnow()
    if _is_totp_code(normalised):
        factor = (
            await db.exec(
                select(TotpFactor).where(
                    col(TotpFactor.user_id) == user_id, col(TotpFactor.confirmed_at).is_not(None)
                )
            )
        ).first()
        if factor is None:
            return None
        step = _matching_step(decrypt_secret(factor.secret_encrypted, settings), normalised, now)
        if step is None:
            return None
        # Only a later step than the last code's: a replay, or two requests with one
        # code, leave at most one row changed.
        used = await db.exec(
            update(TotpFactor)
            .where(
                col(TotpFactor.user_id) == user_id,
                col(TotpFactor.confirmed_at).is_not(None),
                or_(
                    col(TotpFactor.last_used_step).is_(None),
                    col(TotpFactor.last_used_step) < step,
                ),
            )
            .values(last_used_step=step)
        )
        return MfaMethod.TOTP if used.rowcount == 1 else None
    if not recovery or len(normalised) != RECOVERY_CODE_CHARS:
        return None
    used = await db.exec(
        update(RecoveryCode)
        .where(
            col(RecoveryCode.user_id) == user_id,
            col(RecoveryCode.code_hash).in_(_recovery_hashes(normalised, settings)),
            col(RecoveryCode.used_at).is_(None),
        )
        .values(used_at=now)
    )
    return MfaMethod.RECOVERY_CODE if used.rowcount == 1 else None


def _audit_failure(db: AsyncSession, *, user_id: int, step: str) -> None:
    crud.add_audit_event(
        db,
        action=AuditAction.MFA_FAILURE,
        actor_id=user_id,
        target_id=user_id,
        details={"step": step},
    )


async def challenge(db: AsyncSession, *, user: User) -> DomainError:
    """The mfa_required refusal of a login whose password passed, with a new challenge
    committed for it (with whatever the caller staged: a rehash, a new password)."""
    assert user.id is not None
    token = secrets.token_urlsafe(MFA_TOKEN_BYTES)
    now = utcnow()
    # Challenges past their time are deleted here, lazily, as sessions are at a login.
    await db.exec(
        delete(MfaChallenge).where(
            col(MfaChallenge.user_id) == user.id, col(MfaChallenge.expires_at) <= now
        )
    )
    db.add(
        MfaChallenge(
            user_id=user.id,
            token_hash=_token_hash(token),
            created_at=now,
            expires_at=now + timedelta(seconds=MFA_TOKEN_SECONDS),
        )
    )
    on = await sessions.factors(db, user_id=user.id)
    await db.commit()
    methods: list[MfaMethod] = []
    if "totp" in on:
        methods += [MfaMethod.TOTP, MfaMethod.RECOVERY_CODE]
    if "passkey" in on:
        methods.append(MfaMethod.PASSKEY)
    return UnauthorizedError(
        "A second factor is required: send mfa_token and a code from the authenticator "
        "app (or a recovery code), or a passkey's assertion for the challenge of POST "
        "/auth/mfa/passkey-options, to POST /auth/mfa/verify.",
        code=ProblemCode.MFA_REQUIRED,
        extensions={
            "mfa_token": token,
            "expires_in": MFA_TOKEN_SECONDS,
            "methods": [str(method) for method in methods],
        },
    )


async def find_challenge(db: AsyncSession, *, token: str) -> MfaChallenge:
    """The live challenge of an mfa_token; 401 for any other token."""
    found = (
        await db.exec(
            select(MfaChallenge).where(col(MfaChallenge.token_hash) == _token_hash(token))
        )
    ).first()
    if (
        found is None
        or found.used_at is not None
        or found.expires_at <= utcnow()
        or found.failures >= MAX_CHALLENGE_FAILURES
    ):
        raise UnauthorizedError(TOKEN_INVALID, code=ProblemCode.MFA_TOKEN_INVALID)
    return found


async def verify_login(
    db: AsyncSession,
    *,
    found: MfaChallenge,
    code: str | None,
    credential: AuthenticationCredentialJSON | None = None,
    settings: Settings,
    client: ClientInfo,
) -> LoginResponse:
    """The second step of a login: the code (or a passkey's assertion) used, the
    challenge used, and a session started, in one transaction; a wrong proof counts
    against the challenge and is audited. `found` is find_challenge's."""
    challenge_id, user_id = found.id, found.user_id
    refusal: DomainError | None = None
    if credential is not None:
        # Checked (its sign counter committed) before the user's row is locked, as a
        # passwordless sign-in does; a refusal counts against the challenge below.
        try:
            await passkeys.verify_authentication(
                db, user_id=user_id, credential=credential, settings=settings
            )
        except DomainError as error:
            if error.code is ProblemCode.ACCOUNT_DEACTIVATED:
                raise
            refusal = error
    await release_connection(db)
    user = await sessions.lock_user(db, user_id=user_id)
    if user is None:
        await db.rollback()
        raise UnauthorizedError(TOKEN_INVALID, code=ProblemCode.MFA_TOKEN_INVALID)
    if not user.is_active:
        await db.rollback()
        raise ForbiddenError(DEACTIVATED, code=ProblemCode.ACCOUNT_DEACTIVATED)
    method: MfaMethod | None
    if credential is not None:
        method = MfaMethod.PASSKEY if refusal is None else None
    else:
        assert code is not None
        method = await _prove(db, user_id=user_id, code=code, settings=settings, recovery=True)
    now = utcnow()
    live = (
        col(MfaChallenge.id) == challenge_id,
        col(MfaChallenge.used_at).is_(None),
        col(MfaChallenge.expires_at) > now,
        col(MfaChallenge.failures) < MAX_CHALLENGE_FAILURES,
    )
    if method is None:
        await db.exec(
            update(MfaChallenge).where(*live).values(failures=col(MfaChallenge.failures) + 1)
        )
        _audit_failure(db, user_id=user_id, step="login")
        await db.commit()
        raise refusal or UnauthorizedError(CODE_INVALID, code=ProblemCode.MFA_CODE_INVALID)
    consumed = await db.exec(update(MfaChallenge).where(*live).values(used_at=now))
    if consumed.rowcount != 1:  # used by a concurrent request meanwhile: its code too
        await db.rollback()
        raise UnauthorizedError(TOKEN_INVALID, code=ProblemCode.MFA_TOKEN_INVALID)
    return await sessions.start(db, user=user, client=client, settings=settings)


async def reauthenticate(
    db: AsyncSession, *, caller: Caller, code: str, settings: Settings
) -> Reauthenticated:
    """A code from the authenticator app as a fresh proof (POST /auth/reauthenticate).
    Recovery codes are kept for logging in: they are few."""
    user_id = caller.user.id
    assert user_id is not None
    if not await sessions.has_factor(db, user_id=user_id):
        raise BadRequestError(
            f"{NOT_ENABLED} Send your password instead.", code=ProblemCode.MFA_NOT_ENABLED
        )
    await release_connection(db)
    if await _prove(db, user_id=user_id, code=code, settings=settings, recovery=False) is None:
        await db.rollback()
        _audit_failure(db, user_id=user_id, step="reauthenticate")
        await db.commit()
        raise BadRequestError(CODE_INVALID, code=ProblemCode.MFA_CODE_INVALID)
    return await sessions.note_reauthentication(db, caller=caller, settings=settings)


# --- admin and operator ---------------------------------------------------------------
async def reset(db: AsyncSession, *, user: User, actor_id: int | None) -> bool:
    """Remove every factor and recovery code of the user and end their sessions (their
    owner lost the device): audited. Whether they had any factor. Commits."""
    assert user.id is not None
    # The user's row first (end_all's UPDATE of it), then their factors: the lock order.
    had = await sessions.has_factor(db, user_id=user.id)
    await release_connection(db)
    await db.exec(
        update(User)
        .where(col(User.id) == user.id)
        .values(token_version=col(User.token_version) + 1)
    )
    await db.exec(delete(TotpFactor).where(col(TotpFactor.user_id) == user.id))
    await db.exec(delete(RecoveryCode).where(col(RecoveryCode.user_id) == user.id))
    await db.exec(delete(MfaChallenge).where(col(MfaChallenge.user_id) == user.id))
    ended = await sessions.end_all_staged(db, user_id=user.id, reason=SessionEndReason.ADMIN)
    crud.add_audit_event(
        db,
        action=AuditAction.MFA_RESET,
        actor_id=actor_id,
        target_id=user.id,
        details={"totp": had, "sessions": ended},
    )
    await db.commit()
    return had


async def reencrypt(db: AsyncSession, *, settings: Settings) -> int:
    """Encrypt every TOTP secret again under the current key; how many. Commits."""
    fernet = _fernet(_key_materials(settings))
    factors = (await db.exec(select(TotpFactor))).all()
    for factor in factors:
        try:
            factor.secret_encrypted = fernet.rotate(factor.secret_encrypted.encode()).decode()
        except InvalidToken:
            decrypt_secret(factor.secret_encrypted, settings)  # raises its explanation
        db.add(factor)
    await db.commit()
    return len(factors)
