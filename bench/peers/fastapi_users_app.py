"""The fastapi-users peer: that library's documented SQLAlchemy + JWT set-up.

    uvicorn --factory bench.peers.fastapi_users_app:create_app

Written from fastapi-users' "Full example" page (configuration/full-example, the
SQLAlchemy variant: db.py, schemas.py, users.py, app.py, here in one file) with the
documented changes a real deployment makes: integer ids (`SQLAlchemyBaseUserTable[int]`
and `IntegerIDMixin`, from the SQLAlchemy database page), bcrypt through `PasswordHelper`
(the password hash page) so the seeded hashes verify, PostgreSQL through asyncpg, and the
secret, database URL, pool size (the app's 10+10, not SQLAlchemy's default 5+10) and
token lifetime from the environment the app reads. The example's routers are mounted
under /api/v1 instead of at the root (login at /api/v1/auth/login, not /auth/jwt/login),
so that wrk's scripts hit the same paths on every server; its demo route gives way to a
plain `/health`. Everything else is the library's: its users table (`peer_users`, seeded
by bench/database.py with the app's users and password hash), its user manager, its JWT
strategy (a SELECT of the caller per request) and its routers.

The table is created by the harness before the server starts, with the same
`Base.metadata.create_all` the example runs in its lifespan: two workers starting at once
would race to create it.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi_users import BaseUserManager, FastAPIUsers, IntegerIDMixin, schemas
from fastapi_users.authentication import AuthenticationBackend, BearerTransport, JWTStrategy
from fastapi_users.password import PasswordHelper
from fastapi_users_db_sqlalchemy import SQLAlchemyBaseUserTable, SQLAlchemyUserDatabase
from pwdlib import PasswordHash
from pwdlib.hashers.bcrypt import BcryptHasher
from sqlalchemy import Integer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

API = "/api/v1"
TABLE = "peer_users"


class Base(DeclarativeBase):
    pass


class User(SQLAlchemyBaseUserTable[int], Base):
    __tablename__ = TABLE

    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class UserRead(schemas.BaseUser[int]):
    pass


class UserCreate(schemas.BaseUserCreate):
    pass


class UserUpdate(schemas.BaseUserUpdate):
    pass


def async_url(url: str) -> str:
    """postgresql://... as the app is given it, with the asyncpg driver the example names."""
    scheme, _, rest = url.partition("://")
    return f"postgresql+asyncpg://{rest}" if scheme in ("postgres", "postgresql") else url


def create_app() -> FastAPI:
    secret = os.environ["SECRET_KEY"]
    engine = create_async_engine(
        async_url(os.environ["DATABASE_URL"]),
        pool_size=int(os.environ.get("DB_POOL_SIZE", 10)),
        max_overflow=int(os.environ.get("DB_MAX_OVERFLOW", 10)),
    )
    async_session_maker = async_sessionmaker(engine, expire_on_commit=False)
    password_helper = PasswordHelper(
        PasswordHash((BcryptHasher(rounds=int(os.environ.get("BCRYPT_ROUNDS", 12))),))
    )

    async def get_async_session() -> AsyncIterator[AsyncSession]:
        async with async_session_maker() as session:
            yield session

    async def get_user_db(
        session: Annotated[AsyncSession, Depends(get_async_session)],
    ) -> AsyncIterator[SQLAlchemyUserDatabase[User, int]]:
        yield SQLAlchemyUserDatabase(session, User)

    class UserManager(IntegerIDMixin, BaseUserManager[User, int]):
        reset_password_token_secret = secret
        verification_token_secret = secret

    async def get_user_manager(
        user_db: Annotated[SQLAlchemyUserDatabase[User, int], Depends(get_user_db)],
    ) -> AsyncIterator[UserManager]:
        yield UserManager(user_db, password_helper)

    lifetime_seconds = int(os.environ.get("ACCESS_TOKEN_EXPIRE_MINUTES", 60)) * 60

    def get_jwt_strategy() -> JWTStrategy[User, int]:
        return JWTStrategy(secret=secret, lifetime_seconds=lifetime_seconds)

    auth_backend = AuthenticationBackend(
        name="jwt",
        transport=BearerTransport(tokenUrl=f"{API}/auth/login"),
        get_strategy=get_jwt_strategy,
    )
    fastapi_users = FastAPIUsers[User, int](get_user_manager, [auth_backend])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(
        fastapi_users.get_auth_router(auth_backend), prefix=f"{API}/auth", tags=["auth"]
    )
    # The example's other routers too, so route matching walks the same table it would.
    app.include_router(
        fastapi_users.get_register_router(UserRead, UserCreate),
        prefix=f"{API}/auth",
        tags=["auth"],
    )
    app.include_router(
        fastapi_users.get_reset_password_router(), prefix=f"{API}/auth", tags=["auth"]
    )
    app.include_router(
        fastapi_users.get_verify_router(UserRead), prefix=f"{API}/auth", tags=["auth"]
    )
    app.include_router(
        fastapi_users.get_users_router(UserRead, UserUpdate),
        prefix=f"{API}/users",
        tags=["users"],
    )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
