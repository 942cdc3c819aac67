from collections.abc import Sequence

from fastapi import APIRouter, Request, Response

from backend import crud
from backend.deps import AdminUser, SessionDep
from backend.errors import problem_responses
from backend.listing import (
    AUDIT_EVENTS,
    LIST_HEADERS,
    list_parameters,
    parse_list_query,
    set_list_headers,
)
from backend.models import AuditEvent, AuditEventPublic

router = APIRouter(prefix="/audit", tags=["audit"], responses=problem_responses(401, 403, 422))


@router.get(
    "",
    name="audit-list",
    response_model=list[AuditEventPublic],
    openapi_extra={"parameters": list_parameters(AUDIT_EVENTS)},
    responses={200: {"headers": LIST_HEADERS}},
)
async def list_audit_events(
    request: Request, response: Response, session: SessionDep, _admin: AdminUser
) -> Sequence[AuditEvent]:
    """Changes made to accounts (admin only), oldest first unless sorted: filter by
    `actor_id`, `target_id`, `action`, `created_after`/`created_before`, with the same
    paging, sorting and dashboard conventions as the users list."""
    query = parse_list_query(request.query_params, AUDIT_EVENTS)
    events, total = await crud.list_audit_events(session, query=query)
    set_list_headers(request, response, AUDIT_EVENTS, query, len(events), total)
    return events
