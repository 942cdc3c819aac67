from collections.abc import Sequence

from fastapi import APIRouter, Request, Response
from pydantic import TypeAdapter

from backend import crud
from backend.auth.deps import AdminUser
from backend.http.deps import DbSession, RuntimeDep
from backend.http.listing import ISODateTime, Resource, parse_list_query
from backend.http.paging import LIST_HEADERS, list_parameters, set_list_headers
from backend.http.problems import problem_responses
from backend.models import AuditAction, AuditEvent, AuditEventPublic

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

router = APIRouter(prefix="/audit", tags=["audit"], responses=problem_responses(400, 401, 403, 422))


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
    db: DbSession,
    runtime: RuntimeDep,
    _admin: AdminUser,
) -> Sequence[AuditEvent]:
    """Changes made to accounts (admin only), oldest first unless sorted: filter by
    `actor_id`, `target_id`, `action`, `created_after`/`created_before`, with the same
    paging, sorting and dashboard conventions as the users list."""
    query = parse_list_query(
        request.query_params, AUDIT_EVENTS, max_per_page=runtime.settings.MAX_PER_PAGE
    )
    events, total = await crud.list_audit_events(db, query=query)
    set_list_headers(request, response, AUDIT_EVENTS, query, len(events), total)
    return events
