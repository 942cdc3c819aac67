"""The measured scenarios. Each returns plain results; bench/report.py turns them into text."""

import math
import statistics
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from pwdlib import PasswordHash
from pwdlib.hashers.bcrypt import BcryptHasher

from bench.database import ADMIN_EMAIL, USER_PASSWORD
from bench.servers import Server, login, request, rss_kib
from bench.wrk import Job, Wrk, WrkResult, collect

# At most this many wrk bursts to reach one memory checkpoint, so the loop is bounded.
MAX_MEMORY_BURSTS = 20


@dataclass(frozen=True)
class Endpoint:
    key: str
    label: str
    path: str
    script: str
    # The app's throughput target as a share of the bare server's, where there is one.
    target_ratio: float | None = None
    # Whether the fastapi-users peer has this endpoint (it has no list).
    on_peer: bool = False
    # The app's throughput target as a multiple of the peer's, where there is one; its p99
    # must then also be at most PEER_P99_SHARE of the peer's.
    peer_ratio: float | None = None

    def job(self, server: Server, *, token: str, users: int, connections: int, seconds: int) -> Job:
        return Job(
            url=server.url + self.path,
            script=self.script,
            seconds=seconds,
            connections=connections,
            headers=(f"Authorization: Bearer {token}",),
            args=(str(users),),
        )


# Issue 13's targets against the fastapi-users peer.
PEER_RATIO_TARGET = 2.0
PEER_P99_SHARE = 0.5
READS = (
    Endpoint(
        "list", "GET /users?per_page=10", "/api/v1/users?page=1&per_page=10", "static.lua", 0.35
    ),
    Endpoint(
        "by_id",
        "GET /users/{id}",
        "/api/v1/users/",
        "user_by_id.lua",
        on_peer=True,
        peer_ratio=PEER_RATIO_TARGET,
    ),
    Endpoint(
        "me",
        "GET /users/me",
        "/api/v1/users/me",
        "static.lua",
        on_peer=True,
        peer_ratio=PEER_RATIO_TARGET,
    ),
    Endpoint("health", "GET /health", "/health", "static.lua", 0.5, on_peer=True),
)
BY_ID = READS[1]
READS_BY_KEY = {endpoint.key: endpoint for endpoint in READS}
# The four read endpoints in turn: the memory phase's traffic.
MIXED = Endpoint("mixed", "mixed reads", "", "mixed.lua")


@dataclass(frozen=True)
class Options:
    users: int
    seconds: int
    warmup: int
    runs: int
    connections: int
    login_connections: int
    refresh_connections: int
    # The login storm: its readers' endpoint, and its login connections, one storm each.
    storm_reads: Endpoint
    storm_login_connections: tuple[int, ...]
    bcrypt_rounds: int
    hash_concurrency: int
    hash_queue_limit: int
    login_max_wait_seconds: float
    db_pool_size: int
    db_max_overflow: int
    memory_checkpoints: tuple[int, ...]
    verify_samples: int
    profile_seconds: int


@dataclass
class Load:
    """What every scenario needs: wrk, the options, the users and tokens to read with.

    `tokens` holds an access token per server name: the app's also works on the bare
    server (same secret and tables); the peer mints its own.
    """

    wrk: Wrk
    options: Options
    work_dir: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def read_job(self, server: Server, endpoint: Endpoint, seconds: int) -> Job:
        return endpoint.job(
            server,
            token=self.tokens[server.name],
            users=self.options.users,
            connections=self.options.connections,
            seconds=seconds,
        )

    def login_job(self, server: Server, seconds: int, connections: int) -> Job:
        return Job(
            url=server.url,
            script="login.lua",
            seconds=seconds,
            connections=connections,
            threads=connections,  # one connection a thread: login.lua times by status
            args=(str(self.options.users), urllib.parse.quote(USER_PASSWORD, safe="")),
        )


# Results per endpoint key, then per server name, one WrkResult per run.
Runs = dict[str, dict[str, list[WrkResult]]]


def measure_verify_seconds(hashed_password: str, rounds: int, samples: int) -> float:
    """CPU time of one bcrypt verify (median), in this process, as the app's hasher does it."""
    context = PasswordHash((BcryptHasher(rounds=rounds),))
    times = []
    for _ in range(samples):
        started = time.thread_time()
        if not context.verify(USER_PASSWORD, hashed_password):
            raise RuntimeError("the seeded hash does not verify the seeded password")
        times.append(time.thread_time() - started)
    return statistics.median(times)


