"""Soak: a paced mixed workload on the app for minutes, watching errors, latency and memory.

    uv run --group bench python -m bench.soak [--minutes 10 | --seconds 20] [--users 1000]

Seeds its own PostgreSQL database (bench_soak), serves the app with one uvicorn worker
on the first core and drives it from this process on the second: a warm-up, the mix
unpaced to measure its peak throughput, then the same mix paced at 70% of that peak.
Per interval (a minute; 5 s with --seconds) it records requests, errors, p50/p99 and
the worker's RSS. --minutes writes bench/results/soak-<date>.md; --seconds (CI) writes
bench/.work/soak-smoke.md. Exits 1 on any error, and with --minutes also when RSS grew
10% or more after the first interval. See bench/README.md, "Soak".
"""

import argparse
import asyncio
import itertools
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import httpx
import orjson

from bench import database
from bench.database import ADMIN_EMAIL, USER_PASSWORD
from bench.harness import RESULTS_DIR, WORK_DIR, Run, entry_point
from bench.report import RSS_GROWTH_TARGET, heading, megabytes, save, table, verdict
from bench.servers import APP, login, rss_kib, server_env, start_server

DATABASE = "bench_soak"  # not `bench`: the main harness drops and recreates that one
TARGET_SHARE = 0.70  # of the measured peak: busy, but with headroom, so queues stay short
# Virtual clients, each on its own keep-alive connection: as many as the harness's wrk.
CLIENTS = 32
TIMEOUT_SECONDS = 10.0  # as the harness's wrk: a slow answer is a latency, not a drop
# Idle connections are dropped before uvicorn's 5 s keep-alive timeout closes them. At
# httpx's default (5 s too) the server can close one just as it is reused, and the
# request fails with a ReadError that is the client's doing, not the app's.
KEEPALIVE_SECONDS = 3.0
# Cheap enough that logins and registers stay in the mix (one verify ~12 ms of CPU
# here, against ~200 ms at the app's default 12); bench/README.md, "Soak", says why.
BCRYPT_ROUNDS = 8
# Operations and their weights in percent. Each virtual client picks one at a time.
MIX = {
    "GET /users": 30,
    "GET /users/{id}": 30,
    "GET /users/me": 30,
    "POST /auth/refresh": 4,
    "PATCH /users/{id}": 3,
    "POST /auth/login": 2,
    "POST /auth/register": 1,
}
LOGIN = "POST /auth/login"
PER_PAGE = 10
REGISTER_PASSWORD = "Soak-Password-1"  # noqa: S105  (accounts made by the soak itself)
# The text kept of the first unexpected answer of each kind, for the results file.
ANSWER_EXCERPT_CHARS = 300


@dataclass(frozen=True)
class Plan:
    """The phases' lengths; --seconds is the CI version, shorter in every phase."""

    ci: bool
    users: int
    soak_seconds: int
    interval_seconds: int
    warmup_seconds: int
    peak_seconds: int


@dataclass
class VirtualClient:
    """One simulated user agent: sends one request at a time, keeps its newest tokens."""

    access_token: str | None = None
    refresh_token: str | None = None


@dataclass
class Tally:
    """One phase's requests: latencies per interval and per operation, and the errors."""

    start: float
    interval_seconds: float
    latencies: list[list[float]]
    interval_errors: list[int]
    # How late the most delayed request of each interval started against its schedule:
    # above a few ms, every client was busy and the generator fell behind.
    max_lag: list[float]
    rss_kib: list[int] = field(default_factory=list)
    by_operation: dict[str, list[float]] = field(default_factory=dict)
    operation_errors: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    first_answers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def new(cls, start: float, interval_seconds: float, intervals: int) -> "Tally":
        return cls(
            start=start,
            interval_seconds=interval_seconds,
            latencies=[[] for _ in range(intervals)],
            interval_errors=[0] * intervals,
            max_lag=[0.0] * intervals,
        )

    def interval(self, started: float) -> int:
        # Requests in flight at the end belong to the last interval, not a new one.
        index = int((started - self.start) / self.interval_seconds)
        return min(max(index, 0), len(self.latencies) - 1)

    def record(self, operation: str, started: float, seconds: float) -> None:
        self.latencies[self.interval(started)].append(seconds)
        self.by_operation.setdefault(operation, []).append(seconds)

    def record_error(
        self, operation: str, started: float, seconds: float, kind: str, answer: str
    ) -> None:
        self.record(operation, started, seconds)
        self.interval_errors[self.interval(started)] += 1
        self.operation_errors[operation] += 1
        self.errors[kind] += 1
        self.first_answers.setdefault(kind, answer[:ANSWER_EXCERPT_CHARS])

    def record_lag(self, started: float, lag: float) -> None:
        index = self.interval(started)
        self.max_lag[index] = max(self.max_lag[index], lag)

    @property
    def requests(self) -> int:
        return sum(len(values) for values in self.latencies)


