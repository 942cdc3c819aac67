"""Password hashing off the event loop, and JWTs."""

import asyncio
import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import cached_property, lru_cache
from typing import Any, TypeVar

import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.bcrypt import BcryptHasher
from pydantic import ValidationError

from backend.config import Settings
from backend.errors import ServiceUnavailableError, UnauthorizedError
from backend.models import TokenClaims, User, utcnow
from backend.passwords import PASSWORD_MAX_BYTES, normalise_password

JWT_ALGORITHM = "HS256"
ACCESS = "access"
REFRESH = "refresh"
HASH_QUEUE_RETRY_AFTER_SECONDS = 1
LOWEST_PRIORITY = 19  # nice value
INVALID_OR_EXPIRED = "The token is invalid or has expired."
# A client sends the same access token with every request until it expires, and its
# signature check was 7% of a GET /users/{id} (bench/README.md, Where the time goes).
# ~1 KB each; a token is re-checked in full once it drops out.
VERIFIED_TOKENS_KEPT = 1024

T = TypeVar("T")


class PasswordHasher:
    """bcrypt in its own low-priority threads, at most `concurrency` at once, refusing
    work (503) once `queue_limit` more are waiting.

    A bcrypt verify costs hundreds of milliseconds of CPU. On the event loop it would
    stall every other request; in ordinary threads it would take half the core from the
    event loop. At the lowest CPU priority, hashes use what the event loop leaves, so
    reads stay fast during a burst of logins and the logins queue instead.
    """

    def __init__(self, *, rounds: int, concurrency: int, queue_limit: int) -> None:
        self._context = PasswordHash((BcryptHasher(rounds=rounds),))
        self._concurrency = concurrency
        self._queue_limit = queue_limit
        self._in_flight = 0
        self._executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="bcrypt", initializer=_lowest_priority
        )

    @cached_property
    def _dummy_hash(self) -> str:
        return self._context.hash("dummy password for unknown emails")

    @property
    def queue_depth(self) -> int:
        return max(0, self._in_flight - self._concurrency)

    async def hash(self, password: str) -> str:
        return await self._run(self._context.hash, normalise_password(password))

    async def verify(self, password: str, hashed_password: str | None) -> tuple[bool, str | None]:
        """Check a password; with no hash (unknown user) spend the same time and fail.

        Returns whether it matched and, when the hash is out of date (the rounds setting
        changed, or it was made before passwords were normalised), a new hash.
        """
        return await self._run(self._verify, password, hashed_password)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        if self._in_flight >= self._concurrency + self._queue_limit:
            raise ServiceUnavailableError(
                "Too many password checks in progress; retry shortly.",
                retry_after_seconds=HASH_QUEUE_RETRY_AFTER_SECONDS,
            )
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)
        finally:
            self._in_flight -= 1

    def _verify(self, password: str, hashed_password: str | None) -> tuple[bool, str | None]:
        # Hashes are of the NFKC form. Older ones are of the password as typed, which is
        # the same string for ASCII and most input: only input that NFKC changes costs a
        # second bcrypt, for known and unknown emails alike, and a match that way is
        # rehashed in NFKC form so that it costs one from then on.
        normalised = normalise_password(password)
        matched, new_hash = self._verify_one(normalised, hashed_password)
        if matched or normalised == password:
            return matched, new_hash
        matched, _ = self._verify_one(password, hashed_password)
        return matched, self._context.hash(normalised) if matched else None

    def _verify_one(self, password: str, hashed_password: str | None) -> tuple[bool, str | None]:
        too_long = len(password.encode()) > PASSWORD_MAX_BYTES
        if hashed_password is None or too_long:
            # bcrypt refuses passwords over 72 bytes, and no stored hash can match one.
            self._context.verify(password.encode()[:PASSWORD_MAX_BYTES], self._dummy_hash)
            return False, None
        return self._context.verify_and_update(password, hashed_password)


def _lowest_priority() -> None:
    # Linux schedules threads one by one: nice 19 applies to this thread only.
    with contextlib.suppress(OSError, AttributeError):  # elsewhere: the normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)


def hash_token_id(jti: str) -> str:
    """What the database keeps of a refresh token: the token itself is never stored."""
    return hashlib.sha256(jti.encode()).hexdigest()


def create_token(
    user: User, token_type: str, settings: Settings, *, session_id: str, session_expires: datetime
) -> tuple[str, TokenClaims]:
    """A signed token of the user's session; it never outlives the session."""
    assert user.id is not None
    issued_at = utcnow()
    lifetime = (
        timedelta(minutes=settings.ACCESS_TOKEN_EXPIRE_MINUTES)
        if token_type == ACCESS
        else timedelta(days=settings.REFRESH_TOKEN_EXPIRE_DAYS)
    )
    claims = TokenClaims(
        sub=user.id,
        type=token_type,
        jti=uuid.uuid4().hex,
        ver=user.token_version,
        acc=user.account_key,
        iat=int(issued_at.timestamp()),
        exp=int(min(issued_at + lifetime, session_expires).timestamp()),
        sid=session_id,
    )
    payload = claims.model_dump(exclude_none=True)
    payload["sub"] = str(claims.sub)  # RFC 7519: the subject is a string
    return jwt.encode(payload, settings.SECRET_KEY, algorithm=JWT_ALGORITHM), claims


def decode_token(token: str, expected_type: str, settings: Settings) -> TokenClaims:
    try:
        claims = _verified_claims(token, settings.SECRET_KEY)
    except (jwt.InvalidTokenError, ValidationError) as error:
        raise UnauthorizedError(INVALID_OR_EXPIRED) from error
    if claims.exp <= utcnow().timestamp():
        raise UnauthorizedError(INVALID_OR_EXPIRED)
    if claims.type != expected_type:
        raise UnauthorizedError(f"A token of type '{expected_type}' is required here.")
    return claims


# Only tokens whose signature verified are kept (an exception is never cached), so a
# flood of forged tokens costs a full check each and evicts nothing it did not pass.
# Whether the token is still honoured (expiry here, revocation in sessions.check) is
# decided on every use.
@lru_cache(maxsize=VERIFIED_TOKENS_KEPT)
def _verified_claims(token: str, secret_key: str) -> TokenClaims:
    if not token.isascii():
        # A JWT is base64url and dots; PyJWT would fail to encode a lone surrogate.
        raise jwt.DecodeError("a token is ASCII")
    payload = jwt.decode(
        token,
        secret_key,
        algorithms=[JWT_ALGORITHM],
        # Times are checked against the clock every lifetime is measured by (above), not
        # PyJWT's own.
        options={"require": ["exp", "iat", "sub", "jti"], "verify_exp": False, "verify_iat": False},
    )
    return TokenClaims.model_validate(payload)
