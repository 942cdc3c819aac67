import logging
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from backend.auth import accounts, links, sessions
from backend.auth.deps import (
    LoginClient,
    LoginCredentials,
    SessionUser,
    get_login_client,
    refuse_api_keys,
)
from backend.auth.models import (
    Accepted,
    ClientInfo,
    LinkPurpose,
    LinkUse,
    LoginRequest,
    LoginResponse,
    MailRequest,
    PasswordSet,
    RegisterRequest,
    SessionEndReason,
)
from backend.auth.transport import PresentedRefreshToken, TokenDeliveryDep
from backend.errors import DomainError, ForbiddenError, ProblemCode, UnauthorizedError
from backend.http.deps import ClientIP, DbSession, RuntimeDep
from backend.http.problems import problem_responses
from backend.models import AuthEventKind, User, UserPublic
from backend.runtime import Runtime

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/auth", tags=["auth"], responses=problem_responses(400, 422, 429, 503))

LOGIN_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["username", "password"],
    "properties": {
        "username": {"type": "string", "format": "email", "description": "The account's email"},
        "password": {"type": "string", "format": "password", "minLength": 1, "maxLength": 1024},
    },
}


VERIFY_FIRST = "Account created: follow the link mailed to its address to verify it, then log in."
MAIL_ON_ITS_WAY = (
    "If an account with this email may have one, a link is on its way to it; it works once, "
    "for a limited time."
)


@router.post(
    "/register",
    name="auth-register",
    response_model=LoginResponse,
    responses={
        **problem_responses(403, 409),
        202: {"model": Accepted, "description": "EMAIL_VERIFICATION=required: verify, then log in"},
    },
)
async def register(
    body: RegisterRequest,
    db: DbSession,
    runtime: RuntimeDep,
    ip: ClientIP,
    client: LoginClient,
    delivery: TokenDeliveryDep,
) -> LoginResponse | JSONResponse:
    """Create an account and log it in. Unless EMAIL_VERIFICATION is off, a link to
    verify the address is mailed to it; when it is `required`, the answer is 202 and
    login waits until the link is followed."""
    settings = runtime.settings
    if not settings.REGISTRATION_ENABLED:
        raise ForbiddenError(
            "Registration is closed on this server.", code=ProblemCode.REGISTRATION_CLOSED
        )
    limiter = runtime.rate_limiter
    await limiter.hit(limiter.register, "register", ip)
    registered = await accounts.register(
        db,
        data=body,
        hasher=runtime.password_hasher,
        settings=settings,
        client=client,
    )
    _record(runtime, AuthEventKind.REGISTERED, client, user_id=registered.user.id)
    if registered.verify_link is not None:
        links.send_link(
            runtime.mailer,
            purpose=LinkPurpose.VERIFY,
            user=registered.user,
            link=registered.verify_link,
        )
    if registered.tokens is None:
        return JSONResponse(Accepted(detail=VERIFY_FIRST).model_dump(), status_code=202)
    return delivery.send(registered.tokens)


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
    db: DbSession,
    runtime: RuntimeDep,
    ip: ClientIP,
    client: LoginClient,
    delivery: TokenDeliveryDep,
) -> LoginResponse:
    """Exchange an email and password for tokens: the OAuth2 password form or JSON."""
    limiter = runtime.rate_limiter
    await limiter.hit(limiter.login_per_ip, "login", ip)
    await limiter.hit(limiter.login, "login", ip, credentials.email)
    # Failures only, whatever the address: the owner's own logins never use it up. Keyed
    # by the email as sent, so an unknown account is limited exactly like a real one.
    await limiter.check(limiter.login_failures_per_account, "login-account", credentials.email)
    try:
        outcome = await accounts.log_in(
            db,
            email=credentials.email,
            password=credentials.password,
            hasher=runtime.password_hasher,
            settings=runtime.settings,
            client=client,
        )
    except DomainError as error:  # deactivated, not verified, the server too busy
        _record(
            runtime,
            AuthEventKind.LOGIN_FAILED,
            client,
            email=credentials.email,
            reason=error.code,
        )
        raise
    if isinstance(outcome, accounts.LoginRefused):
        runtime.metrics.login_failures.inc()
        _record(
            runtime,
            AuthEventKind.LOGIN_FAILED,
            client,
            user_id=outcome.user_id,
            email=credentials.email,
            reason=ProblemCode.CREDENTIALS_INVALID,
        )
        await limiter.count(limiter.login_failures_per_account, "login-account", credentials.email)
        raise UnauthorizedError(
            "Incorrect email or password.", code=ProblemCode.CREDENTIALS_INVALID
        )
    _record(runtime, AuthEventKind.LOGIN_SUCCEEDED, client, user_id=outcome.user.id)
    return delivery.send(outcome)


