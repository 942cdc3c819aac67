"""Annotated dependencies for who calls: an access token's login session or an API key,
the current user and admin, login credentials, and the path's user as the caller may see it.

Every dependency is `async def` (see backend/http/deps.py).
"""

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import OAuth2PasswordBearer
from pydantic import ValidationError
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import crud
from backend.auth import api_keys, sessions, support
from backend.auth.api_keys import KeyCaller
from backend.auth.models import (
    API_KEY_PREFIX,
    SESSION_ID_PATTERN,
    ApiKeyScope,
    ClientInfo,
    LoginRequest,
)
from backend.auth.sessions import Caller
from backend.clock import utcnow
from backend.config import Settings
from backend.errors import ForbiddenError, NotFoundError, ProblemCode, UnauthorizedError
from backend.http.deps import SAFE_METHODS, DbSession, RuntimeDep, UserId
from backend.http.observability import AFTER_RESPONSE, AfterResponseHook
from backend.http.ratelimit import client_ip
from backend.models import User, UserRole
from backend.runtime import Runtime

# The token URL shown in the docs is rewritten to the configured prefix in main.py.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/login", auto_error=False)
KEYS_REFUSED = (
    "API keys cannot be used here: sessions and API keys are managed with an access "
    "token from a login (POST /auth/login)."
)


async def get_login_client(request: Request, runtime: RuntimeDep) -> ClientInfo:
    """The User-Agent and address a new session records (the address itself, where
    rate limits count an IPv6 client by its /64)."""
    return ClientInfo.bounded(
        request.headers.get("user-agent"), client_ip(request, runtime.settings.TRUSTED_PROXIES)
    )


LoginClient = Annotated[ClientInfo, Depends(get_login_client)]


