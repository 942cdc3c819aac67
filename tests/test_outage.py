"""A real PostgreSQL outage: a throwaway cluster stopped and started under light load.

The cluster is made with postgresql-common (`pg_createcluster`, root only) on its own
free port, so stopping it never disturbs the shared test database; it is dropped even
when the test fails. Outside CI a machine without those tools skips the test.
"""

import asyncio
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, EmulatedDBAPIException, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.db.engine import create_engine, database_unavailable
from backend.db.session import BudgetedSession, create_sessionmaker
from backend.http.deps import DbSession
from backend.http.observability import OUTAGE_SETTLE_SECONDS
from backend.main import create_app
from backend.models import User
from tests.helpers import API, USER_PASSWORD, bearer, free_port, make_settings, running
from tests.services import POSTGRES_CLUSTER, require

CLIENTS = 4
REQUEST_LIMIT_SECONDS = 10.0  # the bound the test asserts on every single request
HANG_SECONDS = 30.0  # a request still running after this counts as hung
UP_SECONDS = 2.0
DOWN_SECONDS = 4.0
RECOVERY_LIMIT_SECONDS = 20.0
ALLOWED_STATUSES = {200, 201, 503}


def _wrapped(driver_error: Exception, *, invalidated: bool = False) -> DBAPIError:
    """What SQLAlchemy's asyncpg dialect raises for a driver error it has no category for."""
    emulated = EmulatedDBAPIException(str(driver_error), driver_error)
    return DBAPIError("SELECT 1", None, emulated, connection_invalidated=invalidated)


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (TimeoutError(), True),  # asyncpg's connect timeout and command_timeout
        (PoolTimeoutError("QueuePool limit reached"), True),
        (OperationalError("SELECT 1", None, Exception("gone")), True),
        (_wrapped(asyncpg.exceptions.CannotConnectNowError("starting up")), True),
        (_wrapped(asyncpg.exceptions.AdminShutdownError("terminating connection")), True),
        (_wrapped(asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-query")), True),
        (_wrapped(asyncpg.exceptions.QueryCanceledError("statement timeout")), True),
        (_wrapped(asyncpg.exceptions.TooManyConnectionsError("too many clients")), True),
        (_wrapped(Exception("lost"), invalidated=True), True),
        (_wrapped(asyncpg.exceptions.DataError("invalid input")), False),
        (_wrapped(asyncpg.exceptions.UndefinedTableError("no such table")), False),
        (RuntimeError("a bug"), False),
    ],
)
def test_outage_errors_are_told_from_bugs(error: Exception, unavailable: bool) -> None:
    assert database_unavailable(error) is unavailable


@pytest.mark.parametrize(
    ("error", "swallowed"),
    [
        (
            _wrapped(asyncpg.exceptions.ConnectionDoesNotExistError("closed"), invalidated=True),
            True,
        ),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (_wrapped(asyncpg.exceptions.DataError("invalid input")), False),
    ],
)
async def test_closing_a_session_whose_connection_died_is_not_an_error(
    monkeypatch: pytest.MonkeyPatch, error: Exception, swallowed: bool
) -> None:
    # The server dropped the connection after the response went out: close's rollback fails.
    async def failing_close(_session: AsyncSession) -> None:
        raise error

    monkeypatch.setattr(AsyncSession, "close", failing_close)
    if swallowed:
        await BudgetedSession().close()
    else:
        with pytest.raises(type(error)):
            await BudgetedSession().close()


async def test_the_budget_adds_up_database_waits_and_nothing_else(database_url: str) -> None:
    settings = make_settings(database_url, DB_REQUEST_BUDGET_SECONDS=1.0)
    if settings.request_database_budget_seconds is None:
        pytest.skip("SQLite has no request budget")
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine, settings)
    sleep = text("SELECT pg_sleep(0.6)")
    try:
        async with sessionmaker() as db:
            await db.exec(sleep)  # type: ignore[call-overload]
            await asyncio.sleep(1.0)  # a password hash, say: not the database's time
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await db.exec(sleep)  # type: ignore[call-overload]
            assert time.monotonic() - started < 0.6  # cut when the 0.4 s left ran out
            with pytest.raises(TimeoutError, match="budget is spent"):
                await db.get(User, 1)
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        # The connection cancelled mid-statement was dropped, not pooled: a new one works.
        async with sessionmaker() as db:
            assert (await db.exec(text("SELECT 1"))).one() == (1,)  # type: ignore[call-overload]
    finally:
        await engine.dispose()


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