def _record(
    runtime: Runtime,
    kind: AuthEventKind,
    client: ClientInfo,
    *,
    user_id: int | None = None,
    email: str | None = None,
    reason: str | None = None,
) -> None:
    runtime.auth_events.record(
        kind,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
        user_id=user_id,
        email=email,
        reason=reason,
    )


@router.post(
    "/refresh",
    name="auth-refresh",
    dependencies=[Depends(refuse_api_keys)],
    response_model=LoginResponse,
    responses=problem_responses(401, 403),
)
async def refresh(
    refresh_token: PresentedRefreshToken,
    request: Request,
    db: DbSession,
    runtime: RuntimeDep,
    ip: ClientIP,
    delivery: TokenDeliveryDep,
    background: BackgroundTasks,
) -> LoginResponse:
    """Trade a refresh token for a new pair. Each refresh token works once; presenting
    a used one again ends its whole session. A session past its lifetime is refused."""
    limiter = runtime.rate_limiter
    await limiter.hit(limiter.refresh, "refresh", ip)
    settings = runtime.settings
    try:
        tokens = await sessions.rotate(db, refresh_token=refresh_token, settings=settings)
    except DomainError as error:
        # The client is read only here: a refresh that works records nothing.
        _record(
            runtime,
            AuthEventKind.REFRESH_FAILED,
            await get_login_client(request, runtime),
            user_id=sessions.refresh_token_user_id(refresh_token, settings),
            reason=error.code,
        )
        raise
    background.add_task(_note_refresh, runtime, tokens.user.id)
    return delivery.send(tokens)


async def _note_refresh(runtime: Runtime, user_id: int) -> None:
    """last_login_at for a refresh, after its response (see sessions.note_refresh). A
    timestamp missed while the database is away is not worth an error: a warning."""
    try:
        async with runtime.sessionmaker() as db:
            await sessions.note_refresh(db, user_id=user_id)
    except (SQLAlchemyError, OSError, TimeoutError) as error:
        logger.warning("last_login_at not recorded for user %s: %r", user_id, error)


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
    db: DbSession,
    runtime: RuntimeDep,
    client: LoginClient,
    delivery: TokenDeliveryDep,
) -> None:
    """End the session the refresh token belongs to, its access tokens included (other
    devices stay logged in)."""
    user_id = await sessions.log_out(db, refresh_token=refresh_token, settings=runtime.settings)
    _record(runtime, AuthEventKind.LOGOUT, client, user_id=user_id)
    delivery.end()


@router.post(
    "/logout-all",
    name="auth-logout-all",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403),
)
async def logout_all(
    user: SessionUser, db: DbSession, runtime: RuntimeDep, client: LoginClient
) -> None:
    """End every session of the current user, on every device, at once."""
    await sessions.end_all(db, user=user, reason=SessionEndReason.LOGOUT_ALL)
    _record(
        runtime, AuthEventKind.LOGOUT, client, user_id=user.id, reason=SessionEndReason.LOGOUT_ALL
    )