class Schedule:
    """Start times 1/rate apart, handed out in order to whichever client asks next.

    A global rate limit that does not slow down with the server: a client that comes
    back late takes the next start time due, which may already be past (the lag).
    """

    def __init__(self, start: float, rate: float, end: float) -> None:
        self.start, self.rate, self.end = start, rate, end
        self.issued = 0

    def next_start(self) -> float | None:
        at = self.start + self.issued / self.rate
        if at >= self.end:
            return None
        self.issued += 1
        return at


class Workload:
    """The mix, sent by the virtual clients over one shared connection pool."""

    def __init__(self, http: httpx.AsyncClient, users: int, admin_token: str) -> None:
        self.http = http
        self.users = users
        self.admin_token = admin_token
        self.random = random.Random(42)
        self.operations = list(MIX)
        self.cumulative_weights = list(itertools.accumulate(MIX.values()))
        self.registrations = itertools.count(1)
        self.edits = itertools.count(1)
        # Set by each phase: where the requests of the phase running now are recorded.
        self.tally: Tally

    async def phase(
        self,
        clients: list[VirtualClient],
        seconds: float,
        *,
        rate: float | None = None,
        interval_seconds: float | None = None,
        worker_pid: int | None = None,
    ) -> Tally:
        """Every client runs the mix for `seconds`, unpaced or at `rate` requests/s in all.

        With worker_pid, that process's RSS is read at the end of each interval.
        """
        start = time.monotonic()
        interval = interval_seconds or seconds
        intervals = math.ceil(seconds / interval)
        self.tally = Tally.new(start, interval, intervals)
        schedule = Schedule(start, rate, start + seconds) if rate else None
        runs = [self.run_client(client, schedule, start + seconds) for client in clients]
        if worker_pid is not None:
            runs.append(self.watch_memory(worker_pid, start, interval, intervals))
        await asyncio.gather(*runs)
        return self.tally

    async def run_client(
        self, client: VirtualClient, schedule: Schedule | None, deadline: float
    ) -> None:
        # Bounded: by the deadline, or by the schedule's last start time.
        while True:
            if schedule is None:
                if time.monotonic() >= deadline:
                    return
            else:
                at = schedule.next_start()
                if at is None:
                    return
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    self.tally.record_lag(at, -delay)
            await self.perform(client)

    async def watch_memory(self, pid: int, start: float, interval: float, intervals: int) -> None:
        for index in range(1, intervals + 1):
            await asyncio.sleep(max(0.0, start + index * interval - time.monotonic()))
            self.tally.rss_kib.append(rss_kib(pid))
            # Progress for whoever watches a 10-minute run.
            print(
                f"interval {index}/{intervals}: {len(self.tally.latencies[index - 1])} requests, "
                f"{self.tally.interval_errors[index - 1]} errors, "
                f"RSS {megabytes(self.tally.rss_kib[-1]):.1f} MB",
                flush=True,
            )

    async def perform(self, client: VirtualClient) -> None:
        # A client without a session (at the start, or after its refresh failed) logs in.
        if client.access_token is None:
            operation = LOGIN
        else:
            operation = self.random.choices(self.operations, cum_weights=self.cumulative_weights)[0]
        match operation:
            case "GET /users":
                page = self.random.randint(1, math.ceil(self.users / PER_PAGE))
                await self.send(
                    operation, "GET", f"/users?per_page={PER_PAGE}&page={page}", client.access_token
                )
            case "GET /users/{id}":
                user_id = self.random.randint(1, self.users)
                await self.send(operation, "GET", f"/users/{user_id}", client.access_token)
            case "GET /users/me":
                await self.send(operation, "GET", "/users/me", client.access_token)
            case "POST /auth/refresh":
                body = {"refresh_token": client.refresh_token}
                response = await self.send(operation, "POST", "/auth/refresh", json=body)
                # The old refresh token is retired either way: without a new one, log in.
                adopt(client, response)
            case "PATCH /users/{id}":
                # Never the admin (user 1): a name change of any plain seeded user.
                user_id = self.random.randint(2, self.users)
                body = {"name": f"Soak Edit {next(self.edits)}"}
                await self.send(
                    operation, "PATCH", f"/users/{user_id}", self.admin_token, json=body
                )
            case "POST /auth/login":
                number = self.random.randint(2, self.users)
                form = {"username": f"user{number}@bench.example", "password": USER_PASSWORD}
                adopt(client, await self.send(operation, "POST", "/auth/login", data=form))
            case "POST /auth/register":
                number = next(self.registrations)
                body = {
                    "email": f"soak{number}@bench.example",
                    "name": f"Soak User {number}",
                    "password": REGISTER_PASSWORD,
                }
                adopt(client, await self.send(operation, "POST", "/auth/register", json=body))

    async def send(
        self,
        operation: str,
        method: str,
        path: str,
        token: str | None = None,
        *,
        json: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
    ) -> httpx.Response | None:
        """One request, timed and recorded; the response when it is a 2xx, else None."""
        headers = {"Authorization": f"Bearer {token}"} if token else None
        started = time.monotonic()
        try:
            response = await self.http.request(method, path, headers=headers, json=json, data=data)
        except httpx.HTTPError as error:
            kind = f"{operation}: {type(error).__name__}"
            self.tally.record_error(
                operation, started, time.monotonic() - started, kind, repr(error)
            )
            return None
        seconds = time.monotonic() - started
        # The mix only sends requests that should succeed: any other answer is an error.
        if not response.is_success:
            kind = f"{operation} -> {response.status_code}"
            self.tally.record_error(operation, started, seconds, kind, response.text)
            return None
        self.tally.record(operation, started, seconds)
        return response


