from collections.abc import Sequence

from fastapi import APIRouter, Request, Response
from pydantic import TypeAdapter

from backend import crud
from backend.deps import AdminUser, ServicesDep, SessionDep
from backend.listing import (
    LIST_HEADERS,
    ISODateTime,
    Resource,
    list_parameters,
    parse_list_query,
    set_list_headers,
)
from backend.models import AuditAction, AuditEvent, AuditEventPublic
from backend.problems import problem_responses

AUDIT_EVENTS = Resource(
    name="audit",
    fields={
        "id": TypeAdapter(int),
        "created_at": ISODateTime,
        "actor_id": TypeAdapter(int),
        "target_id": TypeAdapter(int),
        "action": TypeAdapter(AuditAction),
    },
    repeatable=("id", "actor_id", "target_id", "action"),
)

router = APIRouter(prefix="/audit", tags=["audit"], responses=problem_responses(401, 403, 422))


@router.get(
    "",
    name="audit-list",
    response_model=list[AuditEventPublic],
    openapi_extra={"parameters": list_parameters(AUDIT_EVENTS)},
    responses={200: {"headers": LIST_HEADERS}},
)
async def list_audit_events(
    request: Request,
    response: Response,
    session: SessionDep,
    services: ServicesDep,
    _admin: AdminUser,
) -> Sequence[AuditEvent]:
    """Changes made to accounts (admin only), oldest first unless sorted: filter by
    `actor_id`, `target_id`, `action`, `created_after`/`created_before`, with the same
    paging, sorting and dashboard conventions as the users list."""
    query = parse_list_query(
        request.query_params, AUDIT_EVENTS, max_per_page=services.settings.MAX_PER_PAGE
    )
    events, total = await crud.list_audit_events(session, query=query)
    set_list_headers(request, response, AUDIT_EVENTS, query, len(events), total)
    return events
