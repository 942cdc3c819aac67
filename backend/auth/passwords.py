"""Password hashing off the event loop, at the lowest CPU priority."""

import asyncio
import contextlib
import hashlib
import hmac
import math
import os
import re
import secrets
import threading
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from itertools import accumulate
from typing import Any, TypeVar

from pwdlib import PasswordHash
from pwdlib.hashers.bcrypt import BcryptHasher

from backend.errors import ProblemCode, ServiceUnavailableError
from backend.rules import PASSWORD_MAX_BYTES, normalise_password

LOWEST_PRIORITY = 19  # nice value
# The weight of the newest hash in the mean duration: about the last ten count.
DURATION_SMOOTHING = 0.2
DUMMY_PASSWORD = "dummy password for unknown emails"  # noqa: S105 (matched by no one)
COST_DRAW_CONTEXT = b"dummy hash cost\0"
BCRYPT_COST = re.compile(r"^\$2[abxy]\$(\d{2})\$")

T = TypeVar("T")

# Set inside PasswordHasher.reserve(): this task holds a place for its hashes.
_RESERVED: ContextVar[bool] = ContextVar("password_hash_reserved", default=False)


def bcrypt_cost(hashed_password: str) -> int | None:
    """The cost a bcrypt hash was made with (its `$2b$NN$` prefix), None for anything else."""
    found = BCRYPT_COST.match(hashed_password)
    return int(found.group(1)) if found else None


class Admission:
    """How many hashes may be in flight at once: as many as the measured rate finishes
    within the wait budget, never fewer than `concurrency` (one each, however slow the
    machine) and never more than `cap`.

    The n-th hash in flight finishes after about ceil(n / concurrency) hashes' time, so
    n may be admitted while n * seconds / concurrency <= max_wait_seconds. `seconds` is
    the mean of recent hashes' wall time in their threads (at the lowest CPU priority
    that is what the event loop leaves them, so a busy server admits fewer), or, if
    longer, the time a hash still running has taken so far: when reads flood the CPU
    the mean lags by several hashes, and in a login storm bench the hashes admitted on
    the quiet mean took 6.6 s against a 2 s budget.
    """

    def __init__(self, *, concurrency: int, cap: int, max_wait_seconds: float) -> None:
        self.concurrency = concurrency
        self.cap = cap
        self.max_wait_seconds = max_wait_seconds
        self.mean_seconds: float | None = None  # none measured yet: the cap alone
        # When each running hash started (time.perf_counter), by its thread's id: written
        # by the hash threads, read (copied) on the event loop.
        self.running: dict[int, float] = {}

    def record(self, seconds: float) -> None:
        if self.mean_seconds is None:
            self.mean_seconds = seconds
        else:
            self.mean_seconds += DURATION_SMOOTHING * (seconds - self.mean_seconds)

    def expected_seconds(self) -> float | None:
        """What a hash takes now: the mean, or the longest a running one has taken."""
        starts = tuple(self.running.values())  # one C-level copy: the threads may write
        if not starts:
            return self.mean_seconds
        longest = time.perf_counter() - min(starts)
        return max(self.mean_seconds or 0.0, longest)

    @property
    def limit(self) -> int:
        seconds = self.expected_seconds()
        if not seconds or math.isinf(self.max_wait_seconds):
            return self.cap
        within = math.floor(self.concurrency * self.max_wait_seconds / seconds)
        return min(self.cap, max(self.concurrency, within))

    def admits(self, in_flight: int) -> bool:
        return in_flight + 1 <= self.limit

    def retry_after(self, in_flight: int) -> int:
        """Whole seconds until the hashes in flight are done, at least 1."""
        drain = in_flight * (self.expected_seconds() or 0) / self.concurrency
        return max(1, math.ceil(drain))