@dataclass
class Cluster:
    version: str
    name: str
    port: int

    @property
    def url(self) -> str:
        # The cluster serves no TLS. Under asyncpg's default (sslmode=prefer) each query
        # cancellation sent to the frozen server opens a TLS probe, which asyncpg leaves
        # failing in a task of its own (its _cancel has no error handling), and the test's
        # event loop reports that as an error of the test.
        return f"postgresql://outage:outage@127.0.0.1:{self.port}/outage?sslmode=disable"

    def ctl(self, action: str, *options: str) -> None:
        run("pg_ctlcluster", self.version, self.name, action, *options)

    def psql(self, sql: str) -> None:
        run("runuser", "-u", "postgres", "--", "psql", "-p", str(self.port), "-qtAc", sql)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Every process of the cluster stopped by SIGSTOP: its sockets stay open and
        accept connections, but nothing answers, as on a hung host or stalled storage."""
        pid_file = Path(f"/var/lib/postgresql/{self.version}/{self.name}/postmaster.pid")
        postmaster = int(pid_file.read_text().split()[0])
        stopped: list[int] = []
        try:
            os.kill(postmaster, signal.SIGSTOP)
            stopped.append(postmaster)
            # Listed once the postmaster is stopped: it forks no new backend after that.
            for child in map(int, run("pgrep", "-P", str(postmaster)).split()):
                with suppress(ProcessLookupError):  # a backend that just ended
                    os.kill(child, signal.SIGSTOP)
                    stopped.append(child)
            yield
        finally:
            for pid in stopped:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


def _newest_postgres_version() -> str | None:
    servers = Path("/usr/lib/postgresql").glob("*/bin/postgres")
    versions = [server.parent.parent.name for server in servers]
    return max(versions, key=float, default=None)


CLUSTER_PREFIX = "backend_outage_"  # then the pid of the test run that made it


def _missing_for_a_cluster(version: str | None) -> str | None:
    missing = [tool for tool in ("pg_createcluster", "runuser") if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)}"
    if version is None:
        return "no PostgreSQL server installed"
    if os.geteuid() != 0:
        return "pg_createcluster needs root"
    return None


def _drop_cluster(version: str, name: str) -> None:
    command = ["pg_dropcluster", version, name, "--stop"]
    subprocess.run(command, capture_output=True, timeout=60, check=False)


def _drop_clusters_of_killed_runs(version: str) -> None:
    for config in Path(f"/etc/postgresql/{version}").glob(f"{CLUSTER_PREFIX}*"):
        pid = config.name.removeprefix(CLUSTER_PREFIX)
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _drop_cluster(version, config.name)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    version = _newest_postgres_version()
    problem = _missing_for_a_cluster(version)
    if problem:
        require(POSTGRES_CLUSTER, problem)
    assert version is not None
    _drop_clusters_of_killed_runs(version)
    cluster = Cluster(version, f"{CLUSTER_PREFIX}{os.getpid()}", free_port())
    try:
        # Listens on localhost only, as every cluster does unless told otherwise.
        run("pg_createcluster", version, cluster.name, "--port", str(cluster.port), "--start")
        cluster.psql("CREATE ROLE outage LOGIN PASSWORD 'outage'")
        cluster.psql("CREATE DATABASE outage OWNER outage")
        yield cluster
    finally:
        _drop_cluster(version, cluster.name)


@dataclass
class Outcome:
    phase: str
    what: str
    status: int | str  # an HTTP status, or the name of the exception the client saw
    started: float
    seconds: float
    problem_json: bool = True
    retry_after: bool = True


@dataclass
class Load:
    """A few clients in a loop: register, GET /users/me, readiness and liveness."""

    client: httpx.AsyncClient
    phase: str = "up"
    outcomes: list[Outcome] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def call(self, what: str, method: str, url: str, **options: Any) -> httpx.Response | None:
        phase, started = self.phase, time.monotonic()
        response: httpx.Response | None = None
        try:
            response = await asyncio.wait_for(
                self.client.request(method, url, **options), HANG_SECONDS
            )
        except Exception as error:
            status: int | str = type(error).__name__
        else:
            status = response.status_code
        outcome = Outcome(phase, what, status, started, time.monotonic() - started)
        if response is not None and response.status_code == 503:
            outcome.problem_json = response.headers["content-type"] == "application/problem+json"
            outcome.retry_after = "retry-after" in response.headers
        self.outcomes.append(outcome)
        return response

    async def user(self, number: int) -> None:
        headers: dict[str, str] | None = None
        for round_ in range(10_000):  # bounded; the stop event ends it much sooner
            if self.stop.is_set():
                return
            email = f"outage-{number}-{round_}@example.com"
            body = {"email": email, "name": "Outage", "password": USER_PASSWORD}
            response = await self.call("register", "POST", f"{API}/auth/register", json=body)
            if response is not None and response.status_code == 200:
                self.acknowledged.append(email)
                headers = bearer(response.json()["access_token"])
            if headers:
                await self.call("me", "GET", f"{API}/users/me", headers=headers)
            await self.call("ready", "GET", "/health/ready")
            await self.call("live", "GET", "/health")
            await asyncio.sleep(0.02)

    async def slow_query(self, what: str) -> Outcome:
        """A request whose query runs until the statement timeout or the server ends it."""
        await self.call(what, "GET", SLOW_QUERY_PATH)
        return next(o for o in reversed(self.outcomes) if o.what == what)

    def first(self, what: str, status: int, after: float) -> Outcome | None:
        """The first request of this kind, sent after that moment, answered that way."""
        matches = (o for o in self.outcomes if (o.what, o.status) == (what, status))
        return next((o for o in matches if o.started > after), None)


SLOW_QUERY_PATH = "/test-only/slow-query"


def add_slow_query_route(app: FastAPI) -> None:
    async def slow_query(db: DbSession) -> dict[str, str]:
        await db.exec(text("SELECT pg_sleep(60)"))  # type: ignore[call-overload]
        return {"status": "finished"}

    app.add_api_route(SLOW_QUERY_PATH, slow_query)


async def test_postgres_outage_gives_503_then_recovers_without_restart(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # The time limits keep their defaults: they are what this test is about.
    settings = make_settings(cluster.url, RATE_LIMIT_ENABLED=False, AUTO_MIGRATE=True)
    app = create_app(settings)
    add_slow_query_route(app)
    async with running(app, raise_app_exceptions=False) as client:
        load = Load(client)
        users = [asyncio.create_task(load.user(number)) for number in range(CLIENTS)]
        try:
            # Up: a statement past the request's database budget ends in 503.
            timed_out, _ = await asyncio.gather(
                load.slow_query("statement timeout"), asyncio.sleep(UP_SECONDS)
            )
            # Stopping: a statement still running when the server shuts down.
            interrupted = asyncio.create_task(load.slow_query("query during shutdown"))
            await asyncio.sleep(0.5)
            load.phase = "down"
            stopped = time.monotonic()
            await asyncio.to_thread(cluster.ctl, "stop", "-m", "fast")
            await asyncio.sleep(DOWN_SECONDS)
            load.phase = "restarting"
            restarted = time.monotonic()
            await asyncio.to_thread(cluster.ctl, "start")
            load.phase = "up again"
            while not (
                load.first("ready", 200, restarted) and load.first("register", 200, restarted)
            ):
                assert time.monotonic() - restarted < RECOVERY_LIMIT_SECONDS, "no recovery"
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            await interrupted
        finally:
            load.stop.set()
            await asyncio.gather(*users)

    first_ready = load.first("ready", 200, restarted)
    assert first_ready is not None
    recovery_seconds = first_ready.started + first_ready.seconds - restarted
    outage = [o for o in load.outcomes if stopped <= o.started < restarted]
    slowest = max(load.outcomes, key=lambda o: o.seconds)
    unavailable = Counter(
        record.getMessage()
        for record in caplog.records
        if record.name in {"backend.http.problems", "backend.db.session"}
    )
    unexpected = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    by_phase: dict[str, Counter[str]] = {}
    for outcome in load.outcomes:
        by_phase.setdefault(outcome.phase, Counter())[f"{outcome.what} {outcome.status}"] += 1
    print(  # the numbers behind the assertions, for `pytest -s`
        f"\n{len(load.outcomes)} requests, {len(outage)} during the outage; "
        f"ready again {recovery_seconds:.2f} s after the start command; "
        f"slowest {slowest.seconds:.2f} s ({slowest.what}, {slowest.phase}); slowest "
        f"during the outage {max(o.seconds for o in outage):.2f} s; "
        f"{len(load.acknowledged)} registers acknowledged"
    )
    for phase, counts in by_phase.items():
        print(f"  {phase}: {dict(sorted(counts.items()))}")
    print(f"  logged: {dict(unavailable)}")

    bad = [o for o in load.outcomes if o.status not in ALLOWED_STATUSES]
    assert not bad, f"{bad[:5]} ... errors logged: {unexpected[:5]}\n{by_phase}"
    assert not unexpected, unexpected
    assert all(o.status == 200 for o in load.outcomes if o.what == "live")
    assert all(o.problem_json and o.retry_after for o in load.outcomes if o.status == 503)
    assert slowest.seconds < REQUEST_LIMIT_SECONDS, slowest
    assert timed_out.status == 503
    assert timed_out.seconds < settings.statement_timeout_seconds + 2
    assert interrupted.result().status == 503
    assert load.first("register", 200, 0)
    assert load.first("ready", 503, stopped)
    assert load.first("register", 503, stopped)

    # No lost acknowledged write: every register answered 200 is in the database.
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            stored = set(
                (
                    await connection.execute(
                        select(User.email).where(col(User.email).in_(load.acknowledged))
                    )
                ).scalars()
            )
    finally:
        await engine.dispose()
    assert set(load.acknowledged) == stored


FROZEN_WAVES = 2
KINDS = ("me", "by id", "register", "ready")
# Each kind this many at once: 4 x 8 callers want more than the pool's 10 + 10 connections,
# so some wait for the pool, some for a connect, some on a pooled connection's pre-ping.
FROZEN_CALLERS_PER_KIND = 8
SCHEDULING_MARGIN_SECONDS = 1.5  # 2 shared cores: event-loop and greenlet overhead
THAWED_RECOVERY_LIMIT_SECONDS = 5.0


async def test_frozen_database_answers_503_within_the_budget_then_recovers(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # Every GET /users/me reaches the database here: with the auth cache, those sent in
    # the first 80 ms of the freeze are rightly answered from memory (its bound for a
    # listener that stops answering: tests/test_auth_cache.py).
    settings = make_settings(
        cluster.url, RATE_LIMIT_ENABLED=False, AUTO_MIGRATE=True, AUTH_CACHE_SECONDS=0
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        load = Load(client)
        emails = (f"frozen-{number}@example.com" for number in range(10_000))

        async def wave() -> None:
            calls = []
            for _ in range(FROZEN_CALLERS_PER_KIND):
                body = {"email": next(emails), "name": "Frozen", "password": USER_PASSWORD}
                calls += [
                    load.call("me", "GET", f"{API}/users/me", headers=headers),
                    load.call("by id", "GET", f"{API}/users/{user_id}", headers=headers),
                    load.call("register", "POST", f"{API}/auth/register", json=body),
                    load.call("ready", "GET", "/health/ready"),
                ]
            await asyncio.gather(*calls)

        response = await load.call(
            "register",
            "POST",
            f"{API}/auth/register",
            json={"email": next(emails), "name": "Frozen", "password": USER_PASSWORD},
        )
        assert response is not None
        assert response.status_code == 200
        headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
        user_id = response.json()["user"]["id"]
        await wave()  # the pool now holds idle connections, which the freeze catches
        load.phase = "frozen"
        with cluster.frozen():
            for _ in range(FROZEN_WAVES):
                await wave()
        load.phase = "thawed"
        thawed = time.monotonic()
        while not all(load.first(what, 200, thawed) for what in KINDS):
            assert time.monotonic() - thawed < THAWED_RECOVERY_LIMIT_SECONDS, "no recovery"
            await wave()
        recovery_seconds = time.monotonic() - thawed
        load.phase = "recovered"
        await wave()  # every pooled connection usable again: none left mid-query
        pool = app.state.runtime.engine.pool

    frozen = [o for o in load.outcomes if o.phase == "frozen"]
    by_kind = {what: sorted(o.seconds for o in frozen if o.what == what) for what in KINDS}
    print(  # the numbers behind the assertions, for `pytest -s`
        f"\nfrozen: {len(frozen)} requests, "
        + ", ".join(
            f"{what} median {times[len(times) // 2]:.2f} s max {times[-1]:.2f} s"
            for what, times in by_kind.items()
        )
        + f"; statuses {dict(Counter(o.status for o in frozen))}; "
        f"recovered {recovery_seconds:.2f} s after SIGCONT"
    )
    unexpected = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert not unexpected, unexpected
    assert all(o.status == 503 and o.problem_json and o.retry_after for o in frozen), frozen
    limit = settings.DB_REQUEST_BUDGET_SECONDS + SCHEDULING_MARGIN_SECONDS
    assert max(o.seconds for o in frozen) < limit
    recovered = [o for o in load.outcomes if o.phase == "recovered"]
    assert all(o.status == 200 for o in recovered), recovered
    assert pool.checkedout() == 0


REFUSED_DURING_OUTAGE = 5


async def test_an_outage_is_logged_when_it_starts_and_when_it_ends(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = make_settings(
        cluster.url, RATE_LIMIT_ENABLED=False, AUTO_MIGRATE=True, AUTH_CACHE_SECONDS=0
    )
    app = create_app(settings)
    async with running(app, raise_app_exceptions=False) as client:
        metrics = app.state.runtime.metrics
        body = {"email": "logged@example.com", "name": "Logged", "password": USER_PASSWORD}
        registered = await client.post(f"{API}/auth/register", json=body)
        assert registered.status_code == 200
        headers = bearer(registered.json()["access_token"])
        await asyncio.to_thread(cluster.ctl, "stop", "-m", "fast")
        refused = [
            (await client.get(f"{API}/users/me", headers=headers)).status_code
            for _ in range(REFUSED_DURING_OUTAGE)
        ]
        down = metrics.registry.get_sample_value("database_down")
        await asyncio.to_thread(cluster.ctl, "start")
        started = time.monotonic()
        # Readiness answers 503 of its own while the server starts: not a refused request.
        while (await client.get("/health/ready")).status_code != 200:
            assert time.monotonic() - started < RECOVERY_LIMIT_SECONDS, "no recovery"
            await asyncio.sleep(0.1)
        await asyncio.sleep(OUTAGE_SETTLE_SECONDS)
        again = await client.get(f"{API}/users/me", headers=headers)
        up = metrics.registry.get_sample_value("database_down")

    assert refused == [503] * REFUSED_DURING_OUTAGE
    assert again.status_code == 200
    assert (down, up) == (1, 0)
    outage_lines = [
        record
        for record in caplog.records
        if record.name != "backend.access" and record.getMessage().startswith("database")
    ]
    assert [record.levelname for record in outage_lines] == ["WARNING", "WARNING"], [
        record.getMessage() for record in outage_lines
    ]
    start, end = (record.getMessage() for record in outage_lines)
    assert re.fullmatch(r"database unavailable \(\w+\): .*", start), start
    assert re.fullmatch(
        rf"database available again after [\d.]+ s; {REFUSED_DURING_OUTAGE} requests "
        "answered 503 meanwhile",
        end,
    ), end
    # Each refused request is still a line of the access log.
    access = [record for record in caplog.records if record.name == "backend.access"]
    assert sum(record.__dict__["status"] == 503 for record in access) == REFUSED_DURING_OUTAGE
