from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter
from sqlalchemy import ColumnElement
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.datastructures import QueryParams
from typing_extensions import TypedDict

from backend import crud
from backend.auth import accounts, export, links, sessions, sso, support
from backend.auth.api_keys import KeyCaller
from backend.auth.deps import (
    AdminCaller,
    AdminTargetUser,
    AdminUser,
    AnyCaller,
    CurrentCaller,
    CurrentUser,
    LoginClient,
    NotImpersonating,
    RecentCaller,
    SessionUser,
    VisibleUserId,
    sees_directory,
    user_not_found,
)
from backend.auth.models import (
    Accepted,
    AccountDeleted,
    AccountExport,
    LinkPurpose,
    LoginResponse,
    PasswordChange,
)
from backend.auth.sessions import Caller
from backend.auth.transport import TokenDeliveryDep
from backend.config import Settings
from backend.errors import ConflictError, DomainError, ForbiddenError, ProblemCode
from backend.http.deps import ClientIP, DbSession, ExpectedVersions, RuntimeDep, UserId
from backend.http.listing import ISODateTime, Resource, parse_list_query
from backend.http.paging import LIST_HEADERS, list_parameters, set_list_headers
from backend.http.problems import problem_responses
from backend.models import (
    BAN_FIELDS,
    BanRequest,
    EmailChange,
    Impersonator,
    User,
    UserCreate,
    UserInvite,
    UserListed,
    UserMe,
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
        "deletion_scheduled_at": ISODateTime,
    },
    text_fields=("email", "name"),
    searchable=True,
    flags=("banned",),
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
`last_login_before`, ...); `banned=true|false`: whether a ban is in force now. A
top-level key of `user_metadata` or `app_metadata` by equality: `user_metadata.team=blue`,
`app_metadata.plan=pro`, `user_metadata.level=3`, `user_metadata.beta=true` (a number or
boolean spelled as a string is sent quoted: `user_metadata.level="3"`), or
`filter={{"user_metadata.team":"blue"}}`. Without paging parameters, the dashboard
conventions return up to `MAX_PER_PAGE` records (1,000 by default), the most any request
may ask for. Accounts that never logged in sort as the oldest `last_login_at`. Accounts
whose deletion is scheduled: `deletion_scheduled_after=1970-01-01T00:00:00Z` (the others
have none, and match no range).

With `USERS_DIRECTORY=admins`, a plain user's list holds only their own account."""
# UserPublic's fields as a TypedDict, made from the model so that the two cannot differ:
# its serializer writes a plain row as UserPublic would, without a model per row.
UserPublicRow = TypedDict(  # type: ignore[misc]
    "UserPublicRow",
    {name: field.annotation for name, field in UserPublic.model_fields.items()},
)
UserListedRow = TypedDict(  # type: ignore[misc]
    "UserListedRow",
    {name: field.annotation for name, field in UserListed.model_fields.items()},
)
USER_ROW: TypeAdapter[Any] = TypeAdapter(UserPublicRow)
USER_ROWS: TypeAdapter[Any] = TypeAdapter(list[UserListedRow])
SIGN_IN_PARAMETER = {
    "name": "sign_in",
    "in": "query",
    "required": False,
    "schema": {"type": "string"},
    "description": "Admins only: users who can sign in with `password` or with this "
    "identity provider's slug.",
}
ETAG_HEADER = {"ETag": {"description": "The user's version", "schema": {"type": "string"}}}


router = APIRouter(prefix="/users", tags=["users"], responses=problem_responses(400, 401, 403, 422))


def etag(version: int) -> str:
    return f'"{version}"'


