"""Annotated dependencies shared by the routers.

Every dependency is `async def`, even those that do not await: FastAPI runs a plain
`def` dependency in a worker thread, a thread hand-off per request for nothing.
"""

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import OAuth2PasswordBearer
from pydantic import ValidationError
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.convertors import Convertor, register_url_convertor

from backend import api_keys, crud, sessions
from backend.api_keys import KeyCaller
from backend.config import Settings
from backend.errors import ForbiddenError, NotFoundError, UnauthorizedError
from backend.models import (
    API_KEY_PREFIX,
    SESSION_ID_PATTERN,
    ApiKeyScope,
    LoginRequest,
    User,
    UserRole,
)
from backend.parsing import INT32_MAX, parse_int
from backend.ratelimit import client_ip, rate_limit_key
from backend.services import Services, services_of
from backend.sessions import Caller, ClientInfo

# The token URL shown in the docs is rewritten to the configured prefix in main.py.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/login", auto_error=False)
SAFE_METHODS = frozenset({"GET", "HEAD"})
KEYS_REFUSED = (
    "API keys cannot be used here: sessions and API keys are managed with an access "
    "token from a login (POST /auth/login)."
)


async def get_services(request: Request) -> Services:
    return services_of(request.scope)


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_session(request: Request, services: ServicesDep) -> AsyncIterator[AsyncSession]:
    # GET and HEAD handlers only read, so their sessions need no transaction (db.py);
    # the one write on their path, an API key's last_used_at, is a single UPDATE.
    read_only = request.method in SAFE_METHODS
    sessionmaker = services.read_sessionmaker if read_only else services.sessionmaker
    async with sessionmaker() as session:
        yield session


async def get_client_ip(request: Request, services: ServicesDep) -> str:
    """The client as rate limits count it: its address, an IPv6 one as its /64."""
    return rate_limit_key(client_ip(request, services.settings.TRUSTED_PROXIES))


async def get_login_client(request: Request, services: ServicesDep) -> ClientInfo:
    """The User-Agent and address a new session records (the address itself, where
    rate limits count an IPv6 client by its /64)."""
    return ClientInfo.bounded(
        request.headers.get("user-agent"), client_ip(request, services.settings.TRUSTED_PROXIES)
    )


SessionDep = Annotated[AsyncSession, Depends(get_session)]
ClientIP = Annotated[str, Depends(get_client_ip)]
LoginClient = Annotated[ClientInfo, Depends(get_login_client)]


