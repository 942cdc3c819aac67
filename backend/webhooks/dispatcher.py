"""The dispatcher: the task, owned by the runtime, that sends the outbox's deliveries.

Each round claims the deliveries due (a batch), sends them at once, and records each
outcome. A claim moves a delivery's next attempt past its lease, in a transaction of its
own, before anything is sent: PostgreSQL's FOR UPDATE SKIP LOCKED lets several workers
or hosts claim side by side, never the same delivery; SQLite's one write lock serialises
them. A worker that dies holding a claim (kill -9, a lost host) leaves the delivery to
be claimed again once the lease runs out: delivery is at least once, every attempt with
the same `webhook-id`, which receivers deduplicate on.

Each delivery is signed per Standard Webhooks (HMAC-SHA256 of id, timestamp and body)
by the `standardwebhooks` library; a failed one is retried on WEBHOOK_RETRY_SCHEDULE,
and an endpoint failing without a success for WEBHOOK_DISABLE_AFTER_HOURS is disabled.
"""

import asyncio
import ipaddress
import logging
import random
import socket
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession
from standardwebhooks.webhooks import Webhook

from backend import crud
from backend.clock import utcnow
from backend.config import Settings
from backend.db.session import lock_for_update
from backend.models import AuditAction
from backend.webhooks.models import (
    ERROR_MAX_CHARS,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
    private_address,
)
from backend.webhooks.outbox import WAKERS

logger = logging.getLogger(__name__)

BATCH_SIZE = 50
# Each retry's delay is varied by up to this fraction either way, so that the retries of
# many deliveries that failed together (a receiver's outage) do not all come back at once.
JITTER = 0.2
USER_AGENT = "backend-webhooks/1.0"


@dataclass(frozen=True)
class Claim:
    delivery_id: int
    endpoint_id: int
    url: str
    secret: str
    event_id: str
    payload: str
    attempts: int
    lease_until: datetime


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None  # None: delivered

    @property
    def delivered(self) -> bool:
        return self.error is None


class AddressRefusedError(Exception):
    pass


def lease_seconds(settings: Settings) -> float:
    """How long a claim holds: an attempt's whole time, twice, and a second for the
    write that records it. A dispatcher that has not recorded by then is presumed dead."""
    return 2 * settings.WEBHOOK_TIMEOUT_SECONDS + 1


def retry_delay(settings: Settings, attempts: int) -> float | None:
    """Seconds before the next attempt after `attempts` failed ones; None: no more."""
    schedule = settings.webhook_retry_schedule
    if attempts > len(schedule):
        return None
    return schedule[attempts - 1] * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311


# What a claim reads: plain columns, no ORM object to build.
CLAIM_COLUMNS: tuple[Any, ...] = (
    col(WebhookDelivery.id),
    col(WebhookDelivery.endpoint_id),
    col(WebhookEndpoint.url),
    col(WebhookEndpoint.secret),
    col(WebhookDelivery.event_id),
    col(WebhookDelivery.payload),
    col(WebhookDelivery.attempts),
)


async def claim(db: AsyncSession, *, settings: Settings, limit: int) -> list[Claim]:
    """The deliveries due, of enabled endpoints, claimed for one lease; commits."""
    now = utcnow()
    statement = (
        select(*CLAIM_COLUMNS)
        .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
        .where(
            col(WebhookDelivery.next_attempt_at) <= now,
            col(WebhookEndpoint.enabled).is_(True),
        )
        .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id))
        .limit(limit)
    )
    if db.get_bind().dialect.name == "postgresql":
        table = WebhookDelivery.__table__  # type: ignore[attr-defined]
        statement = statement.with_for_update(of=table, skip_locked=True)
    else:
        # Most rounds find nothing: only then is SQLite's write lock taken, and the
        # read repeated under it.
        if not (await db.exec(statement)).first():  # type: ignore[call-overload]
            await db.rollback()
            return []
        statement = await lock_for_update(db, statement, table=WebhookDelivery)
    rows = (await db.exec(statement)).all()  # type: ignore[call-overload]
    if not rows:
        await db.rollback()
        return []
    lease_until = now + timedelta(seconds=lease_seconds(settings))
    ids = [row[0] for row in rows]
    await db.exec(
        update(WebhookDelivery)
        .where(col(WebhookDelivery.id).in_(ids))
        .values(next_attempt_at=lease_until)
    )
    await db.commit()
    return [
        Claim(
            delivery_id=row[0],
            endpoint_id=row[1],
            url=row[2],
            secret=row[3],
            event_id=row[4],
            payload=row[5],
            attempts=row[6],
            lease_until=lease_until,
        )
        for row in rows
    ]


