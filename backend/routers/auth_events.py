from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import StringConstraints, TypeAdapter

from backend import crud
from backend.auth.deps import AdminUser, CurrentUser
from backend.http.deps import DbSession, RuntimeDep
from backend.http.listing import ISODateTime, ListQuery, Resource, parse_list_query
from backend.http.paging import LIST_HEADERS, list_parameters, set_list_headers
from backend.http.problems import problem_responses
from backend.models import (
    IP_ADDRESS_MAX_CHARS,
    AuthEvent,
    AuthEventKind,
    AuthEventPublic,
)
from backend.rules import EMAIL_MAX_CHARS
from backend.runtime import Runtime

IP_ADDRESS = TypeAdapter(Annotated[str, StringConstraints(max_length=IP_ADDRESS_MAX_CHARS)])
MY_SIGN_INS = Resource(
    name="sign-ins",
    fields={
        "id": TypeAdapter(int),
        "created_at": ISODateTime,
        "kind": TypeAdapter(AuthEventKind),
        "ip_address": TypeAdapter(
            Annotated[str, StringConstraints(max_length=IP_ADDRESS_MAX_CHARS)]
        ),
    },
    repeatable=("id", "kind", "ip_address"),
)
AUTH_EVENTS = Resource(
    name="auth-events",
    fields={
        **MY_SIGN_INS.fields,
        "user_id": TypeAdapter(int),
        "email": TypeAdapter(Annotated[str, StringConstraints(max_length=EMAIL_MAX_CHARS)]),
        "reason": TypeAdapter(Annotated[str, StringConstraints(max_length=64)]),
    },
    text_fields=("email", "ip_address"),
    repeatable=("id", "user_id", "kind", "ip_address"),
)
# The order they were written in: newest first.
NEWEST_FIRST = (("id", True),)

router = APIRouter(tags=["signins"], responses=problem_responses(400, 401, 403, 422))


async def _page(
    request: Request,
    response: Response,
    db: DbSession,
    runtime: Runtime,
    resource: Resource,
    user_id: int | None = None,
) -> Sequence[AuthEvent]:
    query = parse_list_query(
        request.query_params, resource, max_per_page=runtime.settings.MAX_PER_PAGE
    )
    if not query.sort:
        query = ListQuery(**{**query.__dict__, "sort": NEWEST_FIRST})
    # The events this process still holds are written first: what happened before the
    # request is in its answer.
    await runtime.auth_events.flush()
    events, total = await crud.list_auth_events(db, query=query, user_id=user_id)
    set_list_headers(request, response, resource, query, len(events), total)
    return events


@router.get(
    "/auth-events",
    name="signins-list",
    response_model=list[AuthEventPublic],
    openapi_extra={"parameters": list_parameters(AUTH_EVENTS)},
    responses={200: {"headers": LIST_HEADERS}},
)
async def list_auth_events(
    request: Request, response: Response, db: DbSession, runtime: RuntimeDep, _admin: AdminUser
) -> Sequence[AuthEvent]:
    """The sign-in history of every account (admin only), newest first unless sorted:
    logins and failed logins, failed refreshes, logouts, registrations and rate-limit
    refusals of the auth routes. Filter by `user_id`, `kind`, `ip_address`, `email`,
    `reason`, `created_after`/`created_before`, with the same paging, sorting and
    dashboard conventions as the users list. Kept `AUTH_EVENTS_RETENTION_DAYS`."""
    return await _page(request, response, db, runtime, AUTH_EVENTS)


@router.get(
    "/users/me/sign-ins",
    name="signins-mine",
    response_model=list[AuthEventPublic],
    openapi_extra={"parameters": list_parameters(MY_SIGN_INS)},
    responses={200: {"headers": LIST_HEADERS}},
)
async def list_my_sign_ins(
    request: Request, response: Response, db: DbSession, runtime: RuntimeDep, user: CurrentUser
) -> Sequence[AuthEvent]:
    """Your own sign-in history, newest first: logins, failed logins with your email,
    failed refreshes of your sessions, logouts and your registration. Filter by `kind`,
    `ip_address`, `created_after`/`created_before`."""
    return await _page(request, response, db, runtime, MY_SIGN_INS, user_id=user.id)
