"""Rate limits with the `limits` library: in memory by default, in Redis when shared."""

import asyncio
import functools
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn, TypeVar

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.requests import Request

from backend.config import Settings
from backend.errors import ProblemCode, TooManyRequestsError
from backend.http.observability import Metrics

logger = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Answer = TypeVar("Answer")
REDIS_TIMEOUT_SECONDS = 0.5
# The most one rate-limit check may wait for its storage before it fails open. Measured
# in-process with a SIGSTOPped Redis: without it every login took 4.6 s (three checks,
# each tried three times by coredis with the 0.5 s read timeout). A live Redis on
# loopback answers a check in well under a millisecond, so 0.2 s is far from a false alarm.
STORAGE_BUDGET_SECONDS = 0.2
# After a failure, checks skip the storage this long, then one check probes it again: a
# hung Redis costs one budget per interval rather than one per check, and the limits are
# back at most this long after it recovers.
STORAGE_RETRY_SECONDS = 2.0
IPV6_CLIENT_PREFIX = 64
# Every request whose address the server itself took from X-Forwarded-For counts as this
# one client: failing closed, since that address is whatever the client chose to send.
REWRITTEN_CLIENT = "address-rewritten-by-server"


def _redis_storage(url: str) -> Storage:
    """The counters in Redis, through coredis.

    coredis is imported here, only when Redis is configured: with its dependencies
    (beartype, pympler, which loads numpy when it is installed) it is ~25 MB of the
    worker's memory (bench/README.md, Memory), which the in-memory storage never uses.
    """
    # coredis imports this on its first script call, ~50 ms (110 ms on a busy machine) of
    # building its pipeline class: imported at start-up, that is not spent in a check's
    # budget.
    import coredis.pipeline  # noqa: F401
    from coredis.retry import NoRetryPolicy

    return storage_from_string(  # type: ignore[return-value]
        f"async+{url}",
        # A Redis that stops answering must not hold logins: fail open instead.
        connect_timeout=REDIS_TIMEOUT_SECONDS,
        stream_timeout=REDIS_TIMEOUT_SECONDS,
        # coredis retries twice by default, each try waiting out the timeout again;
        # within the budget a retry would never get its turn.
        retry_policy=NoRetryPolicy(),  # type: ignore[arg-type]
    )