class PasswordHasher:
    """bcrypt in its own low-priority threads, at most `concurrency` at once, refusing
    work (503) that would not finish within `max_wait_seconds` at the measured rate, or
    past `queue_limit` waiting in any case.

    A bcrypt verify costs hundreds of milliseconds of CPU. On the event loop it would
    stall every other request; in ordinary threads it would take half the core from the
    event loop. At the lowest CPU priority, hashes use what the event loop leaves, so
    reads stay fast during a burst of logins and the logins queue instead.

    An email with no account is checked against a dummy hash of the cost a stored hash
    would have: after BCRYPT_ROUNDS changes, stored hashes keep their old cost until
    their user logs in, and a dummy at the new cost would tell unknown emails apart.
    The cost is drawn from the stored hashes' costs (`learn_costs`, kept current as this
    process hashes), by a keyed hash of the email: each unknown email costs the same
    every time, like one account, and together they cost what the accounts do.
    """

    def __init__(
        self,
        *,
        rounds: int,
        concurrency: int,
        queue_limit: int,
        max_wait_seconds: float = math.inf,
        secret: str | None = None,
    ) -> None:
        self._rounds = rounds
        self._context = PasswordHash((BcryptHasher(rounds=rounds),))
        self._concurrency = concurrency
        self._in_flight = 0
        self.admission = Admission(
            concurrency=concurrency,
            cap=concurrency + queue_limit,
            max_wait_seconds=max_wait_seconds,
        )
        # Without SECRET_KEY (the CLI, tests): a key of this process's own.
        self._cost_key = (secret or secrets.token_hex(32)).encode()
        self._costs: Counter[int] | None = None
        self._dummy_hashes: dict[int, str] = {}
        self._executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="bcrypt", initializer=_lowest_priority
        )

    @property
    def queue_depth(self) -> int:
        return max(0, self._in_flight - self._concurrency)

    @property
    def hash_seconds(self) -> float:
        """The mean wall time of a recent hash in its thread (0 before the first)."""
        return self.admission.mean_seconds or 0.0

    @property
    def admission_limit(self) -> int:
        return self.admission.limit

    @property
    def knows_costs(self) -> bool:
        return self._costs is not None

    def learn_costs(self, costs: Mapping[int, int]) -> None:
        """How many stored hashes there are of each bcrypt cost (crud.count_password_costs)."""
        self._costs = Counter({cost: count for cost, count in costs.items() if count > 0})

    async def calibrate(self) -> None:
        """Time one hash at the configured cost, so admission has a rate from the start."""
        await self._run(self._dummy_hash, self._rounds)

    async def hash(self, password: str) -> str:
        hashed = await self._run(self._context.hash, normalise_password(password))
        self._count_cost(self._rounds, +1)
        return hashed

    async def verify(
        self, password: str, hashed_password: str | None, *, account: str = ""
    ) -> tuple[bool, str | None]:
        """Check a password; with no hash (unknown user) spend the same time and fail.
        `account`: what names the account (the email as looked up), which picks the cost
        of that time when there is no hash.

        Returns whether it matched and, when the hash is out of date (the rounds setting
        changed, or it was made before passwords were normalised), a new hash.
        """
        cost = self._cost_for(hashed_password, account)
        matched, new_hash = await self._run(self._verify, password, hashed_password, cost)
        if new_hash is not None and hashed_password:
            self._count_cost(bcrypt_cost(hashed_password), -1)
            self._count_cost(self._rounds, +1)
        return matched, new_hash

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @contextlib.contextmanager
    def reserve(self) -> Iterator[None]:
        """Hold a place for the hash a workflow will ask for once it has read the
        database: refused (503) at once, before any connection or query, when none is
        free, so that in a login storm a refusal costs only this comparison. The place is
        held from here, or logins arriving together would all pass, all read, and most
        be refused only then; hashes asked for inside take it instead of one of their own.
        """
        self.admit()
        self._in_flight += 1
        token = _RESERVED.set(True)
        try:
            yield
        finally:
            _RESERVED.reset(token)
            self._in_flight -= 1

    def admit(self) -> None:
        """Refuse (503) at once when a hash admitted now would not finish within the wait
        budget, or could neither start nor queue."""
        if not self.admission.admits(self._in_flight):
            raise ServiceUnavailableError(
                "Too many password checks in progress; retry shortly.",
                code=ProblemCode.SERVER_BUSY,
                retry_after_seconds=self.admission.retry_after(self._in_flight),
            )

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        if _RESERVED.get():  # the workflow's place, held since before its reads
            return await self._execute(work, *args)
        self.admit()
        self._in_flight += 1
        try:
            return await self._execute(work, *args)
        finally:
            self._in_flight -= 1

    async def _execute(self, work: Callable[..., T], *args: Any) -> T:
        result, seconds = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._timed, work, *args
        )
        self.admission.record(seconds)
        return result

    def _timed(self, work: Callable[..., T], *args: Any) -> tuple[T, float]:
        thread = threading.get_ident()
        started = self.admission.running[thread] = time.perf_counter()
        try:
            result = work(*args)
        finally:
            del self.admission.running[thread]
        return result, time.perf_counter() - started

    def _cost_for(self, hashed_password: str | None, account: str) -> int:
        """The cost of the dummy hash checked in place of `hashed_password`."""
        if hashed_password:
            return bcrypt_cost(hashed_password) or self._rounds
        if not self._costs:
            return self._rounds
        costs = sorted(self._costs)
        bounds = list(accumulate(self._costs[cost] for cost in costs))
        message = COST_DRAW_CONTEXT + account.encode()  # not a message the JWTs sign
        digest = hmac.new(self._cost_key, message, hashlib.sha256).digest()
        draw = int.from_bytes(digest[:8]) % bounds[-1]
        return costs[bisect_right(bounds, draw)]

    def _count_cost(self, cost: int | None, change: int) -> None:
        if self._costs is not None and cost is not None:
            self._costs[cost] = max(0, self._costs[cost] + change)

    def _dummy_hash(self, cost: int) -> str:
        # Made once per cost, in a hash thread; two threads racing make two valid ones.
        if cost not in self._dummy_hashes:
            dummy = BcryptHasher(rounds=cost).hash(DUMMY_PASSWORD)
            self._dummy_hashes.setdefault(cost, dummy)
        return self._dummy_hashes[cost]

    def _verify(
        self, password: str, hashed_password: str | None, dummy_cost: int
    ) -> tuple[bool, str | None]:
        # Hashes are of the NFKC form. Older ones are of the password as typed, which is
        # the same string for ASCII and most input: only input that NFKC changes costs a
        # second bcrypt, for known and unknown emails alike, and a match that way is
        # rehashed in NFKC form so that it costs one from then on.
        normalised = normalise_password(password)
        matched, new_hash = self._verify_one(normalised, hashed_password, dummy_cost)
        if matched or normalised == password:
            return matched, new_hash
        matched, _ = self._verify_one(password, hashed_password, dummy_cost)
        return matched, self._context.hash(normalised) if matched else None

    def _verify_one(
        self, password: str, hashed_password: str | None, dummy_cost: int
    ) -> tuple[bool, str | None]:
        too_long = len(password.encode()) > PASSWORD_MAX_BYTES
        if hashed_password is None or too_long:
            # bcrypt refuses passwords over 72 bytes, and no stored hash can match one.
            dummy = self._dummy_hash(dummy_cost)
            self._context.verify(password.encode()[:PASSWORD_MAX_BYTES], dummy)
            return False, None
        return self._context.verify_and_update(password, hashed_password)


def _lowest_priority() -> None:
    # Linux schedules threads one by one: nice 19 applies to this thread only.
    with contextlib.suppress(OSError, AttributeError):  # elsewhere: the normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