def adopt(client: VirtualClient, response: httpx.Response | None) -> None:
    """Take the tokens of a login, register or refresh answer; None leaves no session."""
    tokens = orjson.loads(response.content) if response else {}
    client.access_token = tokens.get("access_token")
    client.refresh_token = tokens.get("refresh_token")


@dataclass
class Outcome:
    peak: Tally
    peak_seconds: float
    peak_cpu_share: float
    target_rate: float
    rss_before_kib: int
    soak: Tally
    soak_seconds: float
    soak_cpu_share: float


async def drive(url: str, worker_pid: int, plan: Plan, admin_token: str) -> Outcome:
    limits = httpx.Limits(
        max_connections=CLIENTS,
        max_keepalive_connections=CLIENTS,
        keepalive_expiry=KEEPALIVE_SECONDS,
    )
    async with httpx.AsyncClient(
        base_url=f"{url}/api/v1", limits=limits, timeout=TIMEOUT_SECONDS
    ) as http:
        workload = Workload(http, plan.users, admin_token)
        clients = [VirtualClient() for _ in range(CLIENTS)]
        # Logs every client in and fills the connection pool; not measured.
        print(f"warm-up, {plan.warmup_seconds} s", flush=True)
        await workload.phase(clients, plan.warmup_seconds)

        print(f"peak: the mix unpaced for {plan.peak_seconds} s", flush=True)
        cpu, started = time.process_time(), time.monotonic()
        peak = await workload.phase(clients, plan.peak_seconds)
        peak_seconds = time.monotonic() - started
        peak_cpu_share = (time.process_time() - cpu) / peak_seconds
        target_rate = TARGET_SHARE * peak.requests / plan.peak_seconds
        print(
            f"peak {peak.requests / plan.peak_seconds:.0f} req/s, "
            f"pacing at {target_rate:.0f} req/s for {plan.soak_seconds} s",
            flush=True,
        )

        rss_before_kib = rss_kib(worker_pid)
        cpu, started = time.process_time(), time.monotonic()
        soak = await workload.phase(
            clients,
            plan.soak_seconds,
            rate=target_rate,
            interval_seconds=plan.interval_seconds,
            worker_pid=worker_pid,
        )
        soak_seconds = time.monotonic() - started
        return Outcome(
            peak=peak,
            peak_seconds=peak_seconds,
            peak_cpu_share=peak_cpu_share,
            target_rate=target_rate,
            rss_before_kib=rss_before_kib,
            soak=soak,
            soak_seconds=soak_seconds,
            soak_cpu_share=(time.process_time() - cpu) / soak_seconds,
        )


