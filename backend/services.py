"""What the app holds while it runs, in one typed object instead of loose `app.state` keys."""

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.types import Scope

from backend.authcache import AuthCache
from backend.config import Settings
from backend.db import create_engine, create_sessionmaker
from backend.mail import Mailer
from backend.observability import Metrics
from backend.ratelimit import RateLimiter
from backend.security import PasswordHasher


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    read_sessionmaker: async_sessionmaker[AsyncSession]  # for GET and HEAD requests
    password_hasher: PasswordHasher
    rate_limiter: RateLimiter
    mailer: Mailer
    auth_cache: AuthCache

    @classmethod
    def start(cls, settings: Settings, metrics: Metrics) -> "Services":
        """Build every service; none connects anywhere until first used."""
        engine = create_engine(settings)
        password_hasher = PasswordHasher(
            rounds=settings.BCRYPT_ROUNDS,
            concurrency=settings.HASH_CONCURRENCY,
            queue_limit=settings.HASH_QUEUE_LIMIT,
        )
        metrics.watch(engine, password_hasher)
        auth_cache = AuthCache(settings, metrics)
        return cls(
            settings=settings,
            metrics=metrics,
            engine=engine,
            sessionmaker=create_sessionmaker(engine, settings, auth_cache=auth_cache),
            read_sessionmaker=create_sessionmaker(
                engine, settings, auth_cache=auth_cache, read_only=True
            ),
            password_hasher=password_hasher,
            rate_limiter=RateLimiter(settings, metrics),
            mailer=Mailer(settings),
            auth_cache=auth_cache,
        )

    async def close(self) -> None:
        # Mail first: work handed over may still need the database.
        await self.mailer.close()
        await self.auth_cache.close()
        self.password_hasher.close()
        await self.engine.dispose()


def services_of(scope: Scope) -> Services:
    """The running app's services, from a request's (or a middleware's) ASGI scope."""
    services: Services = scope["app"].state.services
    return services
