from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter
from sqlmodel.ext.asyncio.session import AsyncSession
from typing_extensions import TypedDict

from backend import crud
from backend.auth import accounts, links
from backend.auth.api_keys import KeyCaller
from backend.auth.deps import (
    AdminCaller,
    AdminTargetUser,
    AdminUser,
    CurrentUser,
    LoginClient,
    SessionUser,
    VisibleUserId,
    sees_directory,
    user_not_found,
)
from backend.auth.models import Accepted, LinkPurpose, LoginResponse, PasswordChange
from backend.auth.sessions import Caller
from backend.auth.transport import TokenDeliveryDep
from backend.config import Settings
from backend.errors import ConflictError, DomainError, ForbiddenError, ProblemCode
from backend.http.deps import ClientIP, DbSession, ExpectedVersions, RuntimeDep
from backend.http.listing import ISODateTime, Resource, parse_list_query
from backend.http.paging import LIST_HEADERS, list_parameters, set_list_headers
from backend.http.problems import problem_responses
from backend.models import (
    User,
    UserCreate,
    UserInvite,
    UserPublic,
    UserReplace,
    UserRole,
    UserUpdate,
    UserUpdateMe,
)
from backend.runtime import Runtime

USERS = Resource(
    name="users",
    fields={
        "id": TypeAdapter(int),
        "email": TypeAdapter(str),
        "name": TypeAdapter(str),
        "role": TypeAdapter(UserRole),
        "is_active": TypeAdapter(bool),
        "is_verified": TypeAdapter(bool),
        "created_at": ISODateTime,
        "updated_at": ISODateTime,
        "last_login_at": ISODateTime,
    },
    text_fields=("email", "name"),
    searchable=True,
    json_fields=("user_metadata", "app_metadata"),
)
USERS_LIST_DESCRIPTION = f"""A page of users, with the total in `X-Total-Count`, a `Content-Range`
(`users 0-9/42`) and a `Link` header (first, prev, next, last).

Besides the parameters below, the stock data providers of react-admin and Refine work
unchanged, one convention per request:

- json-server / Refine: `_start`, `_end` (exclusive), `_sort`, `_order` (comma lists),
  `field=value`, `field_like`, `field_ne`, `field_gte`, `field_lte`, `q`;
- react-admin simple-rest: `range=[0,24]` (inclusive), `sort=["name","ASC"]`,
  `filter={{"q":"bob","role":"user","id":[1,2]}}`.

Filterable fields: {", ".join(USERS.fields)}; dates also as ranges (`created_after`,
`last_login_before`, ...). A top-level key of `user_metadata` or `app_metadata` by
equality: `user_metadata.team=blue`, `app_metadata.plan=pro`, `user_metadata.level=3`,
`user_metadata.beta=true` (a number or boolean spelled as a string is sent quoted:
`user_metadata.level="3"`), or `filter={{"user_metadata.team":"blue"}}`. Without paging
parameters, the dashboard conventions return up to `MAX_PER_PAGE` records (1,000 by
default), the most any request may ask for.
Accounts that never logged in sort as the oldest `last_login_at`.

With `USERS_DIRECTORY=admins`, a plain user's list holds only their own account."""
# UserPublic's fields as a TypedDict, made from the model so that the two cannot differ:
# its serializer writes a plain row as UserPublic would, without a model per row.
UserPublicRow = TypedDict(  # type: ignore[misc]
    "UserPublicRow",
    {name: field.annotation for name, field in UserPublic.model_fields.items()},
)
USER_ROW: TypeAdapter[Any] = TypeAdapter(UserPublicRow)
USER_ROWS: TypeAdapter[Any] = TypeAdapter(list[UserPublicRow])
ETAG_HEADER = {"ETag": {"description": "The user's version", "schema": {"type": "string"}}}


router = APIRouter(prefix="/users", tags=["users"], responses=problem_responses(400, 401, 403, 422))


def etag(version: int) -> str:
    return f'"{version}"'


