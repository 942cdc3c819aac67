import asyncio

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from backend.db.migrate import NOT_MIGRATED, database_revision, newest_revision
from backend.errors import ProblemCode, ServiceUnavailableError
from backend.http.deps import RuntimeDep
from backend.http.problems import problem_responses

router = APIRouter(prefix="/health", tags=["health"])

READY_RETRY_AFTER_SECONDS = 5
# Redis only holds rate-limit counters, which fail open: a slow or dead Redis makes the
# service degraded, not unready, and must not hold readiness up for long.
REDIS_CHECK_TIMEOUT_SECONDS = 1.0


class HealthStatus(BaseModel):
    status: str = "ok"
    checks: dict[str, str] | None = None


LIVE = HealthStatus()
LIVE_ROUTE_NAME = "health-live"


# What the OpenAPI document shows. LivenessMiddleware answers GET /health with LIVE
# before the router is reached (tests/test_health.py holds the two answers equal).
@router.get("", name=LIVE_ROUTE_NAME, response_model=HealthStatus, response_model_exclude_none=True)
async def live() -> HealthStatus:
    """The process is up. Touches no database."""
    return LIVE


@router.get(
    "/ready", name="health-ready", response_model=HealthStatus, responses=problem_responses(503)
)
async def ready(runtime: RuntimeDep) -> HealthStatus:
    """The database answers and is at the newest migration: safe to route traffic here.

    With REDIS_URL set, `checks.redis` is `ok`, or `degraded` when Redis does not answer
    (rate limits then fail open); that alone never makes this 503.
    """
    try:
        # Bounded like any request's database work: a frozen server is not ready.
        async with (
            asyncio.timeout(runtime.settings.request_database_budget_seconds),
            runtime.engine.connect() as connection,
        ):
            revision = await database_revision(connection)
    except (SQLAlchemyError, OSError) as error:  # TimeoutError is an OSError
        raise ServiceUnavailableError(
            f"The database is not reachable ({error.__class__.__name__}).",
            code=ProblemCode.NOT_READY,
            retry_after_seconds=READY_RETRY_AFTER_SECONDS,
        ) from error
    if revision != newest_revision():
        # Every request would fail on a missing table or column: not ready, and why.
        raise ServiceUnavailableError(
            f"{NOT_MIGRATED} It is at revision {revision or 'none'}, the newest is "
            f"{newest_revision()}.",
            code=ProblemCode.DATABASE_NOT_MIGRATED,
            retry_after_seconds=READY_RETRY_AFTER_SECONDS,
        )
    checks = {"database": "ok"}
    limiter = runtime.rate_limiter
    if limiter.shared:
        available = await limiter.storage_available(REDIS_CHECK_TIMEOUT_SECONDS)
        checks["redis"] = "ok" if available else "degraded"
    return HealthStatus(checks=checks)
