"""Password hashing off the event loop, at the lowest CPU priority."""

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Any, TypeVar

from pwdlib import PasswordHash
from pwdlib.hashers.bcrypt import BcryptHasher

from backend.errors import ProblemCode, ServiceUnavailableError
from backend.rules import PASSWORD_MAX_BYTES, normalise_password

HASH_QUEUE_RETRY_AFTER_SECONDS = 1
LOWEST_PRIORITY = 19  # nice value

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

    def admit(self) -> None:
        """Refuse (503) at once when a hash could neither start nor queue now. A workflow
        that reads the database before it hashes asks first, so that in a login storm a
        refusal costs no connection and no query, only this comparison."""
        if self._in_flight >= self._concurrency + self._queue_limit:
            raise ServiceUnavailableError(
                "Too many password checks in progress; retry shortly.",
                code=ProblemCode.SERVER_BUSY,
                retry_after_seconds=HASH_QUEUE_RETRY_AFTER_SECONDS,
            )

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        self.admit()  # again: the queue may have filled while the caller read its row
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