@router.post(
    "/password/forgot",
    name="auth-password-forgot",
    response_model=Accepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(403),
)
async def forgot_password(body: MailRequest, runtime: RuntimeDep, ip: ClientIP) -> Accepted:
    """Mail a password-reset link to this address if it is an active account's. The
    answer is the same, and as fast, whether or not it is: the look-up happens after it."""
    settings = runtime.settings
    if not settings.PASSWORD_RESET_ENABLED:
        raise ForbiddenError(
            "Password reset by email is not available on this server.",
            code=ProblemCode.PASSWORD_RESET_DISABLED,
        )
    await _limit_mail(runtime, ip, body.email)
    links.mail_link_later(
        runtime.sessionmaker,
        runtime.mailer,
        settings,
        email=body.email,
        purpose=LinkPurpose.RESET,
    )
    return Accepted(detail=MAIL_ON_ITS_WAY)


@router.post(
    "/password/reset",
    name="auth-password-reset",
    response_model=LoginResponse,
    responses=problem_responses(403),
)
async def reset_password(
    body: PasswordSet,
    db: DbSession,
    runtime: RuntimeDep,
    client: LoginClient,
    delivery: TokenDeliveryDep,
) -> LoginResponse:
    """Set a new password with the token of a password-reset link. Every session of the
    account ends; the answer is a new one's tokens. 400 when the link is not usable."""
    tokens = await accounts.set_password_with_link(
        db,
        token=body.token,
        purpose=LinkPurpose.RESET,
        new_password=body.new_password,
        hasher=runtime.password_hasher,
        settings=runtime.settings,
        client=client,
    )
    return delivery.send(tokens)


@router.post(
    "/password/set",
    name="auth-password-set",
    response_model=LoginResponse,
    responses=problem_responses(403),
)
async def accept_invitation(
    body: PasswordSet,
    db: DbSession,
    runtime: RuntimeDep,
    client: LoginClient,
    delivery: TokenDeliveryDep,
) -> LoginResponse:
    """Accept an invitation: choose the password with the token of the invitation link.
    The account is activated and its email verified; the answer logs it in."""
    tokens = await accounts.set_password_with_link(
        db,
        token=body.token,
        purpose=LinkPurpose.INVITE,
        new_password=body.new_password,
        hasher=runtime.password_hasher,
        settings=runtime.settings,
        client=client,
    )
    return delivery.send(tokens)


@router.post("/verify", name="auth-verify", response_model=UserPublic)
async def verify_email(body: LinkUse, db: DbSession) -> User:
    """Verify an email address with the token of a verification link."""
    return await accounts.verify_email(db, token=body.token)


@router.post(
    "/verify/resend",
    name="auth-verify-resend",
    response_model=Accepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(403),
)
async def resend_verification(body: MailRequest, runtime: RuntimeDep, ip: ClientIP) -> Accepted:
    """Mail a new verification link to this address if it is an active account's whose
    address is not verified yet (the previous link stops working). The same answer, as
    fast, whether or not it is."""
    settings = runtime.settings
    if settings.EMAIL_VERIFICATION == "off":
        raise ForbiddenError(
            "Email verification is off on this server.",
            code=ProblemCode.EMAIL_VERIFICATION_DISABLED,
        )
    await _limit_mail(runtime, ip, body.email)
    links.mail_link_later(
        runtime.sessionmaker,
        runtime.mailer,
        settings,
        email=body.email,
        purpose=LinkPurpose.VERIFY,
    )
    return Accepted(detail=MAIL_ON_ITS_WAY)


async def _limit_mail(runtime: Runtime, ip: str, email: str) -> None:
    # Per address: one client mailing many inboxes; per email: many clients (or one
    # rotating addresses) filling one inbox. Keyed by the email as sent, known or not.
    limiter = runtime.rate_limiter
    await limiter.hit(limiter.mail_per_ip, "mail", ip)
    await limiter.hit(limiter.mail_per_email, "mail-email", email)
