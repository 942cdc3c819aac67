import logging
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from backend.auth import accounts, links, mfa, passkeys, sessions, sso
from backend.auth.deps import (
    CurrentCaller,
    LoginClient,
    LoginCredentials,
    NotImpersonating,
    SessionUser,
    get_login_client,
    refuse_api_keys,
)
from backend.auth.mfa_models import LoginProblem, MfaPasskeyOptions, MfaVerify
from backend.auth.models import (
    Accepted,
    ClientInfo,
    LinkPurpose,
    LinkUse,
    LoginRequest,
    LoginResponse,
    MailRequest,
    PasswordSet,
    Reauthenticated,
    Reauthentication,
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
    sso.check_password_allowed(settings, body.email)
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


# A login's 401: a wrong password, or the password right and the second step due.
LOGIN_401: dict[int | str, dict[str, Any]] = {
    401: {"model": LoginProblem, "description": "Unauthorized, or mfa_required"}
}


@router.post(
    "/login",
    name="auth-login",
    response_model=LoginResponse,
    responses={**problem_responses(403), **LOGIN_401},
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
    """Exchange an email and password for tokens: the OAuth2 password form or JSON.
    An account with a second factor gets 401 `mfa_required` with an `mfa_token` to send
    with a code to POST /auth/mfa/verify."""
    sso.check_password_allowed(runtime.settings, credentials.email)
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
        # The right password of an account with a second factor is no failure yet: the
        # login ends at /auth/mfa/verify, which records how.
        if error.code is not ProblemCode.MFA_REQUIRED:
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
    "/mfa/passkey-options",
    name="auth-mfa-passkey-options",
    response_model=dict[str, Any],
    responses=problem_responses(401),
)
async def mfa_passkey_options(
    body: MfaPasskeyOptions, db: DbSession, runtime: RuntimeDep, ip: ClientIP
) -> dict[str, Any]:
    """For a login that answered `mfa_required` with `passkey` among its `methods`: the
    options for navigator.credentials.get(), listing the account's passkeys. Send the
    assertion as `credential`, with the `mfa_token`, to POST /auth/mfa/verify."""
    limiter = runtime.rate_limiter
    await limiter.hit(limiter.login_per_ip, "mfa", ip)
    found = await mfa.find_challenge(db, token=body.mfa_token)
    return await passkeys.authentication_options(
        db, user_id=found.user_id, settings=runtime.settings
    )


@router.post(
    "/mfa/verify",
    name="auth-mfa-verify",
    response_model=LoginResponse,
    responses=problem_responses(401, 403),
)
async def verify_mfa(
    body: MfaVerify,
    db: DbSession,
    runtime: RuntimeDep,
    ip: ClientIP,
    client: LoginClient,
    delivery: TokenDeliveryDep,
) -> LoginResponse:
    """The second step of a login that answered `mfa_required`: its `mfa_token` and a
    code from the authenticator app or a recovery code. The answer is the login's (the
    same `transport` choices). The token works once, for a few minutes, and not after
    five wrong codes; wrong codes count per account and per address."""
    limiter = runtime.rate_limiter
    await limiter.hit(limiter.login_per_ip, "mfa", ip)
    found = await mfa.find_challenge(db, token=body.mfa_token)
    account = str(found.user_id)
    await limiter.check(limiter.mfa_failures_per_account, "mfa-account", account)
    try:
        tokens = await mfa.verify_login(
            db,
            found=found,
            code=body.code,
            credential=body.credential,
            settings=runtime.settings,
            client=client,
        )
    except DomainError as error:
        if error.code is ProblemCode.MFA_CODE_INVALID or error.code.startswith("passkey_"):
            runtime.metrics.login_failures.inc()
            await limiter.count(limiter.mfa_failures_per_account, "mfa-account", account)
        _record(
            runtime, AuthEventKind.LOGIN_FAILED, client, user_id=found.user_id, reason=error.code
        )
        raise
    _record(runtime, AuthEventKind.LOGIN_SUCCEEDED, client, user_id=tokens.user.id)
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
        rotated = await sessions.rotate(db, refresh_token=refresh_token, settings=settings)
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
    if rotated.own:
        background.add_task(_note_refresh, runtime, rotated.tokens.user.id)
    return delivery.send(rotated.tokens)


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
    dependencies=[NotImpersonating],
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
    "/reauthenticate",
    name="auth-reauthenticate",
    dependencies=[NotImpersonating],
    response_model=Reauthenticated,
    responses=problem_responses(401, 403),
)
async def reauthenticate(
    body: Reauthentication, caller: CurrentCaller, db: DbSession, runtime: RuntimeDep, ip: ClientIP
) -> Reauthenticated:
    """Prove it is you again, with your password or, when an authenticator app is on, a
    code from it: for a few minutes (`valid_until`) this session may make the changes
    that ask for a recent proof (403 `reauthentication_required` otherwise)."""
    email = caller.user.email
    limiter = runtime.rate_limiter
    await limiter.hit(limiter.login, "login", ip, email)
    # As for a password change: a stolen access token is no way to guess the password,
    # nor the codes.
    if body.code is not None:
        account = str(caller.user.id)
        await limiter.check(limiter.mfa_failures_per_account, "mfa-account", account)
        try:
            return await mfa.reauthenticate(
                db, caller=caller, code=body.code, settings=runtime.settings
            )
        except DomainError as error:
            if error.code is ProblemCode.MFA_CODE_INVALID:
                await limiter.count(limiter.mfa_failures_per_account, "mfa-account", account)
            raise
    assert body.password is not None  # Reauthentication holds one or the other
    await limiter.check(limiter.login_failures_per_account, "login-account", email)
    try:
        return await accounts.reauthenticate(
            db,
            caller=caller,
            password=body.password,
            hasher=runtime.password_hasher,
            settings=runtime.settings,
        )
    except DomainError as error:
        if error.code is ProblemCode.PASSWORD_INCORRECT:
            await limiter.count(limiter.login_failures_per_account, "login-account", email)
        raise


@router.post(
    "/impersonation/stop",
    name="auth-impersonation-stop",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 409),
)
async def stop_impersonation(caller: CurrentCaller, db: DbSession) -> None:
    """End the impersonation session these tokens belong to (audited). The admin's own
    session was never touched: a dashboard goes back to its tokens. No cookie is
    cleared: an impersonation never had one. 409 `not_impersonating` from a session of
    one's own."""
    await sessions.stop_impersonation(db, caller=caller)


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
    sso.check_password_allowed(settings, body.email)
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
    responses={**problem_responses(403), **LOGIN_401},
)
async def reset_password(
    body: PasswordSet,
    db: DbSession,
    runtime: RuntimeDep,
    client: LoginClient,
    delivery: TokenDeliveryDep,
) -> LoginResponse:
    """Set a new password with the token of a password-reset link. Every session of the
    account ends; the answer is a new one's tokens, or for an account with a second
    factor 401 `mfa_required`, as from a login. 400 when the link is not usable."""
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
    "/email/confirm",
    name="auth-email-confirm",
    response_model=UserPublic,
    responses=problem_responses(403, 409),
)
async def confirm_email_change(body: LinkUse, db: DbSession) -> User:
    """Change an account's address with the token of the link mailed to the new one:
    409 if it was taken, or a look-alike of another account's made, meanwhile. The
    address counts as verified; every session of the account ends but the one that
    asked for the change."""
    return await accounts.confirm_email_change(db, token=body.token)


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
