from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import StringConstraints, TypeAdapter

from backend.auth import sessions
from backend.auth.deps import (
    AdminTargetUser,
    AdminUser,
    CurrentCaller,
    NotImpersonating,
    SessionId,
    get_session_caller,
)
from backend.auth.models import SESSION_ID_PATTERN, SessionEndReason, SessionPublic, UserSession
from backend.errors import NotFoundError, ProblemCode
from backend.http.deps import DbSession, RuntimeDep
from backend.http.listing import ISODateTime, ListQuery, Resource, parse_list_query
from backend.http.paging import LIST_HEADERS, list_parameters, set_list_headers
from backend.http.problems import problem_responses
from backend.models import User

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
    dependencies=[Depends(get_session_caller), NotImpersonating],
)


def _public(user_sessions: list[UserSession], current_id: str | None) -> list[SessionPublic]:
    return [
        SessionPublic.model_validate(
            user_session, update={"current": user_session.id == current_id}
        )
        for user_session in user_sessions
    ]


async def _list(
    request: Request, response: Response, db: DbSession, runtime: RuntimeDep, user: User
) -> list[UserSession]:
    query = parse_list_query(
        request.query_params, SESSIONS, max_per_page=runtime.settings.MAX_PER_PAGE
    )
    if not query.sort:
        query = ListQuery(**{**query.__dict__, "sort": NEWEST_FIRST})
    assert user.id is not None
    found, total = await sessions.list_live(
        db, user_id=user.id, query=query, idle_days=runtime.settings.SESSION_IDLE_DAYS
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
    db: DbSession,
    runtime: RuntimeDep,
    caller: CurrentCaller,
) -> list[SessionPublic]:
    """Your live sessions, most recently used first; `current` marks this token's."""
    found = await _list(request, response, db, runtime, caller.user)
    return _public(found, caller.user_session.id)


@router.delete(
    "/me/sessions/{session_id}",
    name="sessions-end-mine",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404),
)
async def end_my_session(
    session_id: SessionId, db: DbSession, runtime: RuntimeDep, caller: CurrentCaller
) -> None:
    """End one of your sessions (this one too, if you name it): its tokens stop working."""
    ended = await sessions.end(
        db,
        user=caller.user,
        session_id=session_id,
        reason=SessionEndReason.LOGOUT,
        settings=runtime.settings,
    )
    if not ended:
        raise NotFoundError(
            f"You have no live session {session_id}.", code=ProblemCode.SESSION_NOT_FOUND
        )


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
    db: DbSession,
    runtime: RuntimeDep,
    user: AdminTargetUser,
) -> list[SessionPublic]:
    """A user's live sessions (admin only), most recently used first."""
    found = await _list(request, response, db, runtime, user)
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
    db: DbSession,
    runtime: RuntimeDep,
    user: AdminTargetUser,
    admin: AdminUser,
) -> None:
    """End one session of a user (admin only), recorded in the audit trail."""
    ended = await sessions.end(
        db,
        user=user,
        session_id=session_id,
        reason=SessionEndReason.ADMIN,
        settings=runtime.settings,
        actor_id=admin.id,
        audit=True,
    )
    if not ended:
        raise NotFoundError(
            f"This user has no live session {session_id}.", code=ProblemCode.SESSION_NOT_FOUND
        )


@router.delete(
    "/{user_id:digits}/sessions",
    name="sessions-end-all",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404),
)
async def end_all_sessions(db: DbSession, user: AdminTargetUser, admin: AdminUser) -> None:
    """End every session of a user (admin only), recorded in the audit trail."""
    await sessions.end_all(
        db, user=user, reason=SessionEndReason.ADMIN, actor_id=admin.id, audit=True
    )
