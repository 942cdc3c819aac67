from collections.abc import Sequence

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import crud
from backend.deps import (
    AdminUser,
    ClientIP,
    CurrentUser,
    ExpectedVersions,
    PasswordHasherDep,
    RateLimiterDep,
    SessionDep,
    SettingsDep,
    TargetUser,
    etag,
)
from backend.errors import BadRequestError, ConflictError, problem_responses
from backend.listing import (
    LIST_HEADERS,
    USERS,
    USERS_LIST_DESCRIPTION,
    list_parameters,
    parse_list_query,
    set_list_headers,
)
from backend.models import (
    LoginResponse,
    PasswordChange,
    User,
    UserCreate,
    UserPublic,
    UserReplace,
    UserUpdate,
    UserUpdateMe,
)
from backend.security import PasswordHasher

ETAG_HEADER = {"ETag": {"description": "The user's version", "schema": {"type": "string"}}}

router = APIRouter(prefix="/users", tags=["users"], responses=problem_responses(400, 401, 403, 422))


@router.get(
    "",
    name="users-list",
    response_model=list[UserPublic],
    description=USERS_LIST_DESCRIPTION,
    openapi_extra={"parameters": list_parameters(USERS)},
    responses={200: {"headers": LIST_HEADERS}},
)
async def list_users(
    request: Request, response: Response, session: SessionDep, _user: CurrentUser
) -> Sequence[User]:
    query = parse_list_query(request.query_params, USERS)
    users, total = await crud.list_users(session, query=query)
    set_list_headers(request, response, USERS, query, len(users), total)
    return users


@router.post(
    "",
    name="users-create",
    response_model=UserPublic,
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(409),
)
async def create_user(
    body: UserCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    admin: AdminUser,
    hasher: PasswordHasherDep,
) -> User:
    """Create a user (admin only)."""
    hashed_password = await hasher.hash(body.password)
    user = await crud.create_user(
        session, data=body, hashed_password=hashed_password, actor_id=admin.id
    )
    response.headers["ETag"] = etag(user)
    response.headers["Location"] = str(request.url_for("users-get", user_id=user.id))
    return user


@router.get("/me", name="users-me", response_model=UserPublic)
async def read_me(user: CurrentUser) -> User:
    """The authenticated user."""
    return user


@router.patch("/me", name="users-update-me", response_model=UserPublic)
async def update_me(body: UserUpdateMe, user: CurrentUser, session: SessionDep) -> User:
    """Change your own name."""
    changes = UserUpdate.model_validate(body.model_dump(exclude_unset=True))
    return await crud.update_user(session, user=user, changes=changes, actor_id=user.id)


@router.post(
    "/me/password",
    name="users-change-password",
    response_model=LoginResponse,
    responses=problem_responses(400, 429),
)
async def change_password(
    body: PasswordChange,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    hasher: PasswordHasherDep,
    limiter: RateLimiterDep,
    ip: ClientIP,
) -> LoginResponse:
    """Change your password. Every other session ends; this call returns a fresh pair."""
    await limiter.hit(limiter.login, "login", ip, user.email)
    matched, _ = await hasher.verify(body.current_password, user.hashed_password)
    if not matched:
        raise BadRequestError("The current password is incorrect.")
    hashed_password = await hasher.hash(body.new_password)
    updated = await crud.update_user(
        session, user=user, changes=UserUpdate(), hashed_password=hashed_password, actor_id=user.id
    )
    return await crud.issue_tokens(session, user=updated, settings=settings)


@router.get(
    "/{user_id:int}",
    name="users-get",
    response_model=UserPublic,
    responses={**problem_responses(404), 200: {"headers": ETAG_HEADER}},
)
async def read_user(user: TargetUser, _user: CurrentUser, response: Response) -> User:
    """One user by id, with its version in `ETag` (send it back in `If-Match` to edit)."""
    response.headers["ETag"] = etag(user)
    return user


@router.patch(
    "/{user_id:int}",
    name="users-update",
    response_model=UserPublic,
    responses={**problem_responses(404, 409, 412), 200: {"headers": ETAG_HEADER}},
)
async def update_user(
    body: UserUpdate,
    user: TargetUser,
    session: SessionDep,
    admin: AdminUser,
    hasher: PasswordHasherDep,
    expected_versions: ExpectedVersions,
    response: Response,
) -> User:
    """Change the fields sent (admin only); role, deactivation and password changes
    revoke the user's tokens. With `If-Match`, a user changed meanwhile gives 412."""
    return await _save(session, user, body, hasher, admin, expected_versions, response)


@router.put(
    "/{user_id:int}",
    name="users-replace",
    response_model=UserPublic,
    responses={**problem_responses(404, 409, 412), 200: {"headers": ETAG_HEADER}},
)
async def replace_user(
    body: UserReplace,
    user: TargetUser,
    session: SessionDep,
    admin: AdminUser,
    hasher: PasswordHasherDep,
    expected_versions: ExpectedVersions,
    response: Response,
) -> User:
    """Save a whole record as read (admin only): the rules of PATCH apply; `id`,
    `created_at` and `updated_at` are read-only and, when sent, must be unchanged."""
    _check_read_only_fields(body, user)
    return await _save(session, user, body.changes(), hasher, admin, expected_versions, response)


async def _save(
    session: AsyncSession,
    user: User,
    changes: UserUpdate,
    hasher: PasswordHasher,
    admin: User,
    expected_versions: frozenset[int] | None,
    response: Response,
) -> User:
    """What PATCH and PUT share: hash a new password, update, answer with the new ETag."""
    hashed_password = await hasher.hash(changes.password) if changes.password else None
    updated = await crud.update_user(
        session,
        user=user,
        changes=changes,
        hashed_password=hashed_password,
        actor_id=admin.id,
        expected_versions=expected_versions,
    )
    response.headers["ETag"] = etag(updated)
    return updated


def _check_read_only_fields(body: UserReplace, user: User) -> None:
    for name in ("id", "created_at"):
        sent = getattr(body, name)
        if sent is not None and sent != getattr(user, name):
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("body", name), "msg": "is read-only"}]
            )
    if body.updated_at is not None and body.updated_at != user.updated_at:
        raise ConflictError(
            "The user changed since it was read (updated_at differs): reload and retry."
        )


@router.delete(
    "/{user_id:int}",
    name="users-delete",
    response_model=UserPublic,
    responses=problem_responses(404, 409, 412),
)
async def delete_user(
    user: TargetUser, session: SessionDep, admin: AdminUser, expected_versions: ExpectedVersions
) -> User:
    """Delete a user (admin only) and return the deleted record."""
    await crud.delete_user(
        session, user=user, actor_id=admin.id, expected_versions=expected_versions
    )
    return user
