"""The admins' workflows on webhook endpoints: register (the secret made here, shown
once), list, read, change, re-enable, delete, and read an endpoint's delivery log. Each
change is audited in its own transaction."""

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import crud
from backend.clock import utcnow
from backend.config import Settings
from backend.db.session import release_connection
from backend.errors import FieldInvalidError, NotFoundError, ProblemCode
from backend.http.listing import ListQuery
from backend.models import AuditAction
from backend.webhooks.models import (
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointUpdate,
    new_webhook_secret,
    private_address,
)
from backend.webhooks.outbox import STAGED

PRIVATE_ADDRESS = (
    "must not point at a loopback, private or link-local address on this server "
    "(WEBHOOK_ALLOW_PRIVATE_ADDRESSES)"
)


def check_address(url: str, settings: Settings) -> None:
    """Refuse a URL whose host is written as a private address, unless allowed. Names
    are resolved, and checked again, when each delivery is sent (dispatcher.py)."""
    host = urlsplit(url).hostname or ""
    if not settings.webhook_allow_private_addresses and private_address(host):
        raise FieldInvalidError("url", PRIVATE_ADDRESS, field_code="url_private_address")


async def create(
    db: AsyncSession, *, data: WebhookEndpointCreate, settings: Settings, actor_id: int | None
) -> WebhookEndpointCreated:
    check_address(data.url, settings)
    endpoint = WebhookEndpoint.model_validate(data, update={"secret": new_webhook_secret()})
    db.add(endpoint)
    await db.flush()
    crud.add_audit_event(
        db,
        action=AuditAction.WEBHOOK_CREATE,
        actor_id=actor_id,
        target_id=None,
        details={"webhook_id": endpoint.id, "url": endpoint.url, "events": endpoint.events},
    )
    await db.commit()
    return WebhookEndpointCreated.model_validate(endpoint)


async def get(db: AsyncSession, *, endpoint_id: int) -> WebhookEndpoint:
    endpoint = await db.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        raise NotFoundError(
            f"No webhook endpoint has id {endpoint_id}.", code=ProblemCode.WEBHOOK_NOT_FOUND
        )
    return endpoint


async def list_endpoints(
    db: AsyncSession, *, query: ListQuery
) -> tuple[Sequence[WebhookEndpoint], int]:
    return await crud.list_page(db, WebhookEndpoint, query, [])


async def list_deliveries(
    db: AsyncSession, *, endpoint_id: int, query: ListQuery
) -> tuple[Sequence[WebhookDelivery], int]:
    await get(db, endpoint_id=endpoint_id)
    condition = col(WebhookDelivery.endpoint_id) == endpoint_id
    return await crud.list_page(db, WebhookDelivery, query, [condition])


async def update_endpoint(
    db: AsyncSession,
    *,
    endpoint: WebhookEndpoint,
    changes: WebhookEndpointUpdate,
    settings: Settings,
    actor_id: int | None,
) -> WebhookEndpoint:
    """Apply the fields sent. Enabling a disabled endpoint clears its run of failures
    and makes its waiting deliveries due at once."""
    values: dict[str, Any] = {
        name: value
        for name, value in changes.model_dump(exclude_unset=True).items()
        if value is not None and getattr(endpoint, name) != value
    }
    if "url" in values:
        check_address(values["url"], settings)
    if not values:
        return endpoint
    await release_connection(db)  # the read ends before the write (SQLite)
    now = utcnow()
    if values.get("enabled") is True:
        values.update(failing_since=None, disabled_at=None)
        await db.exec(
            update(WebhookDelivery)
            .where(
                col(WebhookDelivery.endpoint_id) == endpoint.id,
                col(WebhookDelivery.next_attempt_at).is_not(None),
            )
            .values(next_attempt_at=now)
        )
        db.info[STAGED] = True  # the dispatchers look at once
    fields = sorted(name for name in values if name not in {"failing_since", "disabled_at"})
    for name, value in values.items():
        setattr(endpoint, name, value)
    endpoint.updated_at = now
    db.add(endpoint)
    crud.add_audit_event(
        db,
        action=AuditAction.WEBHOOK_UPDATE,
        actor_id=actor_id,
        target_id=None,
        details={"webhook_id": endpoint.id, "fields": fields},
    )
    await db.commit()
    return endpoint


async def delete(db: AsyncSession, *, endpoint: WebhookEndpoint, actor_id: int | None) -> None:
    """Delete the endpoint with its delivery log; what was waiting is never sent."""
    await release_connection(db)  # the read ends before the write (SQLite)
    await db.delete(endpoint)
    crud.add_audit_event(
        db,
        action=AuditAction.WEBHOOK_DELETE,
        actor_id=actor_id,
        target_id=None,
        details={"webhook_id": endpoint.id, "url": endpoint.url},
    )
    await db.commit()
