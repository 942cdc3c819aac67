from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from pydantic import TypeAdapter

from backend.auth.deps import AdminUser
from backend.http.deps import DbSession, RuntimeDep
from backend.http.listing import ISODateTime, ListQuery, Resource, parse_list_query
from backend.http.paging import LIST_HEADERS, list_parameters, set_list_headers
from backend.http.parsing import INT32_MAX
from backend.http.problems import problem_responses
from backend.webhooks import endpoints
from backend.webhooks.models import (
    DeliveryStatus,
    WebhookDelivery,
    WebhookDeliveryPublic,
    WebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointPublic,
    WebhookEndpointUpdate,
    WebhookEventType,
)

WEBHOOKS = Resource(
    name="webhooks",
    fields={
        "id": TypeAdapter(int),
        "url": TypeAdapter(str),
        "description": TypeAdapter(str),
        "enabled": TypeAdapter(bool),
        "created_at": ISODateTime,
        "updated_at": ISODateTime,
        "failing_since": ISODateTime,
        "disabled_at": ISODateTime,
    },
    text_fields=("url", "description"),
)
DELIVERIES = Resource(
    name="deliveries",
    fields={
        "id": TypeAdapter(int),
        "event_id": TypeAdapter(str),
        "event_type": TypeAdapter(WebhookEventType),
        "status": TypeAdapter(DeliveryStatus),
        "attempts": TypeAdapter(int),
        "last_status_code": TypeAdapter(int),
        "created_at": ISODateTime,
        "next_attempt_at": ISODateTime,
        "last_attempt_at": ISODateTime,
        "delivered_at": ISODateTime,
    },
    repeatable=("id", "event_type", "status"),
)
NEWEST_FIRST = (("created_at", True),)

WebhookId = Annotated[int, Path(ge=1, le=INT32_MAX, description="A webhook endpoint's id")]

router = APIRouter(
    prefix="/webhooks", tags=["webhooks"], responses=problem_responses(400, 401, 403, 422)
)


@router.post(
    "",
    name="webhooks-create",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookEndpointCreated,
)
async def create_webhook(
    body: WebhookEndpointCreate,
    request: Request,
    response: Response,
    db: DbSession,
    runtime: RuntimeDep,
    admin: AdminUser,
) -> WebhookEndpointCreated:
    """Register an endpoint for the events listed (admin only). `secret` is in this
    answer only: the receiver verifies each delivery's signature with it."""
    created = await endpoints.create(db, data=body, settings=runtime.settings, actor_id=admin.id)
    response.headers["Location"] = str(request.url_for("webhooks-get", webhook_id=created.id))
    return created


@router.get(
    "",
    name="webhooks-list",
    response_model=list[WebhookEndpointPublic],
    openapi_extra={"parameters": list_parameters(WEBHOOKS)},
    responses={200: {"headers": LIST_HEADERS}},
)
async def list_webhooks(
    request: Request, response: Response, db: DbSession, runtime: RuntimeDep, _admin: AdminUser
) -> Sequence[WebhookEndpoint]:
    """The endpoints (admin only), oldest first unless sorted; never their secrets."""
    query = parse_list_query(
        request.query_params, WEBHOOKS, max_per_page=runtime.settings.MAX_PER_PAGE
    )
    found, total = await endpoints.list_endpoints(db, query=query)
    set_list_headers(request, response, WEBHOOKS, query, len(found), total)
    return found


@router.get(
    "/{webhook_id:digits}",
    name="webhooks-get",
    response_model=WebhookEndpointPublic,
    responses=problem_responses(404),
)
async def read_webhook(webhook_id: WebhookId, db: DbSession, _admin: AdminUser) -> WebhookEndpoint:
    """One endpoint (admin only)."""
    return await endpoints.get(db, endpoint_id=webhook_id)


@router.patch(
    "/{webhook_id:digits}",
    name="webhooks-update",
    response_model=WebhookEndpointPublic,
    responses=problem_responses(404),
)
async def update_webhook(
    webhook_id: WebhookId,
    body: WebhookEndpointUpdate,
    db: DbSession,
    runtime: RuntimeDep,
    admin: AdminUser,
) -> WebhookEndpoint:
    """Change the fields sent (admin only). `"enabled": true` re-enables an endpoint
    disabled after failures; its waiting deliveries are tried again at once."""
    endpoint = await endpoints.get(db, endpoint_id=webhook_id)
    return await endpoints.update_endpoint(
        db, endpoint=endpoint, changes=body, settings=runtime.settings, actor_id=admin.id
    )


@router.delete(
    "/{webhook_id:digits}",
    name="webhooks-delete",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404),
)
async def delete_webhook(webhook_id: WebhookId, db: DbSession, admin: AdminUser) -> None:
    """Delete an endpoint and its delivery log (admin only); nothing more is sent to it."""
    endpoint = await endpoints.get(db, endpoint_id=webhook_id)
    await endpoints.delete(db, endpoint=endpoint, actor_id=admin.id)


@router.get(
    "/{webhook_id:digits}/deliveries",
    name="webhooks-deliveries",
    response_model=list[WebhookDeliveryPublic],
    openapi_extra={"parameters": list_parameters(DELIVERIES)},
    responses={**problem_responses(404), 200: {"headers": LIST_HEADERS}},
)
async def list_deliveries(
    webhook_id: WebhookId,
    request: Request,
    response: Response,
    db: DbSession,
    runtime: RuntimeDep,
    _admin: AdminUser,
) -> Sequence[WebhookDelivery]:
    """An endpoint's delivery log (admin only), newest first unless sorted: each event
    sent or to send, its attempts, the last status code or error, the next attempt."""
    query = parse_list_query(
        request.query_params, DELIVERIES, max_per_page=runtime.settings.MAX_PER_PAGE
    )
    if not query.sort:
        query = ListQuery(**{**query.__dict__, "sort": NEWEST_FIRST})
    found, total = await endpoints.list_deliveries(db, endpoint_id=webhook_id, query=query)
    set_list_headers(request, response, DELIVERIES, query, len(found), total)
    return found