@router.get(
    "",
    name="users-list",
    response_model=list[UserListed],
    description=USERS_LIST_DESCRIPTION,
    openapi_extra={"parameters": [*list_parameters(USERS), SIGN_IN_PARAMETER]},
    responses={200: {"headers": LIST_HEADERS}},
)
async def list_users(
    request: Request, db: DbSession, runtime: RuntimeDep, user: CurrentUser
) -> Response:
    settings = runtime.settings
    params = request.query_params
    sign_in = params.get("sign_in")
    if sign_in is not None:
        params = QueryParams([(k, v) for k, v in params.multi_items() if k != "sign_in"])
    query = parse_list_query(params, USERS, max_per_page=settings.MAX_PER_PAGE)
    where: list[ColumnElement[bool]] = []
    if sign_in is not None:
        if user.role != UserRole.ADMIN:
            raise ForbiddenError(
                "Only admins may filter users by how they sign in.",
                code=ProblemCode.ADMIN_REQUIRED,
            )
        where.append(sso.sign_in_condition(settings, sign_in))
        query = replace(query, other_params=(*query.other_params, ("sign_in", sign_in)))
    if user.role != UserRole.ADMIN and any(f.field == "banned" for f in query.filters):
        # Who is banned is the business of admins (see _shown_to).
        raise ForbiddenError("Only admins may filter on bans.", code=ProblemCode.ADMIN_REQUIRED)
    only_id = user.id if not sees_directory(user, settings) else None
    rows, total = await crud.list_users(db, query=query, only_id=only_id, where=where)
    # Rows of UserPublic's fields, every value validated on its way into the database:
    # written as UserPublic writes them, without building and validating a model per
    # row again, the largest cost of an export page (bench/README.md).
    items = [_shown_to(user, row._asdict()) for row in rows]
    if user.role == UserRole.ADMIN:
        methods = await sso.sign_in_methods(db, user_ids=[item["id"] for item in items])
        for item in items:
            item["sign_in_methods"] = methods.get(item["id"], [])
    else:
        for item in items:
            item["sign_in_methods"] = None
    body = USER_ROWS.dump_json(items)
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


def _shown_to(viewer: User, public: dict[str, Any]) -> dict[str, Any]:
    """A user's public fields as this viewer may see them: a ban is the business of
    admins and of the user, not of the other users a directory shows it to."""
    if viewer.role != UserRole.ADMIN and public["id"] != viewer.id:
        public.update(dict.fromkeys(BAN_FIELDS))
    return public


@router.get("/me", name="users-me", response_model=UserMe)
async def read_me(caller: AnyCaller, db: DbSession) -> UserMe:
    """The authenticated user; `impersonated_by` names the admin when an admin acts as
    you in this session (support), null otherwise."""
    impersonator = None
    if isinstance(caller, Caller) and caller.user_session.impersonator_id is not None:
        admin = await crud.get_user(db, user_id=caller.user_session.impersonator_id)
        if admin is not None:  # its sessions go with it (the foreign key cascades)
            impersonator = Impersonator.model_validate(admin)
    return UserMe.model_validate(caller.user, update={"impersonated_by": impersonator})


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
    "/me/email",
    name="users-change-email",
    response_model=Accepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(403, 409, 429),
)
async def change_email(
    body: EmailChange, caller: RecentCaller, db: DbSession, runtime: RuntimeDep, ip: ClientIP
) -> Accepted:
    """Change your email address: a link to confirm it is mailed to the new address
    (`POST /auth/email/confirm` makes the change), a notice to the current one. Needs a
    recent proof (`POST /auth/reauthenticate`); 409 when the address is taken or looks
    like another account's."""
    if not runtime.settings.EMAIL_CHANGE_ENABLED:
        raise ForbiddenError(
            "Changing an email address is not available on this server (it needs mail).",
            code=ProblemCode.EMAIL_CHANGE_DISABLED,
        )
    limiter = runtime.rate_limiter
    await limiter.hit(limiter.mail_per_ip, "mail", ip)
    await limiter.hit(limiter.mail_per_email, "mail-email", body.email)
    link = await accounts.request_email_change(
        db, caller=caller, new_email=body.email, settings=runtime.settings
    )
    links.send_email_change(runtime.mailer, user=caller.user, new_email=body.email, link=link)
    return Accepted(
        detail="A link to confirm the new address is on its way to it; your address changes "
        "once it is followed."
    )


@router.delete(
    "/me",
    name="users-delete-me",
    response_model=AccountDeleted,
    responses=problem_responses(409),
)
async def delete_me(caller: RecentCaller, db: DbSession, runtime: RuntimeDep) -> AccountDeleted:
    """Delete your account, its sessions, API keys and links. Needs a recent proof
    (`POST /auth/reauthenticate`); 409 `last_admin` for the last active admin. With
    ACCOUNT_DELETION=grace it is scheduled instead: every session and key ends now, and a
    login before `deletion_scheduled_at` keeps the account."""
    settings = runtime.settings
    when = await accounts.delete_own_account(db, caller=caller, settings=settings)
    if when is None:
        return AccountDeleted(detail="Your account was deleted.", deletion_scheduled_at=None)
    return AccountDeleted(
        detail=f"Your account will be deleted in {settings.ACCOUNT_DELETION_GRACE_DAYS} days; "
        "log in before then to keep it.",
        deletion_scheduled_at=when,
    )