def percentile_ms(values: list[float], share: float) -> float:
    """Nearest-rank percentile in milliseconds; NaN when nothing was recorded."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)] * 1000


def rss_growth(outcome: Outcome) -> float:
    """From the end of the first interval to the end of the last (warm-up excluded)."""
    rss = outcome.soak.rss_kib
    return rss[-1] / rss[0] - 1


def report(outcome: Outcome, plan: Plan, soak_run: Run, postgres_version: str) -> str:
    soak, peak = outcome.soak, outcome.peak
    unit = "5 s" if plan.ci else "minute"
    errors = sum(soak.errors.values()) + sum(peak.errors.values())
    achieved = soak.requests / outcome.soak_seconds
    growth = rss_growth(outcome)
    rss = soak.rss_kib
    rss_text = (
        f"{growth:+.1%} ({megabytes(rss[0]):.1f} MB at the end of the first {unit}, "
        f"{megabytes(rss[-1]):.1f} MB at the end)"
    )
    verdicts = [
        ("errors, peak and soak (must be 0)", errors, verdict(errors == 0)),
        (
            f"RSS growth after the first {unit} (< {RSS_GROWTH_TARGET:.0%})",
            rss_text,
            "reported, not judged: too short" if plan.ci else verdict(growth < RSS_GROWTH_TARGET),
        ),
        (
            "achieved rate",
            f"{achieved:.1f} req/s of {outcome.target_rate:.1f} targeted "
            f"({achieved / outcome.target_rate:.1%})",
            "",
        ),
    ]
    intervals: list[tuple[object, ...]] = [
        ("start", "", "", "", "", "", "", f"{megabytes(outcome.rss_before_kib):.1f}")
    ]
    for index, latencies in enumerate(soak.latencies):
        seconds = min(soak.interval_seconds, plan.soak_seconds - index * soak.interval_seconds)
        intervals.append(
            (index + 1, f"{len(latencies):,}", f"{len(latencies) / seconds:.1f}",
             soak.interval_errors[index], f"{percentile_ms(latencies, 0.50):.1f}",
             f"{percentile_ms(latencies, 0.99):.1f}", f"{soak.max_lag[index] * 1000:.0f}",
             f"{megabytes(rss[index]):.1f}" if index < len(rss) else "")
        )  # fmt: skip
    operations = []
    for operation in MIX:
        values = soak.by_operation.get(operation, [])
        operations.append(
            (operation, f"{len(values):,}", f"{len(values) / max(soak.requests, 1):.1%}",
             f"{percentile_ms(values, 0.50):.1f}", f"{percentile_ms(values, 0.99):.1f}",
             soak.operation_errors[operation])
        )  # fmt: skip
    machine = soak_run.machine(postgres_version, f"httpx {httpx.__version__}")
    title = f"Soak {date.today().isoformat()}" + (" (CI version)" if plan.ci else "")
    lines = [
        *heading(title, soak_run.command, machine),
        "",
        f"Set-up: {plan.users:,} seeded users in the database `{DATABASE}`. The app "
        f"(`{APP}`) as 1 uvicorn worker (uvloop, httptools, access log off) pinned to core "
        f"{soak_run.cores.server}; the load generator (this script: asyncio, httpx, HTTP/1.1 "
        f"keep-alive) pinned to core {soak_run.cores.load}; PostgreSQL not pinned. {CLIENTS} "
        f"virtual clients on a pool of {CLIENTS} connections (idle ones closed after "
        f"{KEEPALIVE_SECONDS:.0f} s), timeout {TIMEOUT_SECONDS:.0f} s, each sending one "
        f"request at a time with its own newest tokens. BCRYPT_ROUNDS={BCRYPT_ROUNDS}, "
        "RATE_LIMIT_ENABLED=false, the app's defaults otherwise (HASH_CONCURRENCY=1 on 2 "
        "cores, HASH_QUEUE_LIMIT=32, DB pool 10+10).",
        "",
        "Mix: "
        + ", ".join(f"{operation} {weight}%" for operation, weight in MIX.items())
        + f". Lists are `per_page={PER_PAGE}` at a random page, ids random over the seeded "
        "users, edits a name change of a random non-admin user by the admin, logins as a "
        "random seeded user, registrations with new emails; a client takes over the "
        "session of its login, registration or refresh.",
        "",
        f"Phases: {plan.warmup_seconds} s warm-up (each client logs in), {plan.peak_seconds} s "
        f"of the mix unpaced (the peak), then {plan.soak_seconds} s paced at "
        f"{TARGET_SHARE:.0%} of the peak by a global schedule of start times.",
        "",
        "## Verdicts",
        "",
        *table(("check", "measured", ""), verdicts),
        "",
        "## Peak",
        "",
        f"{peak.requests:,} requests in {plan.peak_seconds} s unpaced: "
        f"**{peak.requests / plan.peak_seconds:.1f} req/s**, p50 "
        f"{percentile_ms(peak.latencies[0], 0.50):.1f} ms, p99 "
        f"{percentile_ms(peak.latencies[0], 0.99):.1f} ms, {sum(peak.errors.values())} errors. "
        f"Target for the soak: {TARGET_SHARE:.0%} of it, {outcome.target_rate:.1f} req/s. "
        f"The load generator used {outcome.peak_cpu_share:.0%} of its core meanwhile "
        f"({outcome.soak_cpu_share:.0%} during the soak): near 100% would mean the "
        "peak is the generator's, not the app's.",
        "",
        f"## Per {unit}",
        "",
        "Requests counted in the interval they started in. Max lag: how late the most "
        "delayed request started against its schedule. RSS: VmRSS of the app worker at "
        "the end of the interval.",
        "",
        *table(
            (unit, "requests", "req/s", "errors", "p50 ms", "p99 ms", "max lag ms", "RSS MB"),
            intervals,
            "r" * 8,
        ),
        "",
        "## By operation, whole soak",
        "",
        *table(
            ("operation", "requests", "share", "p50 ms", "p99 ms", "errors"), operations, "lrrrrr"
        ),
    ]
    if errors:
        error_rows = [
            (
                phase,
                kind,
                count,
                "`" + tally.first_answers[kind].replace("|", "\\|").replace("\n", " ") + "`",
            )
            for phase, tally in (("peak", peak), ("soak", soak))
            for kind, count in tally.errors.most_common()
        ]
        lines += ["", "## Errors", ""]
        lines += table(("phase", "request -> answer", "count", "first answer"), error_rows, "llrl")
    lines += ["", f"Elapsed: {soak_run.elapsed_seconds:.0f} s in all (database set-up included)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> Plan:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Soak the app with a paced mixed workload (bench/README.md, Soak).",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--minutes", type=int, default=10, help="soak length, per-minute figures (default 10)"
    )
    length.add_argument(
        "--seconds",
        type=int,
        help="the CI version: soak length, per-5-s figures; writes bench/.work/soak-smoke.md",
    )
    parser.add_argument("--users", type=int, default=1000, help="seeded users (default 1000)")
    args = parser.parse_args(argv)
    if args.users < 2:
        parser.error("--users must be at least 2: the admin and someone to edit")
    if (args.seconds if args.seconds is not None else args.minutes) < 1:
        parser.error("the soak must last at least 1 second or minute")
    if args.seconds is not None:
        return Plan(ci=True, users=args.users, soak_seconds=args.seconds, interval_seconds=5,
                    warmup_seconds=1, peak_seconds=3)  # fmt: skip
    return Plan(ci=False, users=args.users, soak_seconds=args.minutes * 60, interval_seconds=60,
                warmup_seconds=2, peak_seconds=15)  # fmt: skip


def run(argv: list[str]) -> int:
    plan = parse_args(argv)
    soak_run = Run("bench.soak", argv)
    seeded = database.create(DATABASE, plan.users, BCRYPT_ROUNDS)
    total_seconds = plan.warmup_seconds + plan.peak_seconds + plan.soak_seconds
    env = server_env(
        seeded.url,
        BCRYPT_ROUNDS=BCRYPT_ROUNDS,
        # The admin's one access token must outlive the run (clients refresh theirs).
        ACCESS_TOKEN_EXPIRE_MINUTES=math.ceil(total_seconds / 60) + 30,
    )
    cores = str(soak_run.cores.server)
    server = start_server("soak-app", APP, env=env, cores=cores, workers=1, work_dir=WORK_DIR)
    try:
        admin_token = str(login(server, ADMIN_EMAIL, USER_PASSWORD)["access_token"])
        outcome = asyncio.run(drive(server.url, server.worker_pids()[0], plan, admin_token))
    finally:
        server.stop()

    text = report(outcome, plan, soak_run, seeded.postgres_version)
    print(text)
    today = date.today().isoformat()
    save(WORK_DIR / "soak-smoke.md" if plan.ci else RESULTS_DIR / f"soak-{today}.md", text)
    errors = sum(outcome.soak.errors.values()) + sum(outcome.peak.errors.values())
    grew = not plan.ci and rss_growth(outcome) >= RSS_GROWTH_TARGET
    return 1 if errors or grew else 0


if __name__ == "__main__":
    raise SystemExit(entry_point(run))
