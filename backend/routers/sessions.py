from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import StringConstraints, TypeAdapter

from backend import crud, sessions
from backend.deps import (
    AdminTargetUser,
    AdminUser,
    CurrentCaller,
    ServicesDep,
    SessionDep,
    SessionId,
    get_session_caller,
)
from backend.errors import NotFoundError
from backend.listing import (
    LIST_HEADERS,
    ISODateTime,
    ListQuery,
    Resource,
    list_parameters,
    parse_list_query,
    set_list_headers,
)
from backend.models import (
    SESSION_ID_PATTERN,
    SessionEndReason,
    SessionPublic,
    User,
    UserSession,
)
from backend.problems import problem_responses

SESSIONS = Resource(
    name="sessions",
    fields={
        # The id's own pattern: the schema says which filters can match (no NUL, say).
        "id": TypeAdapter(Annotated[str, StringConstraints(pattern=SESSION_ID_PATTERN)]),
        "created_at": ISODateTime,
        "last_used_at": ISODateTime,
        "expires_at": ISODateTime,
    },
)
NEWEST_FIRST = (("last_used_at", True),)

# No API key reaches a session, its owner's or, with an admin's key, anyone's.
router = APIRouter(
    prefix="/users",
    tags=["sessions"],
    responses=problem_responses(400, 401, 403, 422),
    dependencies=[Depends(get_session_caller)],
)


def _public(user_sessions: list[UserSession], current_id: str | None) -> list[SessionPublic]:
    return [
        SessionPublic.model_validate(
            user_session, update={"current": user_session.id == current_id}
        )
        for user_session in user_sessions
    ]


async def _list(
    request: Request, response: Response, session: SessionDep, services: ServicesDep, user: User
) -> list[UserSession]:
    query = parse_list_query(request.query_params, SESSIONS)
    if not query.sort:
        query = ListQuery(**{**query.__dict__, "sort": NEWEST_FIRST})
    assert user.id is not None
    found, total = await crud.list_live_sessions(
        session, user_id=user.id, query=query, idle_days=services.settings.SESSION_IDLE_DAYS
    )
    set_list_headers(request, response, SESSIONS, query, len(found), total)
    return list(found)


@router.get(
    "/me/sessions",
    name="sessions-list-mine",
    response_model=list[SessionPublic],
    openapi_extra={"parameters": list_parameters(SESSIONS)},
    responses={200: {"headers": LIST_HEADERS}},
)
async def list_my_sessions(
    request: Request,
    response: Response,
    session: SessionDep,
    services: ServicesDep,
    caller: CurrentCaller,
) -> list[SessionPublic]:
    """Your live sessions, most recently used first; `current` marks this token's."""
    found = await _list(request, response, session, services, caller.user)
    return _public(found, caller.user_session.id)


@router.delete(
    "/me/sessions/{session_id}",
    name="sessions-end-mine",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404),
)
async def end_my_session(
    session_id: SessionId, session: SessionDep, services: ServicesDep, caller: CurrentCaller
) -> None:
    """End one of your sessions (this one too, if you name it): its tokens stop working."""
    ended = await sessions.end(
        session,
        user=caller.user,
        session_id=session_id,
        reason=SessionEndReason.LOGOUT,
        settings=services.settings,
    )
    if not ended:
        raise NotFoundError(f"You have no live session {session_id}.")


@router.get(
    "/{user_id:digits}/sessions",
    name="sessions-list",
    response_model=list[SessionPublic],
    openapi_extra={"parameters": list_parameters(SESSIONS)},
    responses={**problem_responses(404), 200: {"headers": LIST_HEADERS}},
)
async def list_sessions(
    request: Request,
    response: Response,
    session: SessionDep,
    services: ServicesDep,
    user: AdminTargetUser,
) -> list[SessionPublic]:
    """A user's live sessions (admin only), most recently used first."""
    found = await _list(request, response, session, services, user)
    return _public(found, None)


@router.delete(
    "/{user_id:digits}/sessions/{session_id}",
    name="sessions-end",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404),
)
async def end_session(
    session_id: SessionId,
    session: SessionDep,
    services: ServicesDep,
    user: AdminTargetUser,
    admin: AdminUser,
) -> None:
    """End one session of a user (admin only), recorded in the audit trail."""
    ended = await sessions.end(
        session,
        user=user,
        session_id=session_id,
        reason=SessionEndReason.ADMIN,
        settings=services.settings,
        actor_id=admin.id,
        audit=True,
    )
    if not ended:
        raise NotFoundError(f"This user has no live session {session_id}.")


@router.delete(
    "/{user_id:digits}/sessions",
    name="sessions-end-all",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404),
)
async def end_all_sessions(session: SessionDep, user: AdminTargetUser, admin: AdminUser) -> None:
    """End every session of a user (admin only), recorded in the audit trail."""
    await sessions.end_all(
        session, user=user, reason=SessionEndReason.ADMIN, actor_id=admin.id, audit=True
    )