@router.get(
    "/me/export",
    name="users-export-me",
    response_model=AccountExport,
    responses={
        200: {
            "headers": {
                "Content-Disposition": {
                    "description": "attachment, with a file name",
                    "schema": {"type": "string"},
                }
            }
        }
    },
)
async def export_me(caller: CurrentCaller, db: DbSession) -> Response:
    """Everything the server keeps about your account, as a JSON file: the profile,
    sessions, API keys (never a secret or hash) and the audit events about it. A login's
    token only: an API key, made for a script's narrower task, cannot take it all."""
    document = await export.export_account(db, user=caller.user)
    disposition = f'attachment; filename="account-{caller.user.id}-export.json"'
    return Response(
        document.model_dump_json(),
        media_type="application/json",
        headers={"Content-Disposition": disposition},
    )


@router.post(
    "/me/password",
    name="users-change-password",
    dependencies=[NotImpersonating],
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
async def read_user(user_id: VisibleUserId, db: DbSession, viewer: CurrentUser) -> Response:
    """One user by id, with its version in `ETag` (send it back in `If-Match` to edit).
    With `USERS_DIRECTORY=admins`, a plain user may read only their own (403)."""
    row = await crud.get_public_user(db, user_id=user_id)
    if row is None:
        raise user_not_found(user_id)
    public = _shown_to(viewer, row._asdict())
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
    await accounts.delete_user(
        db, user=user, actor_id=admin.id, expected_versions=expected_versions
    )
    return user


@router.post(
    "/{user_id:digits}/ban",
    name="users-ban",
    response_model=UserPublic,
    responses={**problem_responses(404, 409), 200: {"headers": ETAG_HEADER}},
)
async def ban_user(
    body: BanRequest, user: AdminTargetUser, db: DbSession, admin: AdminUser, response: Response
) -> User:
    """Ban a user (admin only), until `until` or, without it, until lifted. Their
    sessions and API keys end now; until the ban ends they get 403 `banned` (with
    `banned_until`) at login, at refresh and on every request. Banning again replaces
    the reason and the end. 409: oneself, or the last admin who could act."""
    assert admin.id is not None
    banned = await support.ban(db, user=user, request=body, actor_id=admin.id)
    response.headers["ETag"] = etag(banned.version)
    return banned


@router.delete(
    "/{user_id:digits}/ban",
    name="users-unban",
    response_model=UserPublic,
    responses={**problem_responses(404, 409), 200: {"headers": ETAG_HEADER}},
)
async def unban_user(
    user: AdminTargetUser, db: DbSession, admin: AdminUser, response: Response
) -> User:
    """Lift a user's ban, in force or lapsed (admin only): the user may log in again.
    409 `not_banned` when there is none."""
    assert admin.id is not None
    lifted = await support.unban(db, user=user, actor_id=admin.id)
    response.headers["ETag"] = etag(lifted.version)
    return lifted


@router.post(
    "/{user_id:digits}/impersonate",
    name="users-impersonate",
    response_model=LoginResponse,
    responses=problem_responses(404),
)
async def impersonate_user(
    user_id: UserId,
    _admin: AdminUser,
    caller: RecentCaller,
    db: DbSession,
    runtime: RuntimeDep,
    client: LoginClient,
) -> LoginResponse:
    """Act as a user, for support (admin only, with a recent login or
    `POST /auth/reauthenticate`): a new session of that user, for
    `IMPERSONATION_MINUTES` (60 at most; a refresh never extends it), its tokens
    marked (`imp`), shown in their `GET /users/me` (`impersonated_by`) and session list.
    It cannot change their password, email, factors, keys or sessions (403
    `impersonation_forbidden`), and each of its requests is audited with both ids.
    The tokens are in this answer's body, never in a cookie: your own session stays as
    it is. End it with `POST /auth/impersonation/stop`. 403 `impersonation_refused` for
    an admin (oneself included), a deactivated or a banned user."""
    return await sessions.start_impersonation(
        db, admin=caller.user, user_id=user_id, client=client, settings=runtime.settings
    )