async def get_caller(
    request: Request,
    db: DbSession,
    runtime: RuntimeDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> Caller | KeyCaller:
    if not token:
        raise UnauthorizedError(
            "Not authenticated: send an access token as 'Bearer <token>'.",
            code=ProblemCode.NOT_AUTHENTICATED,
        )
    caller: Caller | KeyCaller
    if token.startswith(API_KEY_PREFIX):
        caller = await _key_caller(request, db, runtime, token)
    else:
        caller = await sessions.check(
            db, access_token=token, settings=runtime.settings, auth_cache=runtime.auth_cache
        )
    request.scope["state"]["user_id"] = caller.user.id  # for the request's log line
    if isinstance(caller, Caller):
        if caller.user_session.impersonator_id is not None:  # refusals audited too
            _audit_after_response(request, runtime, caller, caller.user_session.impersonator_id)
        if caller.user_session.restricted:
            _check_enrolling(request)
    return caller


def _audit_after_response(
    request: Request, runtime: Runtime, caller: Caller, admin_id: int
) -> None:
    """Every request of an impersonation session is audited with both ids, after its
    response, refusals included: a GET then opens no write transaction on its own db
    session (the budgeted session's reads run without one), and nobody waits for it."""
    assert caller.user.id is not None
    item = support.ImpersonatedRequest(
        admin_id=admin_id,
        user_id=caller.user.id,
        session_id=caller.user_session.id,
        method=request.method,
        at=utcnow(),
    )

    async def record(status: int, route: str) -> None:
        async with runtime.sessionmaker() as db:
            await support.record_impersonated_request(db, item, route=route, status=status)

    hooks: list[AfterResponseHook] = request.scope["state"].setdefault(AFTER_RESPONSE, [])
    hooks.append(record)


# What a restricted session (MFA_REQUIRED, no factor yet) may reach with its access
# token, by route name: enrolment and what it needs. Refresh and logout take the
# refresh token, never this dependency, and work as for any session.
ENROLMENT_ROUTES = {
    "users-me",
    "mfa-status",
    "mfa-totp-start",
    "mfa-totp-confirm",
    "passkeys-options",
    "passkeys-create",
    "auth-reauthenticate",
}


def _check_enrolling(request: Request) -> None:
    route = request.scope.get("route")
    if getattr(route, "name", None) not in ENROLMENT_ROUTES:
        raise ForbiddenError(
            "This server requires a second factor for your account: enrol an "
            "authenticator app (POST /users/me/mfa/totp, then /users/me/mfa/totp/confirm) "
            "before anything else.",
            code=ProblemCode.MFA_ENROLMENT_REQUIRED,
        )


async def _key_caller(
    request: Request, db: AsyncSession, runtime: Runtime, secret: str
) -> KeyCaller:
    """An API key's owner: each key has its own rate limit, and a read key may only
    read."""
    caller = await api_keys.check(db, secret=secret)
    limiter = runtime.rate_limiter
    await limiter.hit(limiter.api_key, "api-key", str(caller.api_key.id))
    if caller.api_key.scope is ApiKeyScope.READ and request.method not in SAFE_METHODS:
        raise ForbiddenError(
            f"This API key has the read scope: it may only send GET and HEAD, not "
            f"{request.method}. Create a key with the write scope to make changes.",
            code=ProblemCode.API_KEY_READ_ONLY,
        )
    return caller


AnyCaller = Annotated[Caller | KeyCaller, Depends(get_caller)]


async def get_session_caller(caller: AnyCaller) -> Caller:
    """A caller with a login session: an access token, never an API key."""
    if isinstance(caller, KeyCaller):
        raise ForbiddenError(KEYS_REFUSED, code=ProblemCode.API_KEY_NOT_ALLOWED)
    return caller


# The routes that list, make or end sessions or keys take this: an API key gets 403
# there, so no key starts a session or mints another key.
CurrentCaller = Annotated[Caller, Depends(get_session_caller)]


async def refuse_impersonation(caller: AnyCaller) -> None:
    """Refuse an impersonation session (an admin acting as the user): it may look and
    act as the user, but not change what proves who they are (password, email, second
    factors, passkeys), nor their API keys or sessions."""
    if isinstance(caller, Caller) and caller.user_session.impersonator_id is not None:
        raise ForbiddenError(
            "Not while impersonating: an admin acting as this user cannot change their "
            "credentials, API keys or sessions.",
            code=ProblemCode.IMPERSONATION_FORBIDDEN,
        )


# On a route: `dependencies=[NotImpersonating]` (or a router's). Every RecentCaller
# route refuses impersonation too.
NotImpersonating = Depends(refuse_impersonation)


async def get_recent_caller(
    caller: CurrentCaller, runtime: RuntimeDep, _: Annotated[None, NotImpersonating]
) -> Caller:
    """A session caller whose login, or POST /auth/reauthenticate, is recent enough for
    a change that could lock its owner out if someone else made it; never an admin
    impersonating the user."""
    if sessions.reauthenticated_until(caller.user_session, runtime.settings) <= utcnow():
        raise ForbiddenError(
            "Confirm it is you: send your password (or a code from your authenticator "
            "app) to POST /auth/reauthenticate, then "
            f"retry within {runtime.settings.REAUTHENTICATION_WINDOW_SECONDS} seconds.",
            code=ProblemCode.REAUTHENTICATION_REQUIRED,
        )
    return caller


RecentCaller = Annotated[Caller, Depends(get_recent_caller)]


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
        raise ForbiddenError(KEYS_REFUSED, code=ProblemCode.API_KEY_NOT_ALLOWED)


async def get_current_admin(user: CurrentUser) -> User:
    if user.role != UserRole.ADMIN:
        raise ForbiddenError(
            "This action requires the admin role.", code=ProblemCode.ADMIN_REQUIRED
        )
    return user


AdminUser = Annotated[User, Depends(get_current_admin)]


async def get_admin_caller(caller: AnyCaller, _admin: AdminUser) -> Caller | KeyCaller:
    return caller


# An admin, and how they came: a login's access token or an API key.
AdminCaller = Annotated[Caller | KeyCaller, Depends(get_admin_caller)]


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


# The caller comes first in each of these: the path's user is looked up only for someone
# allowed to see it, so an anonymous request (401) or a plain user's on an admin route
# (403) is answered alike whether that user exists or not, and touches no table.
async def get_visible_user_id(user_id: UserId, caller: CurrentUser, runtime: RuntimeDep) -> int:
    if user_id != caller.id and not sees_directory(caller, runtime.settings):
        raise ForbiddenError(
            "Only admins may read other accounts here (USERS_DIRECTORY=admins).",
            code=ProblemCode.DIRECTORY_ADMINS_ONLY,
        )
    return user_id


# The path's user id, once the caller may see that user.
VisibleUserId = Annotated[int, Depends(get_visible_user_id)]


def sees_directory(user: User, settings: Settings) -> bool:
    """Whether the user may read other accounts (USERS_DIRECTORY)."""
    return settings.USERS_DIRECTORY == "all" or user.role == UserRole.ADMIN


async def get_admin_target_user(user_id: UserId, _admin: AdminUser, db: DbSession) -> User:
    return await _load_target(db, user_id)


async def _load_target(db: AsyncSession, user_id: int) -> User:
    user = await crud.get_user(db, user_id=user_id)
    if user is None:
        raise user_not_found(user_id)
    return user


def user_not_found(user_id: int) -> NotFoundError:
    return NotFoundError(f"User {user_id} does not exist.", code=ProblemCode.USER_NOT_FOUND)


AdminTargetUser = Annotated[User, Depends(get_admin_target_user)]
SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN, description="A session's id")]