@router.get(
    "",
    name="users-list",
    response_model=list[UserPublic],
    description=USERS_LIST_DESCRIPTION,
    openapi_extra={"parameters": list_parameters(USERS)},
    responses={200: {"headers": LIST_HEADERS}},
)
async def list_users(
    request: Request, db: DbSession, runtime: RuntimeDep, user: CurrentUser
) -> Response:
    settings = runtime.settings
    query = parse_list_query(request.query_params, USERS, max_per_page=settings.MAX_PER_PAGE)
    only_id = user.id if not sees_directory(user, settings) else None
    rows, total = await crud.list_users(db, query=query, only_id=only_id)
    # Rows of UserPublic's fields, every value validated on its way into the database:
    # written as UserPublic writes them, without building and validating a model per
    # row again, the largest cost of an export page (bench/README.md).
    body = USER_ROWS.dump_json([row._asdict() for row in rows])
    response = Response(body, media_type="application/json")
    set_list_headers(request, response, USERS, query, len(rows), total)
    return response


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
    db: DbSession,
    admin: AdminUser,
    runtime: RuntimeDep,
) -> User:
    """Create a user (admin only)."""
    user = await accounts.create_user(
        db, data=body, hasher=runtime.password_hasher, audit=True, actor_id=admin.id
    )
    response.headers["ETag"] = etag(user.version)
    response.headers["Location"] = str(request.url_for("users-get", user_id=user.id))
    return user


@router.post(
    "/invite",
    name="users-invite",
    response_model=UserPublic,
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(409),
)
async def invite_user(
    body: UserInvite,
    request: Request,
    response: Response,
    db: DbSession,
    admin: AdminUser,
    runtime: RuntimeDep,
) -> User:
    """Create a user without a password and mail them an invitation link (admin only).
    The account is inactive until its owner chooses a password with the link
    (`POST /auth/password/set`)."""
    settings = runtime.settings
    _check_invitations(settings)
    user, link = await accounts.invite_user(db, data=body, settings=settings, actor_id=admin.id)
    links.send_link(runtime.mailer, purpose=LinkPurpose.INVITE, user=user, link=link)
    response.headers["ETag"] = etag(user.version)
    response.headers["Location"] = str(request.url_for("users-get", user_id=user.id))
    return user


@router.post(
    "/{user_id:digits}/invite",
    name="users-reinvite",
    response_model=Accepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(404, 409),
)
async def reinvite_user(
    user: AdminTargetUser, db: DbSession, admin: AdminUser, runtime: RuntimeDep
) -> Accepted:
    """Mail a new invitation link (admin only); the previous one stops working. 409 once
    the invitation was accepted."""
    settings = runtime.settings
    _check_invitations(settings)
    link = await accounts.reinvite_user(db, user=user, settings=settings, actor_id=admin.id)
    links.send_link(runtime.mailer, purpose=LinkPurpose.INVITE, user=user, link=link)
    return Accepted(detail="A new invitation link is on its way; the previous one no longer works.")


def _check_invitations(settings: Settings) -> None:
    if not settings.INVITATIONS_ENABLED:
        raise ForbiddenError(
            "Invitations by email are not available on this server.",
            code=ProblemCode.INVITATIONS_DISABLED,
        )


@router.get("/me", name="users-me", response_model=UserPublic)
async def read_me(user: CurrentUser) -> User:
    """The authenticated user."""
    return user


@router.patch(
    "/me",
    name="users-update-me",
    response_model=UserPublic,
    responses={**problem_responses(412), 200: {"headers": ETAG_HEADER}},
)
async def update_me(
    body: UserUpdateMe,
    user: CurrentUser,
    db: DbSession,
    runtime: RuntimeDep,
    expected_versions: ExpectedVersions,
    response: Response,
) -> User:
    """Change your own name or `user_metadata` (replaced whole). `app_metadata` is for
    admins only (403 for anyone else). With `If-Match`, an account changed meanwhile
    gives 412."""
    if body.app_metadata is not None and user.role != UserRole.ADMIN:
        raise ForbiddenError(
            "app_metadata is set by admins only; keep your own data in user_metadata.",
            code=ProblemCode.ADMIN_REQUIRED,
        )
    changes = UserUpdate.model_validate(body.model_dump(exclude_unset=True))
    updated = await accounts.update_user(
        db,
        user=user,
        changes=changes,
        hasher=runtime.password_hasher,
        actor_id=user.id,
        expected_versions=expected_versions,
    )
    response.headers["ETag"] = etag(updated.version)
    return updated


