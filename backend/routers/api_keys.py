from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import TypeAdapter

from backend.auth import api_keys
from backend.auth.deps import (
    AdminTargetUser,
    AdminUser,
    NotImpersonating,
    SessionUser,
    get_session_caller,
)
from backend.auth.models import ApiKeyCreate, ApiKeyCreated, ApiKeyEndReason, ApiKeyPublic
from backend.http.deps import ApiKeyId, DbSession, RuntimeDep
from backend.http.listing import ISODateTime, ListQuery, Resource, parse_list_query
from backend.http.paging import LIST_HEADERS, list_parameters, set_list_headers
from backend.http.problems import problem_responses
from backend.models import User

API_KEYS = Resource(
    name="tokens",
    fields={
        "id": TypeAdapter(int),
        "created_at": ISODateTime,
        "expires_at": ISODateTime,
        "last_used_at": ISODateTime,
    },
)
NEWEST_FIRST = (("created_at", True),)

# Keys are managed with a login's access token: an API key gets 403 on every route here,
# so that no key mints or revokes keys.
router = APIRouter(
    prefix="/users",
    tags=["tokens"],
    responses=problem_responses(400, 401, 403, 422),
    dependencies=[Depends(get_session_caller), NotImpersonating],
)


async def _list(
    request: Request, response: Response, db: DbSession, runtime: RuntimeDep, user: User
) -> list[ApiKeyPublic]:
    query = parse_list_query(
        request.query_params, API_KEYS, max_per_page=runtime.settings.MAX_PER_PAGE
    )
    if not query.sort:
        query = ListQuery(**{**query.__dict__, "sort": NEWEST_FIRST})
    found, total = await api_keys.list_live(db, user_id=user.id, query=query)
    set_list_headers(request, response, API_KEYS, query, len(found), total)
    return [ApiKeyPublic.model_validate(api_key) for api_key in found]


@router.post(
    "/me/tokens",
    name="tokens-create",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
)
async def create_api_key(body: ApiKeyCreate, user: SessionUser, db: DbSession) -> ApiKeyCreated:
    """Create a personal API key for a script. `secret` is in this answer only: store it
    now. Send it as `Authorization: Bearer uak_...`; it acts with your role, `read`
    allowing only GET and HEAD."""
    return await api_keys.create(db, user=user, data=body, actor_id=user.id)


@router.get(
    "/me/tokens",
    name="tokens-list-mine",
    response_model=list[ApiKeyPublic],
    openapi_extra={"parameters": list_parameters(API_KEYS)},
    responses={200: {"headers": LIST_HEADERS}},
)
async def list_my_api_keys(
    request: Request,
    response: Response,
    db: DbSession,
    runtime: RuntimeDep,
    user: SessionUser,
) -> list[ApiKeyPublic]:
    """Your API keys that are not revoked (expired ones too), newest first; never their
    secrets."""
    return await _list(request, response, db, runtime, user)


@router.delete(
    "/me/tokens/{token_id:digits}",
    name="tokens-revoke-mine",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404),
)
async def revoke_my_api_key(token_id: ApiKeyId, user: SessionUser, db: DbSession) -> None:
    """Revoke one of your API keys: it stops working at once."""
    await api_keys.revoke(
        db, key_id=token_id, user_id=user.id, reason=ApiKeyEndReason.REVOKED, actor_id=user.id
    )


@router.get(
    "/{user_id:digits}/tokens",
    name="tokens-list",
    response_model=list[ApiKeyPublic],
    openapi_extra={"parameters": list_parameters(API_KEYS)},
    responses={**problem_responses(404), 200: {"headers": LIST_HEADERS}},
)
async def list_api_keys(
    request: Request,
    response: Response,
    db: DbSession,
    runtime: RuntimeDep,
    user: AdminTargetUser,
) -> list[ApiKeyPublic]:
    """A user's API keys that are not revoked (admin only), newest first."""
    return await _list(request, response, db, runtime, user)


@router.delete(
    "/{user_id:digits}/tokens/{token_id:digits}",
    name="tokens-revoke",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404),
)
async def revoke_api_key(
    token_id: ApiKeyId, db: DbSession, user: AdminTargetUser, admin: AdminUser
) -> None:
    """Revoke one of a user's API keys (admin only), recorded in the audit trail."""
    await api_keys.revoke(
        db, key_id=token_id, user_id=user.id, reason=ApiKeyEndReason.ADMIN, actor_id=admin.id
    )