@dataclass
class Memory:
    idle_kib: int
    # (requests served so far, VmRSS in KiB) at each checkpoint.
    checkpoints: list[tuple[int, int]] = field(default_factory=list)


def memory(load: Load, app: Server) -> Memory:
    """VmRSS of the fresh worker idle, then after the first N requests of read traffic.

    The one login after the idle reading (counted as a request) gives load.token, which
    every later read uses. wrk runs for whole seconds, so each checkpoint is approached in
    bursts that stay under it at the rate seen so far, then passed with a 1 s burst, and
    is reported with the count it was read at (at most about a second of traffic over).
    """
    (pid,) = app.worker_pids()
    time.sleep(1)  # let start-up garbage settle before calling it idle
    result = Memory(idle_kib=rss_kib(pid))
    load.tokens["app"] = str(login(app, ADMIN_EMAIL, USER_PASSWORD)["access_token"])
    served, rate = 1, 0.0
    for checkpoint in load.options.memory_checkpoints:
        for _ in range(MAX_MEMORY_BURSTS):
            if served >= checkpoint:
                break
            seconds = max(1, math.floor((checkpoint - served) / rate)) if rate else 1
            run = load.wrk.run(load.read_job(app, MIXED, seconds))
            if run.failed:
                raise RuntimeError(f"the memory load had failed requests: {run.errors}")
            served += run.requests
            rate = run.rps
        result.checkpoints.append((served, rss_kib(pid)))
    return result


# Headers that carry content (random request ids and dates are left out).
COMPARED_HEADERS = ("etag", "x-total-count", "content-range", "link", "cache-control")


def check_same_answers(app: Server, bare: Server, token: str) -> None:
    """The bare server must answer exactly like the app, or the ratios mean nothing."""
    for path in (READS[0].path, f"{BY_ID.path}2", READS[2].path, READS[3].path):
        answers = []
        for server in (app, bare):
            status, body, headers = request("GET", server.url + path, token=token)
            # Link holds absolute URLs, and the two servers listen on different ports.
            compared = {
                name: headers[name].replace(server.url, "")
                for name in COMPARED_HEADERS
                if name in headers
            }
            answers.append((status, body, compared))
        if answers[0] != answers[1]:
            raise RuntimeError(f"app and bare differ on {path}:\n{answers[0]}\n{answers[1]}")
    app_login, bare_login = (login(server, ADMIN_EMAIL, USER_PASSWORD) for server in (app, bare))
    if app_login.keys() != bare_login.keys() or app_login["user"] != bare_login["user"]:
        raise RuntimeError(f"app and bare logins differ:\n{app_login}\n{bare_login}")


# What the peer's user (fastapi-users' UserRead: id, email, is_active, is_superuser,
# is_verified) has in common with the app's (UserPublic: id, email, name, role,
# is_active, created_at, updated_at).
PEER_COMPARED_FIELDS = ("id", "email", "is_active")


def peer_token(peer: Server) -> str:
    """The peer's own token for the admin, from its login route, after checking the answer.

    fastapi-users answers a login with only the token and its type (no refresh token,
    no user), so that is all there is to check.
    """
    answer = login(peer, ADMIN_EMAIL, USER_PASSWORD)
    if answer.keys() != {"access_token", "token_type"} or answer["token_type"] != "bearer":  # noqa: S105
        raise RuntimeError(f"the peer's login answered {answer}")
    return str(answer["access_token"])


def check_peer_answers(app: Server, peer: Server, tokens: dict[str, str]) -> None:
    """The peer must serve the same user on the endpoints it has, in its own shape."""
    for endpoint in READS:
        if not endpoint.on_peer:
            continue
        path = f"{BY_ID.path}2" if endpoint is BY_ID else endpoint.path
        answers = []
        for server in (app, peer):
            status, body, _ = request("GET", server.url + path, token=tokens[server.name])
            if status == 200 and endpoint.key != "health":
                body = {name: body.get(name) for name in PEER_COMPARED_FIELDS}
            answers.append((status, body))
        if answers[0] != answers[1]:
            raise RuntimeError(f"app and peer differ on {path}:\n{answers[0]}\n{answers[1]}")


def serving(servers: dict[str, Server], endpoint: Endpoint) -> dict[str, Server]:
    """The servers that have the endpoint: all but the peer where the peer lacks it."""
    return {name: server for name, server in servers.items() if name != "peer" or endpoint.on_peer}


