"""Passkeys: the owner's list and ceremonies under /users/me/passkeys (a login's access
token only, never an API key), an admin's view of a user's, and the passwordless
sign-in under /auth/passkey (PASSKEY_LOGIN). See backend/auth/passkeys.py."""

from typing import Any

from fastapi import APIRouter, Depends, Response, status

from backend.auth import passkeys
from backend.auth.deps import (
    AdminTargetUser,
    CurrentCaller,
    LoginClient,
    NotImpersonating,
    RecentCaller,
    get_session_caller,
)
from backend.auth.models import (
    LoginResponse,
    PasskeyCreate,
    PasskeyLoginStatus,
    PasskeyPublic,
    PasskeyRename,
    PasskeySignIn,
)
from backend.auth.transport import TokenDeliveryDep
from backend.config import Settings
from backend.errors import ForbiddenError, ProblemCode
from backend.http.deps import ClientIP, DbSession, PasskeyId, RuntimeDep
from backend.http.problems import problem_responses
from backend.runtime import Runtime

OPTIONS_DESCRIPTION = (
    "WebAuthn options as JSON, binary fields in base64url: hand them to "
    "`PublicKeyCredential.parseCreationOptionsFromJSON()` (or @simplewebauthn/browser)."
)

router = APIRouter(
    prefix="/users",
    tags=["passkeys"],
    responses=problem_responses(400, 401, 403, 422),
    dependencies=[Depends(get_session_caller)],
)
auth_router = APIRouter(
    prefix="/auth/passkey", tags=["auth"], responses=problem_responses(400, 422, 429, 503)
)


@router.post(
    "/me/passkeys/options",
    name="passkeys-options",
    dependencies=[NotImpersonating],
    response_model=dict[str, Any],
)
async def registration_options(
    caller: CurrentCaller, db: DbSession, runtime: RuntimeDep
) -> dict[str, Any]:
    """Start adding a passkey: the options for `navigator.credentials.create()`. Their
    challenge works once, for 5 minutes, from this session."""
    return await passkeys.registration_options(
        db,
        user=caller.user,
        session_id=caller.user_session.id,
        settings=runtime.settings,
    )


@router.post(
    "/me/passkeys",
    name="passkeys-create",
    dependencies=[NotImpersonating],
    status_code=status.HTTP_201_CREATED,
    response_model=PasskeyPublic,
    responses=problem_responses(409),
)
async def add_passkey(
    body: PasskeyCreate, caller: CurrentCaller, db: DbSession, runtime: RuntimeDep
) -> PasskeyPublic:
    """Finish adding a passkey: the browser's answer (`credential.toJSON()`) to the
    options' challenge, and an optional name. Audited as `user.passkey_add`."""
    passkey = await passkeys.verify_registration(
        db,
        user=caller.user,
        session_id=caller.user_session.id,
        credential=body.credential,
        name=body.name,
        settings=runtime.settings,
    )
    return PasskeyPublic.model_validate(passkey)


@router.get("/me/passkeys", name="passkeys-list-mine", response_model=list[PasskeyPublic])
async def list_my_passkeys(caller: CurrentCaller, db: DbSession) -> list[PasskeyPublic]:
    """Your passkeys, oldest first."""
    return await _list(db, caller.user.id)


@router.patch(
    "/me/passkeys/{passkey_id:digits}",
    name="passkeys-rename",
    dependencies=[NotImpersonating],
    response_model=PasskeyPublic,
    responses=problem_responses(404),
)
async def rename_passkey(
    passkey_id: PasskeyId, body: PasskeyRename, caller: CurrentCaller, db: DbSession
) -> PasskeyPublic:
    """Rename one of your passkeys."""
    assert caller.user.id is not None
    passkey = await passkeys.rename(
        db, passkey_id=passkey_id, user_id=caller.user.id, name=body.name
    )
    return PasskeyPublic.model_validate(passkey)


