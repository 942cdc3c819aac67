"""Rate limits with the `limits` library: in memory by default, in Redis when shared."""

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Sequence

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.requests import Request

from backend.config import Settings
from backend.errors import TooManyRequestsError
from backend.observability import Metrics

logger = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
REDIS_TIMEOUT_SECONDS = 0.5


class RateLimiter:
    """Counts hits per key in a moving window; refuses with 429 and Retry-After."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.enabled = settings.RATE_LIMIT_ENABLED
        self.metrics = metrics
        self.storage: Storage = (
            storage_from_string(  # type: ignore[assignment]
                f"async+{settings.REDIS_URL}",
                # A Redis that stops answering must not hold logins: fail open instead.
                connect_timeout=REDIS_TIMEOUT_SECONDS,
                stream_timeout=REDIS_TIMEOUT_SECONDS,
            )
            if settings.REDIS_URL
            else MemoryStorage()
        )
        self._strategy = MovingWindowRateLimiter(self.storage)
        self.login = parse(settings.RATE_LIMIT_LOGIN)
        self.login_per_ip = parse(settings.RATE_LIMIT_LOGIN_PER_IP)
        self.register = parse(settings.RATE_LIMIT_REGISTER)
        self.refresh = parse(settings.RATE_LIMIT_REFRESH)

    @property
    def shared(self) -> bool:
        """Whether the counters live in Redis (REDIS_URL) rather than in this process."""
        return not isinstance(self.storage, MemoryStorage)

    async def storage_available(self, timeout_seconds: float) -> bool:
        """Whether the counter storage answers a PING in time (a hung Redis counts as down)."""
        try:
            async with asyncio.timeout(timeout_seconds):
                return await self.storage.check()
        except TimeoutError:
            return False

    async def hit(self, limit: RateLimitItem, *key: str) -> None:
        if not self.enabled:
            return
        try:
            allowed = await self._strategy.hit(limit, *key)
            if allowed:
                return
            stats = await self._strategy.get_window_stats(limit, *key)
        except Exception:  # any storage failure: fail open, the API matters more
            self.metrics.rate_limit_storage_errors.inc()
            logger.warning("rate-limit storage unavailable; request allowed", exc_info=True)
            return
        self.metrics.rate_limited.labels(key[0]).inc()
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise TooManyRequestsError(
            f"Too many requests: at most {limit}. Retry in {retry_after} s.",
            retry_after_seconds=retry_after,
        )


def client_ip(request: Request, trusted_proxies: Sequence[IPNetwork]) -> str:
    """The peer's address, or the X-Forwarded-For entry a trusted proxy vouches for.

    Walk the chain from the right (the hop nearest to us) and stop at the first address
    that is not one of our proxies: anything left of it may be forged by the client.
    """
    peer = request.client.host if request.client else "unknown"
    if not trusted_proxies or not _is_trusted(peer, trusted_proxies):
        return peer
    forwarded = request.headers.get("x-forwarded-for", "")
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted_proxies):
            return hop if _is_ip(hop) else peer
    return hops[0] if hops else peer


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
