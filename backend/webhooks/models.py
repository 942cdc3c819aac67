"""The WebhookEndpoint and WebhookDelivery families, and the event types."""

import base64
import ipaddress
import secrets
from datetime import datetime
from enum import StrEnum
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, ConfigDict, StrictBool
from pydantic_core import PydanticCustomError
from sqlalchemy import JSON, String, Text
from sqlmodel import Field, SQLModel

from backend.clock import utcnow
from backend.models import UTCDateTime, string_enum

URL_MAX_CHARS = 2000
DESCRIPTION_MAX_CHARS = 200
ERROR_MAX_CHARS = 300
EVENT_ID_MAX_CHARS = 40
# Standard Webhooks' secrets: "whsec_" and the base64 of 24 to 64 random bytes.
SECRET_PREFIX = "whsec_"  # noqa: S105  (a prefix, not a secret)
SECRET_BYTES = 32


def new_webhook_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def new_event_id() -> str:
    return "msg_" + secrets.token_hex(16)


class WebhookEventType(StrEnum):
    USER_CREATED = "user.created"
    USER_UPDATED = "user.updated"
    USER_DELETED = "user.deleted"
    USER_BANNED = "user.banned"
    SESSION_REVOKED = "session.revoked"


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its first or next attempt
    DELIVERED = "delivered"  # a 2xx answered one attempt
    FAILED = "failed"  # every attempt of the retry schedule failed


def _check_url(value: str) -> str:
    """http or https, a host, no credentials and no fragment: a receiver's address."""
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises on a port out of range or not a number
    except ValueError as error:
        raise PydanticCustomError("url_invalid", "must be a valid URL") from error
    if parts.scheme not in {"http", "https"}:
        raise PydanticCustomError("url_scheme", "must start with http:// or https://")
    if not parts.hostname:
        raise PydanticCustomError("url_host", "must name a host")
    if parts.username is not None or parts.password is not None:
        raise PydanticCustomError(
            "url_credentials",
            "must not carry a user name or password: the signature authenticates us",
        )
    if parts.fragment or value.endswith("#"):
        raise PydanticCustomError("url_fragment", "must not have a #fragment")
    if any(char.isspace() or ord(char) < 32 for char in value):
        raise PydanticCustomError("url_invalid", "must not contain spaces or control characters")
    return value


WebhookUrl = Annotated[str, Field(max_length=URL_MAX_CHARS), AfterValidator(_check_url)]
EventTypes = Annotated[
    list[WebhookEventType], Field(min_length=1, max_length=len(WebhookEventType))
]


def private_address(host: str) -> bool:
    """Whether a host literal (an IP address, or `localhost`) is one a server should
    not reach on a caller's say-so: loopback, private, link-local and the like."""
    if host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return not address.is_global


class WebhookEndpointBase(SQLModel):
    url: WebhookUrl = Field(sa_type=String(URL_MAX_CHARS))
    events: EventTypes = Field(sa_type=JSON, description="The event types sent to it")
    description: str = Field(default="", max_length=DESCRIPTION_MAX_CHARS)


class WebhookEndpointCreate(WebhookEndpointBase):
    # Strict, as a user's is_active: JSON true/false only, not 0, 1 or "yes".
    enabled: StrictBool = True

    model_config = ConfigDict(  # type: ignore[assignment]
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://hooks.example.com/users",
                    "events": ["user.created", "user.deleted"],
                    "description": "CRM sync",
                }
            ]
        },
    )


class WebhookEndpointUpdate(SQLModel):
    url: WebhookUrl | None = None
    events: EventTypes | None = None
    description: str | None = Field(default=None, max_length=DESCRIPTION_MAX_CHARS)
    enabled: StrictBool | None = Field(
        default=None,
        description="true re-enables an endpoint disabled after failures: its waiting "
        "deliveries are tried again at once",
    )

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]


class WebhookEndpoint(WebhookEndpointBase, table=True):
    """A receiver of events. Its secret signs every delivery, so it is stored as given
    (the sender needs it in clear, as Standard Webhooks' HMAC does); shown only once."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = {"sqlite_autoincrement": True}  # ids never reused, as every table's

    id: int | None = Field(default=None, primary_key=True)
    description: str = Field(default="", sa_type=String(DESCRIPTION_MAX_CHARS))
    secret: str = Field(sa_type=String(100))
    enabled: bool = True
    # The first failure of the current run of failures; None after a success.
    failing_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    disabled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class WebhookEndpointPublic(WebhookEndpointBase):
    url: str
    events: list[WebhookEventType]
    id: int
    enabled: bool
    failing_since: datetime | None = Field(
        description="When its current run of failed deliveries began; null after a success"
    )
    disabled_at: datetime | None = Field(
        description="When it was disabled after failing for WEBHOOK_DISABLE_AFTER_HOURS"
    )
    created_at: datetime
    updated_at: datetime


class WebhookEndpointCreated(WebhookEndpointPublic):
    secret: str = Field(
        description="The signing secret (`whsec_...`), shown this once: give it to the "
        "receiver, which verifies each delivery's `webhook-signature` with it"
    )


class WebhookDeliveryBase(SQLModel):
    event_id: str = Field(
        sa_type=String(EVENT_ID_MAX_CHARS),
        index=True,
        description="The `webhook-id` header: the same on every attempt, for deduplication",
    )
    event_type: WebhookEventType = Field(
        sa_type=string_enum(WebhookEventType, name="webhook_event_type", length=32)
    )
    status: DeliveryStatus = Field(
        default=DeliveryStatus.PENDING,
        sa_type=string_enum(DeliveryStatus, name="webhook_delivery_status", length=16),
    )
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, sa_type=String(ERROR_MAX_CHARS))
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    last_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class WebhookDelivery(WebhookDeliveryBase, table=True):
    """One event for one endpoint: the outbox row, written in the transaction of the
    change it reports, and then its delivery log. Pending exactly while next_attempt_at
    is set (the dispatcher's index)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    endpoint_id: int = Field(foreign_key="webhook_endpoints.id", ondelete="CASCADE", index=True)
    # The body as sent, byte for byte on every attempt: its signature covers it.
    payload: str = Field(sa_type=Text)


class WebhookDeliveryPublic(WebhookDeliveryBase):
    id: int
    endpoint_id: int
    next_attempt_at: datetime | None = Field(
        description="When it is tried next; null once delivered or failed"
    )