@router.delete(
    "/me/passkeys/{passkey_id:digits}",
    name="passkeys-delete",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404),
)
async def delete_passkey(passkey_id: PasskeyId, caller: RecentCaller, db: DbSession) -> None:
    """Remove one of your passkeys: it signs no one in any more. Asks for a recent proof
    (a login or POST /auth/reauthenticate within REAUTHENTICATION_WINDOW_SECONDS; else
    403 `reauthentication_required`), so that a stolen session cannot strip a factor.
    Audited as `user.passkey_remove`."""
    assert caller.user.id is not None
    await passkeys.remove(
        db, passkey_id=passkey_id, user_id=caller.user.id, actor_id=caller.user.id
    )


@router.get(
    "/{user_id:digits}/passkeys",
    name="passkeys-list",
    response_model=list[PasskeyPublic],
    responses=problem_responses(404),
)
async def list_passkeys(user: AdminTargetUser, db: DbSession) -> list[PasskeyPublic]:
    """A user's passkeys (admin only), oldest first."""
    return await _list(db, user.id)


async def _list(db: DbSession, user_id: int | None) -> list[PasskeyPublic]:
    assert user_id is not None
    found = await passkeys.list_for_user(db, user_id=user_id)
    return [PasskeyPublic.model_validate(passkey) for passkey in found]


# --- passwordless sign-in -------------------------------------------------------------
@auth_router.get("", name="auth-passkey-status", response_model=PasskeyLoginStatus)
async def passkey_login_status(runtime: RuntimeDep) -> PasskeyLoginStatus:
    """Whether this server signs people in with a passkey alone (PASSKEY_LOGIN), for a
    login page to offer it."""
    return PasskeyLoginStatus(enabled=runtime.settings.PASSKEY_LOGIN)


def _require_passkey_login(settings: Settings) -> None:
    if not settings.PASSKEY_LOGIN:
        raise ForbiddenError(
            "Signing in with a passkey alone is off on this server (PASSKEY_LOGIN).",
            code=ProblemCode.PASSKEY_LOGIN_DISABLED,
        )


@auth_router.post(
    "/options",
    name="auth-passkey-options",
    response_model=dict[str, Any],
    responses=problem_responses(403),
)
async def sign_in_options(db: DbSession, runtime: RuntimeDep, ip: ClientIP) -> dict[str, Any]:
    """Start a passwordless sign-in: the options for `navigator.credentials.get()`
    (discoverable credentials: none listed). The challenge works once, for 5 minutes."""
    _require_passkey_login(runtime.settings)
    limiter = runtime.rate_limiter
    await limiter.hit(limiter.login_per_ip, "passkey-options", ip)
    return await passkeys.authentication_options(db, user_id=None, settings=runtime.settings)


@auth_router.post(
    "/verify",
    name="auth-passkey-verify",
    response_model=LoginResponse,
    responses=problem_responses(401, 403),
)
async def sign_in(
    body: PasskeySignIn,
    db: DbSession,
    runtime: RuntimeDep,
    ip: ClientIP,
    client: LoginClient,
    delivery: TokenDeliveryDep,
) -> LoginResponse:
    """Finish a passwordless sign-in with the browser's answer (`credential.toJSON()`):
    the same answer as a login, tokens or the cookie (`transport`)."""
    _require_passkey_login(runtime.settings)
    await _limit_sign_in(runtime, ip)
    tokens = await passkeys.log_in(
        db, credential=body.credential, settings=runtime.settings, client=client
    )
    return delivery.send(tokens)


async def _limit_sign_in(runtime: Runtime, ip: str) -> None:
    # As a password login: the address's budget for all logins, and a tighter one for
    # this kind (a passkey has no email to key by).
    limiter = runtime.rate_limiter
    await limiter.hit(limiter.login_per_ip, "login", ip)
    await limiter.hit(limiter.login, "passkey-login", ip)