class RateLimiter:
    """Counts hits per key in a moving window; refuses with 429 and Retry-After."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.enabled = settings.RATE_LIMIT_ENABLED
        self.metrics = metrics
        self.storage: Storage = (
            _redis_storage(settings.REDIS_URL) if settings.REDIS_URL else MemoryStorage()
        )
        self._strategy = MovingWindowRateLimiter(self.storage)
        self.login = parse(settings.RATE_LIMIT_LOGIN)
        self.login_per_ip = parse(settings.RATE_LIMIT_LOGIN_PER_IP)
        self.register = parse(settings.RATE_LIMIT_REGISTER)
        self.refresh = parse(settings.RATE_LIMIT_REFRESH)
        self.login_failures_per_account = parse(settings.RATE_LIMIT_LOGIN_PER_ACCOUNT)
        self.mail_per_ip = parse(settings.RATE_LIMIT_MAIL_PER_IP)
        self.mail_per_email = parse(settings.RATE_LIMIT_MAIL_PER_EMAIL)
        self.api_key = parse(settings.RATE_LIMIT_API_KEY)
        self.mfa_failures_per_account = parse(settings.RATE_LIMIT_MFA_PER_ACCOUNT)
        self._down_since: float | None = None  # monotonic time of the first failure
        self._next_probe_at = 0.0
        self._failed_open_while_down = 0

    @property
    def shared(self) -> bool:
        """Whether the counters live in Redis (REDIS_URL) rather than in this process."""
        return not isinstance(self.storage, MemoryStorage)

    async def storage_available(self, timeout_seconds: float) -> bool:
        """Whether the counter storage answers a PING in time (a hung Redis counts as down).
        The answer also tells the checks whether to skip the storage or to use it again."""
        try:
            async with asyncio.timeout(timeout_seconds):
                available = await self.storage.check()
        except TimeoutError:
            available = False
        if available:
            self._storage_up()
        else:
            self._storage_down("no answer to PING")
        return available

    async def hit(self, limit: RateLimitItem, *key: str) -> None:
        """Count this request; refuse it when the key has used up its limit."""
        if self.enabled:
            await self._enforce(limit, key, count_this_request=True)

    async def check(self, limit: RateLimitItem, *key: str) -> None:
        """Refuse when the key has used up its limit, without counting this request:
        for limits on failures, which `count` records once they are known."""
        if self.enabled:
            await self._enforce(limit, key, count_this_request=False)

    async def count(self, limit: RateLimitItem, *key: str) -> None:
        """Record one event (a failure) against the key; `check` refuses past the limit."""
        if self.enabled:
            await self._within_budget(functools.partial(self._strategy.hit, limit, *key))

    async def _enforce(
        self, limit: RateLimitItem, key: tuple[str, ...], *, count_this_request: bool
    ) -> None:
        async def reset_time_when_used_up() -> float | None:
            if count_this_request:
                allowed = await self._strategy.hit(limit, *key)
            else:
                allowed = await self._strategy.test(limit, *key)
            if allowed:
                return None
            return (await self._strategy.get_window_stats(limit, *key)).reset_time

        reset_time = await self._within_budget(reset_time_when_used_up)
        if reset_time is not None:
            self._refuse(limit, reset_time, key[0])

    async def _within_budget(self, ask: Callable[[], Awaitable[Answer]]) -> Answer | None:
        """The storage's answer, or None (fail open: the API matters more) when it is
        down, or fails, or does not answer within STORAGE_BUDGET_SECONDS."""
        if self._down_since is not None:
            if time.monotonic() < self._next_probe_at:
                self._fail_open()
                return None
            # This check is the probe; until it has an answer the others keep skipping.
            self._next_probe_at = time.monotonic() + STORAGE_RETRY_SECONDS
        try:
            async with asyncio.timeout(STORAGE_BUDGET_SECONDS):
                answer = await ask()
        except Exception as error:  # any storage failure
            self._storage_down(error.__class__.__name__)
            self._fail_open()
            return None
        self._storage_up()
        return answer

    def _fail_open(self) -> None:
        self.metrics.rate_limit_storage_errors.inc()
        self._failed_open_while_down += 1

    def _storage_down(self, cause: str) -> None:
        self._next_probe_at = time.monotonic() + STORAGE_RETRY_SECONDS
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        self._failed_open_while_down = 0
        self.metrics.rate_limit_storage_down.set(1)
        # One line per outage, not a traceback per request: the cause names the failure.
        logger.warning(
            "rate-limit storage unavailable (%s): requests are allowed without rate "
            "limits until it answers again; trying it every %g s",
            cause,
            STORAGE_RETRY_SECONDS,
        )

    def _storage_up(self) -> None:
        if self._down_since is None:
            return
        # At the level of the line that opened the outage, so whoever sees one sees both.
        logger.warning(
            "rate-limit storage available again after %.1f s; %d checks allowed unchecked",
            time.monotonic() - self._down_since,
            self._failed_open_while_down,
        )
        self._down_since = None
        self.metrics.rate_limit_storage_down.set(0)

    def _refuse(self, limit: RateLimitItem, reset_time: float, name: str) -> NoReturn:
        self.metrics.rate_limited.labels(name).inc()
        retry_after = max(1, math.ceil(reset_time - time.time()))
        raise TooManyRequestsError(
            f"Too many requests: at most {limit}. Retry in {retry_after} s.",
            code=ProblemCode.RATE_LIMITED,
            retry_after_seconds=retry_after,
            limit=name,
        )


def client_ip(request: Request, trusted_proxies: Sequence[IPNetwork]) -> str:
    """The peer's address, or the X-Forwarded-For entry a trusted proxy vouches for.

    Walk the chain from the right (the hop nearest to us) and stop at the first address
    that is not one of our proxies: anything left of it may be forged by the client.
    Repeated X-Forwarded-For lines are one list, in order (RFC 9110, section 5.3): a
    proxy may append a line of its own instead of extending the client's.
    """
    peer = request.client.host if request.client else "unknown"
    hops = [
        hop.strip()
        for line in request.headers.getlist("x-forwarded-for")
        for hop in line.split(",")
        if hop.strip()
    ]
    if _rewritten_by_server(peer, hops):
        _warn_rewritten_once()
        return REWRITTEN_CLIENT
    peer = _canonical(peer)
    if not trusted_proxies or not _is_trusted(peer, trusted_proxies):
        return peer
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted_proxies):
            return _canonical(hop) if _is_ip(hop) else peer
    return _canonical(hops[0]) if hops else peer


def rate_limit_key(address: str) -> str:
    """The bucket an address counts in: one IPv6 /64 is one client, since a single host
    or home line usually gets a whole /64 and could rotate through its addresses."""
    ip = _parse_ip(address)
    if ip is None:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


def _rewritten_by_server(peer: str, hops: Sequence[str]) -> bool:
    """Whether the server replaced the peer address with an X-Forwarded-For entry before
    the app saw it, as uvicorn and gunicorn do unless started with --no-proxy-headers.

    Their rewrite takes the host of one entry (`1.2.3.4`, `1.2.3.4:5678`, `[::1]:80`), so
    a peer equal to one of them was put there from the header. A real peer that is also
    listed is a client naming itself, which loses nothing by the shared bucket.
    """
    return any(peer in (hop, _host_of(hop)) for hop in hops)


def _host_of(hop: str) -> str:
    if hop.startswith("[") and "]" in hop:
        return hop[1 : hop.index("]")]
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop


@functools.cache  # once per process, not once per request
def _warn_rewritten_once() -> None:
    logger.error(
        "the server replaced the client address with one from X-Forwarded-For, which any "
        "client can send: rate limits count every such request as one client. Start uvicorn "
        "with --no-proxy-headers (gunicorn: FORWARDED_ALLOW_IPS='') and list your proxies "
        "in TRUSTED_PROXIES instead"
    )


def _canonical(address: str) -> str:
    """An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, from a dual-stack socket) as the
    IPv4 address it is, so one client is one key and matches IPv4 TRUSTED_PROXIES."""
    ip = _parse_ip(address)
    return address if ip is None else str(ip)


def _parse_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_ip(value: str) -> bool:
    return _parse_ip(value) is not None


def _is_trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    ip = _parse_ip(address)
    return ip is not None and any(ip in network for network in trusted)