@router.post(
    "/me/password",
    name="users-change-password",
    response_model=LoginResponse,
    responses=problem_responses(400, 403, 429),
)
async def change_password(
    body: PasswordChange,
    user: SessionUser,
    db: DbSession,
    runtime: RuntimeDep,
    ip: ClientIP,
    client: LoginClient,
    delivery: TokenDeliveryDep,
) -> LoginResponse:
    """Change your password. Every session ends; this call returns a new session's pair."""
    limiter = runtime.rate_limiter
    await limiter.hit(limiter.login, "login", ip, user.email)
    # Wrong current passwords spend the account's budget of failed logins, from any
    # address: a stolen access token is no way to guess the password at leisure.
    await limiter.check(limiter.login_failures_per_account, "login-account", user.email)
    try:
        tokens = await accounts.change_password(
            db,
            user=user,
            current_password=body.current_password,
            new_password=body.new_password,
            hasher=runtime.password_hasher,
            settings=runtime.settings,
            client=client,
        )
    except DomainError as error:
        if error.code is ProblemCode.PASSWORD_INCORRECT:
            await limiter.count(limiter.login_failures_per_account, "login-account", user.email)
        raise
    return delivery.send(tokens)


@router.get(
    "/{user_id:digits}",
    name="users-get",
    response_model=UserPublic,
    responses={**problem_responses(404), 200: {"headers": ETAG_HEADER}},
)
async def read_user(user_id: VisibleUserId, db: DbSession) -> Response:
    """One user by id, with its version in `ETag` (send it back in `If-Match` to edit).
    With `USERS_DIRECTORY=admins`, a plain user may read only their own (403)."""
    row = await crud.get_public_user(db, user_id=user_id)
    if row is None:
        raise user_not_found(user_id)
    public = row._asdict()
    headers = {"ETag": etag(public.pop("version"))}
    return Response(USER_ROW.dump_json(public), media_type="application/json", headers=headers)


@router.patch(
    "/{user_id:digits}",
    name="users-update",
    response_model=UserPublic,
    responses={**problem_responses(404, 409, 412), 200: {"headers": ETAG_HEADER}},
)
async def update_user(
    body: UserUpdate,
    user: AdminTargetUser,
    db: DbSession,
    caller: AdminCaller,
    runtime: RuntimeDep,
    expected_versions: ExpectedVersions,
    response: Response,
) -> User:
    """Change the fields sent (admin only); role, deactivation and password changes
    revoke the user's tokens. With `If-Match`, a user changed meanwhile gives 412."""
    return await _update(
        db, runtime, response, user=user, changes=body, caller=caller, expected=expected_versions
    )


@router.put(
    "/{user_id:digits}",
    name="users-replace",
    response_model=UserPublic,
    responses={**problem_responses(404, 409, 412), 200: {"headers": ETAG_HEADER}},
)
async def replace_user(
    body: UserReplace,
    user: AdminTargetUser,
    db: DbSession,
    caller: AdminCaller,
    runtime: RuntimeDep,
    expected_versions: ExpectedVersions,
    response: Response,
) -> User:
    """Save a whole record as read (admin only): the rules of PATCH apply; `id`,
    `created_at` and `updated_at` are read-only and, when sent, must be unchanged."""
    _check_read_only_fields(body, user)
    return await _update(
        db,
        runtime,
        response,
        user=user,
        changes=body.changes(),
        caller=caller,
        expected=expected_versions,
    )


async def _update(
    db: AsyncSession,
    runtime: Runtime,
    response: Response,
    *,
    user: User,
    changes: UserUpdate,
    caller: Caller | KeyCaller,
    expected: frozenset[int] | None,
) -> User:
    updated = await accounts.update_user(
        db,
        user=user,
        changes=changes,
        hasher=runtime.password_hasher,
        actor_id=caller.user.id,
        by_api_key=isinstance(caller, KeyCaller),
        expected_versions=expected,
    )
    response.headers["ETag"] = etag(updated.version)
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
            "The user changed since it was read (updated_at differs): reload and retry.",
            code=ProblemCode.STALE_RECORD,
        )


@router.delete(
    "/{user_id:digits}",
    name="users-delete",
    response_model=UserPublic,
    responses=problem_responses(404, 409, 412),
)
async def delete_user(
    user: AdminTargetUser,
    db: DbSession,
    admin: AdminUser,
    expected_versions: ExpectedVersions,
) -> User:
    """Delete a user (admin only) and return the deleted record."""
    await crud.delete_user(db, user=user, actor_id=admin.id, expected_versions=expected_versions)
    return user