def alternating(
    load: Load, servers: dict[str, Server], label: str, job_for: Callable[[Server], Job]
) -> dict[str, list[WrkResult]]:
    """`runs` runs per server, alternating app, peer, bare, app... so drift hits all alike."""
    results: dict[str, list[WrkResult]] = {name: [] for name in servers}
    for _ in range(load.options.runs):
        for name, server in servers.items():
            run = load.wrk.run(job_for(server))
            results[name].append(run)
            print(f"  {label:24} {name:5} {describe(run)}", flush=True)
    return results


def reads(load: Load, servers: dict[str, Server], endpoints: tuple[Endpoint, ...]) -> Runs:
    """Per endpoint: warm each server up, then the alternating runs."""
    results: Runs = {}
    for endpoint in endpoints:
        measured = serving(servers, endpoint)
        for server in measured.values():
            load.wrk.run(load.read_job(server, endpoint, load.options.warmup))
        job_for = partial(load.read_job, endpoint=endpoint, seconds=load.options.seconds)
        results[endpoint.key] = alternating(load, measured, endpoint.label, job_for)
    return results


def logins(load: Load, servers: dict[str, Server]) -> dict[str, list[WrkResult]]:
    options = load.options
    return alternating(
        load,
        servers,
        "POST /auth/login",
        lambda server: load.login_job(server, options.seconds, options.login_connections),
    )


def refresh_available(app: Server) -> bool:
    tokens = login(app, ADMIN_EMAIL, USER_PASSWORD)
    status, _, _ = request(
        "POST",
        f"{app.url}/api/v1/auth/refresh",
        json_body={"refresh_token": tokens["refresh_token"]},
    )
    return status != 404


def refreshes(load: Load, servers: dict[str, Server]) -> dict[str, list[WrkResult]]:
    """Refresh chains, one per connection, each starting from a token issued just before."""
    connections = load.options.refresh_connections
    tokens_file = load.work_dir / "refresh-tokens.txt"
    fallback_login = (
        f"username={urllib.parse.quote(ADMIN_EMAIL, safe='')}"
        f"&password={urllib.parse.quote(USER_PASSWORD, safe='')}"
    )

    def job_for(server: Server) -> Job:
        # Fresh tokens every run: the previous run retired the ones it used.
        tokens = [
            str(login(server, f"user{number}@bench.example", USER_PASSWORD)["refresh_token"])
            for number in range(1, connections + 1)
        ]
        tokens_file.write_text("\n".join(tokens) + "\n")
        return Job(
            url=server.url,
            script="refresh.lua",
            seconds=load.options.seconds,
            connections=connections,
            threads=connections,  # one connection per thread: see bench/lua/refresh.lua
            args=(str(tokens_file), fallback_login),
        )

    return alternating(load, servers, "POST /auth/refresh", job_for)


@dataclass
class StormLevel:
    login_connections: int
    reads: list[WrkResult] = field(default_factory=list)
    logins: list[WrkResult] = field(default_factory=list)


@dataclass
class Storm:
    reads: Endpoint
    quiet: list[WrkResult] = field(default_factory=list)
    levels: list[StormLevel] = field(default_factory=list)


def login_storm(load: Load, app: Server) -> Storm:
    """The storm's reads alone, then again while each number of connections logs in; `runs` times.

    The logins start first and end last, so the whole read window is under storm.
    """
    options = load.options
    storm = Storm(reads=options.storm_reads)
    storm.levels = [StormLevel(connections) for connections in options.storm_login_connections]
    for _ in range(options.runs):
        quiet = load.wrk.run(load.read_job(app, storm.reads, options.seconds))
        storm.quiet.append(quiet)
        print(f"  {'storm, quiet: ' + storm.reads.label:40} app   {describe(quiet)}", flush=True)
        for level in storm.levels:
            login_job = load.login_job(app, options.seconds + 2, level.login_connections)
            with load.wrk.background(login_job) as login_process:
                time.sleep(1)
                reads = load.wrk.run(load.read_job(app, storm.reads, options.seconds))
                logged_in = collect(login_process, login_job)
            level.reads.append(reads)
            level.logins.append(logged_in)
            for what, run in ((storm.reads.label, reads), ("POST /auth/login", logged_in)):
                label = f"storm, {level.login_connections} logging in: {what}"
                print(f"  {label:40} app   {describe(run)}", flush=True)
    return storm


def describe(run: WrkResult) -> str:
    text = f"{run.rps:9.1f} req/s  p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms"
    if run.failed:
        text += f"  failed {run.errors}"
    if run.counters:
        text += f"  {run.counters}"
    for status, timed in run.by_status.items():
        text += f"  {status}: {timed.count} p99 {timed.p99_ms:.1f} ms"
    return text
