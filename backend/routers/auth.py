from typing import Any

from fastapi import APIRouter, Depends, Response, status

from backend import crud, sessions
from backend.deps import (
    ClientIP,
    LoginClient,
    LoginCredentials,
    ServicesDep,
    SessionDep,
    SessionUser,
    refuse_api_keys,
)
from backend.errors import ForbiddenError, UnauthorizedError
from backend.models import LoginRequest, LoginResponse, RegisterRequest, SessionEndReason
from backend.problems import problem_responses
from backend.transport import PresentedRefreshToken, TokenDeliveryDep

router = APIRouter(prefix="/auth", tags=["auth"], responses=problem_responses(400, 422, 429, 503))

LOGIN_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["username", "password"],
    "properties": {
        "username": {"type": "string", "format": "email", "description": "The account's email"},
        "password": {"type": "string", "format": "password", "minLength": 1, "maxLength": 1024},
    },
}


@router.post(
    "/register",
    name="auth-register",
    response_model=LoginResponse,
    responses=problem_responses(403, 409),
)
async def register(
    body: RegisterRequest,
    session: SessionDep,
    services: ServicesDep,
    ip: ClientIP,
    client: LoginClient,
    delivery: TokenDeliveryDep,
) -> LoginResponse:
    """Create an account and log it in."""
    if not services.settings.REGISTRATION_ENABLED:
        raise ForbiddenError("Registration is closed on this server.")
    limiter = services.rate_limiter
    await limiter.hit(limiter.register, "register", ip)
    tokens = await crud.register(
        session,
        data=body,
        hasher=services.password_hasher,
        settings=services.settings,
        client=client,
    )
    return delivery.send(tokens)


@router.post(
    "/login",
    name="auth-login",
    response_model=LoginResponse,
    responses=problem_responses(401, 403),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {"schema": LOGIN_FORM_SCHEMA},
                "application/json": {"schema": LoginRequest.model_json_schema()},
            },
        }
    },
)
async def login(
    credentials: LoginCredentials,
    session: SessionDep,
    services: ServicesDep,
    ip: ClientIP,
    client: LoginClient,
    delivery: TokenDeliveryDep,
) -> LoginResponse:
    """Exchange an email and password for tokens: the OAuth2 password form or JSON."""
    limiter = services.rate_limiter
    await limiter.hit(limiter.login_per_ip, "login", ip)
    await limiter.hit(limiter.login, "login", ip, credentials.email)
    # Failures only, whatever the address: the owner's own logins never use it up. Keyed
    # by the email as sent, so an unknown account is limited exactly like a real one.
    await limiter.check(limiter.login_failures_per_account, "login-account", credentials.email)
    tokens = await crud.log_in(
        session,
        email=credentials.email,
        password=credentials.password,
        hasher=services.password_hasher,
        settings=services.settings,
        client=client,
    )
    if tokens is None:
        services.metrics.login_failures.inc()
        await limiter.count(limiter.login_failures_per_account, "login-account", credentials.email)
        raise UnauthorizedError("Incorrect email or password.")
    return delivery.send(tokens)


@router.post(
    "/refresh",
    name="auth-refresh",
    dependencies=[Depends(refuse_api_keys)],
    response_model=LoginResponse,
    responses=problem_responses(401, 403),
)
async def refresh(
    refresh_token: PresentedRefreshToken,
    session: SessionDep,
    services: ServicesDep,
    ip: ClientIP,
    delivery: TokenDeliveryDep,
) -> LoginResponse:
    """Trade a refresh token for a new pair. Each refresh token works once; presenting
    a used one again ends its whole session. A session past its lifetime is refused."""
    limiter = services.rate_limiter
    await limiter.hit(limiter.refresh, "refresh", ip)
    tokens = await sessions.rotate(session, refresh_token=refresh_token, settings=services.settings)
    return delivery.send(tokens)


@router.post(
    "/logout",
    name="auth-logout",
    dependencies=[Depends(refuse_api_keys)],
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403),
)
async def logout(
    refresh_token: PresentedRefreshToken,
    session: SessionDep,
    services: ServicesDep,
    delivery: TokenDeliveryDep,
) -> None:
    """End the session the refresh token belongs to, its access tokens included (other
    devices stay logged in)."""
    await sessions.log_out(session, refresh_token=refresh_token, settings=services.settings)
    delivery.end()


@router.post(
    "/logout-all",
    name="auth-logout-all",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403),
)
async def logout_all(user: SessionUser, session: SessionDep) -> None:
    """End every session of the current user, on every device, at once."""
    await sessions.end_all(session, user=user, reason=SessionEndReason.LOGOUT_ALL)