async def record(db: AsyncSession, claim: Claim, outcome: Outcome, *, settings: Settings) -> None:
    """Write an attempt's outcome to its delivery and endpoint; the caller commits."""
    now = utcnow()
    attempts = claim.attempts + 1
    values: dict[str, object] = {
        "attempts": attempts,
        "last_attempt_at": now,
        "last_status_code": outcome.status_code,
        "last_error": outcome.error,
    }
    if outcome.delivered:
        values.update(status=DeliveryStatus.DELIVERED, delivered_at=now, next_attempt_at=None)
    else:
        delay = retry_delay(settings, attempts)
        if delay is None:
            values.update(status=DeliveryStatus.FAILED, next_attempt_at=None)
        else:
            values.update(next_attempt_at=now + timedelta(seconds=delay))
    # Only while the claim holds: once its lease ran out, another dispatcher may have
    # claimed the delivery again, and the outcome is that one's to record.
    await db.exec(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id) == claim.delivery_id,
            col(WebhookDelivery.next_attempt_at) == claim.lease_until,
        )
        .values(**values)
    )
    endpoint = col(WebhookEndpoint.id) == claim.endpoint_id
    if outcome.delivered:
        await db.exec(
            update(WebhookEndpoint)
            .where(endpoint, col(WebhookEndpoint.failing_since).is_not(None))
            .values(failing_since=None)
        )
        return
    await db.exec(
        update(WebhookEndpoint)
        .where(endpoint, col(WebhookEndpoint.failing_since).is_(None))
        .values(failing_since=now)
    )
    failing_too_long = now - timedelta(hours=settings.WEBHOOK_DISABLE_AFTER_HOURS)
    disabled = (
        await db.exec(
            update(WebhookEndpoint)
            .where(
                endpoint,
                col(WebhookEndpoint.enabled).is_(True),
                col(WebhookEndpoint.failing_since) <= failing_too_long,
            )
            .values(enabled=False, disabled_at=now, updated_at=now)
            .returning(col(WebhookEndpoint.url))
        )
    ).first()
    if disabled is not None:
        logger.warning(
            "webhook endpoint %s (%s) disabled: failing for %s hours",
            claim.endpoint_id,
            disabled[0],
            settings.WEBHOOK_DISABLE_AFTER_HOURS,
        )
        crud.add_audit_event(
            db,
            action=AuditAction.WEBHOOK_DISABLE,
            actor_id=None,
            target_id=None,
            details={
                "webhook_id": claim.endpoint_id,
                "url": disabled[0],
                "last_error": outcome.error,
            },
        )


async def check_resolved_address(url: str) -> None:
    """Refuse a host that is, or resolves to, a loopback, private or link-local address.
    httpx resolves the name again to connect: a name that changes its answer in between
    (DNS rebinding) is not caught here, which a firewall on the egress must cover."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if private_address(host):
        raise AddressRefusedError(f"{host} is a private address (WEBHOOK_ALLOW_PRIVATE_ADDRESSES)")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise AddressRefusedError(f"cannot resolve {host}: {error}") from error
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global:
            raise AddressRefusedError(
                f"{host} resolves to the private address {address} "
                "(WEBHOOK_ALLOW_PRIVATE_ADDRESSES)"
            )


class Dispatcher:
    def __init__(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]):
        self.settings = settings
        self.sessionmaker = sessionmaker
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        timeout = self.settings.WEBHOOK_TIMEOUT_SECONDS
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )
        WAKERS.add(self.wake)
        self._task = asyncio.create_task(self._run(), name="webhook dispatcher")

    def wake(self) -> None:
        """Look for deliveries due now rather than at the next poll."""
        self._wakeup.set()

    async def close(self, *, within: float) -> None:
        """Stop: the round under way may finish its sends within `within` seconds; what
        it could not record is claimed again after its lease."""
        WAKERS.discard(self.wake)
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            _, pending = await asyncio.wait({self._task}, timeout=within)
            if pending:
                self._task.cancel()
                with suppress(asyncio.CancelledError):
                    await self._task
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            try:
                handled = await self.run_once()
            except Exception as error:
                # A database outage: the deliveries wait in the outbox for the next round.
                logger.warning("webhook dispatcher: %r; trying again at the next poll", error)
                handled = 0
            if handled >= BATCH_SIZE:
                continue
            with suppress(TimeoutError):
                async with asyncio.timeout(self.settings.WEBHOOK_POLL_SECONDS):
                    await self._wakeup.wait()

    async def run_once(self) -> int:
        """One round: claim, send, record; how many deliveries it handled."""
        async with self.sessionmaker() as db:
            claims = await claim(db, settings=self.settings, limit=BATCH_SIZE)
        if not claims:
            return 0
        outcomes = await asyncio.gather(*(self._send(claimed) for claimed in claims))
        # One transaction each, one after the other (one connection): an outcome that
        # cannot be written costs only its own delivery a second sending.
        for claimed, outcome in zip(claims, outcomes, strict=True):
            try:
                async with self.sessionmaker() as db:
                    await record(db, claimed, outcome, settings=self.settings)
                    await db.commit()
            except Exception as error:
                logger.warning(
                    "webhook delivery %s: outcome not recorded (%r); sent again after its lease",
                    claimed.delivery_id,
                    error,
                )
        return len(claims)

    async def _send(self, claimed: Claim) -> Outcome:
        assert self._client is not None
        timeout = self.settings.WEBHOOK_TIMEOUT_SECONDS
        # Wall time, not the app's clock: the receiver checks it against its own.
        timestamp = datetime.now(UTC)
        signature = Webhook(claimed.secret).sign(claimed.event_id, timestamp, claimed.payload)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": claimed.event_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": signature,
        }
        try:
            if not self.settings.webhook_allow_private_addresses:
                await check_resolved_address(claimed.url)
            async with asyncio.timeout(timeout):
                request = self._client.stream(
                    "POST", claimed.url, content=claimed.payload.encode(), headers=headers
                )
                async with request as response:  # the body is never read
                    status_code = response.status_code
        except TimeoutError:
            return Outcome(None, f"no answer within {timeout:g} s")
        except (httpx.HTTPError, AddressRefusedError) as error:
            return Outcome(None, f"{type(error).__name__}: {error}"[:ERROR_MAX_CHARS])
        if 200 <= status_code < 300:
            return Outcome(status_code, None)
        return Outcome(status_code, f"HTTP {status_code}")
