from fastapi import APIRouter, Depends, Response, status

from backend.auth import mfa
from backend.auth.deps import (
    AdminTargetUser,
    AdminUser,
    CurrentCaller,
    RecentCaller,
    get_session_caller,
)
from backend.auth.mfa_models import MfaCode, MfaStatus, RecoveryCodes, TotpEnrolment
from backend.http.deps import DbSession, RuntimeDep
from backend.http.problems import problem_responses

# Second factors are a login's business: no API key reaches them, its owner's or, with
# an admin's key, anyone's.
router = APIRouter(
    prefix="/users",
    tags=["mfa"],
    responses=problem_responses(400, 401, 403, 422),
    dependencies=[Depends(get_session_caller)],
)


@router.get("/me/mfa", name="mfa-status", response_model=MfaStatus)
async def read_my_mfa(caller: CurrentCaller, db: DbSession) -> MfaStatus:
    """Which second factors you have on, and how many recovery codes are left."""
    assert caller.user.id is not None
    return await mfa.status(db, user_id=caller.user.id)


@router.post(
    "/me/mfa/totp",
    name="mfa-totp-start",
    response_model=TotpEnrolment,
    responses=problem_responses(409),
)
async def start_totp(caller: RecentCaller, db: DbSession, runtime: RuntimeDep) -> TotpEnrolment:
    """Start enrolling an authenticator app: scan `qr_svg` (or type `secret`), then
    confirm with a code from the app. Asks for a recent login or re-authentication:
    a stolen access token must not tie the account to someone else's phone."""
    return await mfa.start_totp(db, user=caller.user, settings=runtime.settings)


@router.post(
    "/me/mfa/totp/confirm",
    name="mfa-totp-confirm",
    response_model=RecoveryCodes,
    responses=problem_responses(404, 409),
)
async def confirm_totp(
    body: MfaCode, caller: CurrentCaller, db: DbSession, runtime: RuntimeDep
) -> RecoveryCodes:
    """Turn the authenticator app on with a code from it. The answer holds your
    recovery codes, shown this once; a restricted session (MFA_REQUIRED) is restricted
    no more."""
    return await mfa.confirm_totp(db, caller=caller, code=body.code, settings=runtime.settings)


@router.delete(
    "/me/mfa/totp",
    name="mfa-totp-delete",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404),
)
async def delete_totp(caller: RecentCaller, db: DbSession, runtime: RuntimeDep) -> None:
    """Turn the authenticator app off, and the recovery codes with it (a recent proof
    needed). Where MFA_REQUIRED asks you for one, your sessions are restricted to
    enrolling one again."""
    await mfa.disable_totp(db, caller=caller, settings=runtime.settings)


@router.post(
    "/me/mfa/recovery-codes",
    name="mfa-recovery-codes",
    response_model=RecoveryCodes,
    responses=problem_responses(404),
)
async def regenerate_recovery_codes(
    caller: RecentCaller, db: DbSession, runtime: RuntimeDep
) -> RecoveryCodes:
    """New recovery codes, shown this once; every earlier one stops working (a recent
    proof needed)."""
    return await mfa.regenerate_recovery_codes(db, user=caller.user, settings=runtime.settings)


@router.get(
    "/{user_id:digits}/mfa",
    name="mfa-user-status",
    response_model=MfaStatus,
    responses=problem_responses(404),
)
async def read_user_mfa(user: AdminTargetUser, db: DbSession) -> MfaStatus:
    """Which second factors a user has on (admin only)."""
    assert user.id is not None
    return await mfa.status(db, user_id=user.id)


@router.delete(
    "/{user_id:digits}/mfa",
    name="mfa-user-reset",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404),
)
async def reset_user_mfa(user: AdminTargetUser, admin: AdminUser, db: DbSession) -> None:
    """Remove every second factor of a user who lost theirs (admin only, audited): their
    sessions end, and they log in with the password alone, then enrol again."""
    await mfa.reset(db, user=user, actor_id=admin.id)