async def get_caller(
    request: Request,
    session: SessionDep,
    services: ServicesDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> Caller | KeyCaller:
    if not token:
        raise UnauthorizedError("Not authenticated: send an access token as 'Bearer <token>'.")
    caller: Caller | KeyCaller
    if token.startswith(API_KEY_PREFIX):
        caller = await _key_caller(request, session, services, token)
    else:
        caller = await sessions.check(
            session, access_token=token, settings=services.settings, auth_cache=services.auth_cache
        )
    request.scope["state"]["user_id"] = caller.user.id  # for the request's log line
    return caller


async def _key_caller(
    request: Request, session: AsyncSession, services: Services, secret: str
) -> KeyCaller:
    """An API key's owner: each key has its own rate limit, and a read key may only
    read."""
    caller = await api_keys.check(session, secret=secret)
    limiter = services.rate_limiter
    await limiter.hit(limiter.api_key, "api-key", str(caller.api_key.id))
    if caller.api_key.scope is ApiKeyScope.READ and request.method not in SAFE_METHODS:
        raise ForbiddenError(
            f"This API key has the read scope: it may only send GET and HEAD, not "
            f"{request.method}. Create a key with the write scope to make changes."
        )
    return caller


AnyCaller = Annotated[Caller | KeyCaller, Depends(get_caller)]


async def get_session_caller(caller: AnyCaller) -> Caller:
    """A caller with a login session: an access token, never an API key."""
    if isinstance(caller, KeyCaller):
        raise ForbiddenError(KEYS_REFUSED)
    return caller


# The routes that list, make or end sessions or keys take this: an API key gets 403
# there, so no key starts a session or mints another key.
CurrentCaller = Annotated[Caller, Depends(get_session_caller)]


async def get_current_user(caller: AnyCaller) -> User:
    return caller.user


# An access token's user or an API key's owner.
CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_session_user(caller: CurrentCaller) -> User:
    return caller.user


SessionUser = Annotated[User, Depends(get_session_user)]


async def refuse_api_keys(request: Request) -> None:
    """For the refresh and logout routes, which take a refresh token rather than a
    bearer: a key sent there anyway is told why it cannot be used, not ignored. (The
    header is read directly: OAuth2PasswordBearer would mark them as needing a token.)"""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip().startswith(API_KEY_PREFIX):
        raise ForbiddenError(KEYS_REFUSED)


async def get_current_admin(user: CurrentUser) -> User:
    if user.role != UserRole.ADMIN:
        raise ForbiddenError("This action requires the admin role.")
    return user


AdminUser = Annotated[User, Depends(get_current_admin)]


async def get_login_credentials(request: Request) -> LoginRequest:
    """Accept the OAuth2 password form (Swagger's Authorize, curl -d) or a JSON body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        body = await request.body()
        return _validate_login(lambda: LoginRequest.model_validate_json(body), form=False)
    form = await request.form()
    fields = {"email": form.get("username"), "password": form.get("password")}
    return _validate_login(lambda: LoginRequest.model_validate(fields), form=True)


def _validate_login(validate: Callable[[], LoginRequest], *, form: bool) -> LoginRequest:
    try:
        return validate()
    except ValidationError as error:
        errors = []
        for item in error.errors():
            field = item["loc"][0] if item["loc"] else "body"
            if form and field == "email":
                field = "username"  # the OAuth2 form's name for it
            errors.append({**item, "loc": ("body", field, *item["loc"][1:])})
        raise RequestValidationError(errors) from error


LoginCredentials = Annotated[LoginRequest, Depends(get_login_credentials)]


class DigitsConvertor(Convertor[str]):
    """A path segment of ASCII digits, handed on as text for the endpoint to validate.

    Starlette's `int` convertor calls int() while routing, before any handler runs, so
    5,000 digits raised ValueError there: a 500 even without a token. Here the route
    still matches only digits (/users/me stays its own route, /users/abc a 404), and
    the endpoint's parameter type bounds the number, with a 422 naming it.
    """

    regex = "[0-9]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: Any) -> str:
        return str(value)


register_url_convertor("digits", DigitsConvertor())
# Routes take `{user_id:digits}` (see DigitsConvertor), never Starlette's `int`.
UserId = Annotated[int, Path(ge=1, le=INT32_MAX)]
ApiKeyId = Annotated[int, Path(ge=1, le=INT32_MAX, description="An API key's id")]


# The caller comes first in each of these: the path's user is looked up only for someone
# allowed to see it, so an anonymous request (401) or a plain user's on an admin route
# (403) is answered alike whether that user exists or not, and touches no table.
async def get_visible_user_id(user_id: UserId, caller: CurrentUser, services: ServicesDep) -> int:
    if user_id != caller.id and not sees_directory(caller, services.settings):
        raise ForbiddenError("Only admins may read other accounts here (USERS_DIRECTORY=admins).")
    return user_id


# The path's user id, once the caller may see that user.
VisibleUserId = Annotated[int, Depends(get_visible_user_id)]


def sees_directory(user: User, settings: Settings) -> bool:
    """Whether the user may read other accounts (USERS_DIRECTORY)."""
    return settings.USERS_DIRECTORY == "all" or user.role == UserRole.ADMIN


async def get_admin_target_user(user_id: UserId, _admin: AdminUser, session: SessionDep) -> User:
    return await _load_target(session, user_id)


async def _load_target(session: AsyncSession, user_id: int) -> User:
    user = await crud.get_user(session, user_id=user_id)
    if user is None:
        raise user_not_found(user_id)
    return user


def user_not_found(user_id: int) -> NotFoundError:
    return NotFoundError(f"User {user_id} does not exist.")


AdminTargetUser = Annotated[User, Depends(get_admin_target_user)]
SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN, description="A session's id")]


async def get_expected_versions(
    if_match: Annotated[str | None, Header(description="ETags of the version you read")] = None,
) -> frozenset[int] | None:
    """The versions an If-Match header allows, or None to allow any.

    `*` asks only that the user exists, which the route checks anyway. A weak, malformed
    or out-of-range ETag can match nothing (If-Match compares strongly), so it is left
    out; a header naming no possible version gives the empty set, answered with 412.
    """
    if if_match is None or if_match.strip() == "*":
        return None
    versions = set()
    for tag in if_match.split(","):
        value = tag.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            version = parse_int(value[1:-1], low=0, high=INT32_MAX)
            if version is not None:
                versions.add(version)
    return frozenset(versions)


ExpectedVersions = Annotated[frozenset[int] | None, Depends(get_expected_versions)]
