"""What the app holds while it runs, in one typed object instead of loose `app.state` keys.

The app factory builds it (backend/main.py, start_runtime); this module only names its
parts. Their types are imported for the type checker alone, so that the HTTP plumbing can
reach the runtime without depending on the auth package at run time."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.types import Scope

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
    from sqlmodel.ext.asyncio.session import AsyncSession

    from backend.auth.authcache import AuthCache
    from backend.auth.events import AuthEventWriter
    from backend.auth.passwords import PasswordHasher
    from backend.auth.providers import Providers
    from backend.config import Settings
    from backend.http.observability import DatabaseOutage, Metrics
    from backend.http.ratelimit import RateLimiter
    from backend.mail import Mailer
    from backend.webhooks.dispatcher import Dispatcher


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics
    engine: AsyncEngine
    database_outage: DatabaseOutage
    sessionmaker: async_sessionmaker[AsyncSession]
    read_sessionmaker: async_sessionmaker[AsyncSession]  # for GET and HEAD requests
    password_hasher: PasswordHasher
    rate_limiter: RateLimiter
    mailer: Mailer
    auth_cache: AuthCache
    sso: Providers  # the identity providers' discovery documents and keys
    webhooks: Dispatcher
    auth_events: AuthEventWriter

    async def close(self, *, within: float) -> None:
        """Stop, giving the work left (sign-in events, mail, webhook deliveries under way)
        at most `within` seconds, together."""
        # Before the engine goes: work handed over still needs the database. The events
        # first, a statement a batch, then mail and deliveries with what is left.
        started = time.monotonic()
        await self.auth_events.close(within=within)
        left = max(0.0, within - (time.monotonic() - started))
        await asyncio.gather(self.mailer.close(within=left), self.webhooks.close(within=left))
        await self.auth_cache.close()
        self.password_hasher.close()
        await self.engine.dispose()


def runtime_of(scope: Scope) -> Runtime:
    """The running app's runtime, from a request's (or a middleware's) ASGI scope."""
    runtime: Runtime = scope["app"].state.runtime
    return runtime
