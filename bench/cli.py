"""`python -m bench`: set up the database, run every scenario, write the results file."""

import argparse
import datetime
import os
from contextlib import ExitStack

from bench import database, profiling, report, scenarios
from bench.harness import RESULTS_DIR, WORK_DIR, Cores, Run, entry_point
from bench.scenarios import READS, READS_BY_KEY, Endpoint, Load, Options
from bench.servers import APP, BARE, PEER, Server, login, server_env, start_server
from bench.wrk import Wrk, ensure_wrk

# Outlives the longest run, so no access token expires mid-measurement.
ACCESS_TOKEN_MINUTES = 240


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load-benchmark the app against a fastapi-users peer and a bare reference "
        "server, in the same alternating runs (bench/README.md).",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--smoke",
        action="store_true",
        help="1 s runs, 100 users, every scenario once (CI); writes bench/.work/smoke.md",
    )
    mode.add_argument(
        "--profile",
        nargs="?",
        const="by_id",
        choices=list(scenarios.READS_BY_KEY),
        help="only profile one read endpoint (default by_id: GET /users/{id}) with py-spy; "
        "writes bench/results/DATE-profile[-ENDPOINT].md",
    )
    parser.add_argument("--users", type=int, help="seeded users (default 1000; smoke 100)")
    parser.add_argument("--seconds", type=int, help="length of each measured run (default 10)")
    parser.add_argument("--warmup", type=int, help="warm-up per server and endpoint (default 2)")
    parser.add_argument("--runs", type=int, help="runs per server and scenario (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="for reads (default 32)")
    parser.add_argument("--login-connections", type=int, default=4)
    parser.add_argument("--refresh-connections", type=int, default=8)
    parser.add_argument(
        "--storm-reads",
        choices=READS_BY_KEY,
        default="by_id",
        help="the endpoint the login storm's readers hit (default by_id: GET /users/{id})",
    )
    parser.add_argument(
        "--storm-login-connections",
        type=int,
        nargs="+",
        metavar="N",
        help="one login storm per number of login connections, e.g. 8 22 32 "
        "(default: --login-connections)",
    )
    parser.add_argument("--bcrypt-rounds", type=int, default=12)
    parser.add_argument(
        "--hash-concurrency",
        type=int,
        default=max(1, (os.cpu_count() or 1) // 2),
        help="HASH_CONCURRENCY for the app and bare server (default: the app's, half the "
        "cores); the peer verifies on its event loop",
    )
    parser.add_argument("--hash-queue-limit", type=int, default=32)
    parser.add_argument(
        "--login-max-wait-seconds",
        type=float,
        default=2.0,
        help="LOGIN_MAX_WAIT_SECONDS for the app (default 2, the app's); the storm's "
        "admitted logins are held to it",
    )
    parser.add_argument(
        "--db-pool-size", type=int, default=10, help="every server's pool, the peer's too"
    )
    parser.add_argument("--db-max-overflow", type=int, default=10, help="likewise")
    parser.add_argument(
        "--profile-seconds", type=int, help="py-spy sampling time (default 20; smoke 1)"
    )
    args = parser.parse_args(argv)
    if args.users is not None and args.users < args.refresh_connections:
        # Each refresh chain starts from its own login, as user1, user2...
        parser.error("--users must be at least --refresh-connections")
    return args


def options_from(args: argparse.Namespace) -> Options:
    smoke = args.smoke

    def pick(value: int | None, default: int, smoke_default: int) -> int:
        return value if value is not None else (smoke_default if smoke else default)

    return Options(
        users=pick(args.users, 1000, 100),
        seconds=pick(args.seconds, 10, 1),
        warmup=pick(args.warmup, 2, 1),
        runs=pick(args.runs, 2, 1),
        connections=args.connections,
        login_connections=args.login_connections,
        refresh_connections=args.refresh_connections,
        storm_reads=READS_BY_KEY[args.storm_reads],
        storm_login_connections=tuple(args.storm_login_connections or [args.login_connections]),
        bcrypt_rounds=args.bcrypt_rounds,
        hash_concurrency=args.hash_concurrency,
        hash_queue_limit=args.hash_queue_limit,
        login_max_wait_seconds=args.login_max_wait_seconds,
        db_pool_size=args.db_pool_size,
        db_max_overflow=args.db_max_overflow,
        memory_checkpoints=(1_000, 3_000) if smoke else (10_000, 100_000),
        verify_samples=3 if smoke else 7,
        profile_seconds=pick(args.profile_seconds, 20, 1),
    )


def main() -> int:
    return entry_point(run)


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    options = options_from(args)
    bench_run = Run("bench", argv)
    cores = bench_run.cores
    wrk = Wrk(ensure_wrk(), cores.load)
    seeded = database.create("bench", options.users, options.bcrypt_rounds)
    env = server_env(
        seeded.url,
        BCRYPT_ROUNDS=options.bcrypt_rounds,
        HASH_CONCURRENCY=options.hash_concurrency,
        HASH_QUEUE_LIMIT=options.hash_queue_limit,
        LOGIN_MAX_WAIT_SECONDS=options.login_max_wait_seconds,
        DB_POOL_SIZE=options.db_pool_size,
        DB_MAX_OVERFLOW=options.db_max_overflow,
        ACCESS_TOKEN_EXPIRE_MINUTES=ACCESS_TOKEN_MINUTES,
    )
    load = Load(wrk=wrk, options=options, work_dir=WORK_DIR)
    wrk_version = wrk.version()
    today = datetime.date.today().isoformat()
    if args.profile:
        endpoint = scenarios.READS_BY_KEY[args.profile]
        profile_text = profile_only(load, env, cores, endpoint)
        machine = bench_run.machine(seeded.postgres_version, wrk_version)
        title = f"Profile {today}"
        lines = report.heading(title, bench_run.command, machine)
        suffix = "" if endpoint is scenarios.BY_ID else f"-{endpoint.key}"
        report.save(
            RESULTS_DIR / f"{today}-profile{suffix}.md", "\n".join(lines) + "\n\n" + profile_text
        )
        return 0

    database.seed_peer(seeded.url, options.users, seeded.hashed_password)
    verify_seconds = scenarios.measure_verify_seconds(
        seeded.hashed_password, options.bcrypt_rounds, options.verify_samples
    )
    notes: list[str] = []
    with ExitStack() as stack:
        app = started_server(stack, "app", APP, env, str(cores.server), 1)
        print("memory: idle, then read traffic", flush=True)
        memory = scenarios.memory(load, app)
        peer = started_server(stack, "peer", PEER, env, str(cores.server), 1)
        bare = started_server(stack, "bare", BARE, env, str(cores.server), 1)
        load.tokens["bare"] = load.tokens["app"]
        load.tokens["peer"] = scenarios.peer_token(peer)
        scenarios.check_same_answers(app, bare, load.tokens["app"])
        scenarios.check_peer_answers(app, peer, load.tokens)
        servers = {"app": app, "peer": peer, "bare": bare}
        print("reads, 1 worker each", flush=True)
        reads = scenarios.reads(load, servers, READS)
        print("login", flush=True)
        logins = scenarios.logins(load, servers)
        refresh = None
        if scenarios.refresh_available(app):
            print("refresh (the peer has none)", flush=True)
            refresh = scenarios.refreshes(load, {"app": app, "bare": bare})
        else:
            note = "POST /api/v1/auth/refresh answered 404 on the app: refresh scenario skipped."
            print(f"note: {note}", flush=True)
            notes.append(note)
        print("login storm", flush=True)
        storm = scenarios.login_storm(load, app)
        # Smoke touches the profiler too, so CI notices when py-spy stops working.
        profile = (
            profiling.record(load, app, scenarios.BY_ID, options.profile_seconds)
            if args.smoke
            else None
        )

    with ExitStack() as stack:
        print("reads, 2 workers each (app and bare)", flush=True)
        # Not the peer: three servers of 2 workers with 10+10 pools each could open 120
        # connections, past PostgreSQL's default max_connections of 100.
        servers = {
            name: started_server(stack, name, target, env, cores.all, 2)
            for name, target in (("app", APP), ("bare", BARE))
        }
        reads_two_workers = scenarios.reads(load, servers, READS)

    results = report.Results(
        title=f"Benchmark {today}" + (" (smoke)" if args.smoke else ""),
        command=bench_run.command,
        machine=bench_run.machine(seeded.postgres_version, wrk_version),
        setup=setup_text(options, cores),
        options=options,
        verify_seconds=verify_seconds,
        memory=memory,
        reads=reads,
        logins=logins,
        refresh=refresh,
        storm=storm,
        reads_two_workers=reads_two_workers,
        two_worker_setup=(
            f"`uvicorn --workers 2` for the app and the bare server (not the peer: three "
            f"servers' pools could open more connections than PostgreSQL's default "
            f"max_connections of 100), allowed on cores {cores.all} (no pinning "
            f"within them); wrk still pinned to core {cores.load}, so it shares a core with a "
            f"worker. Same warm-up, runs and connections as above."
        ),
        profile=profile,
        notes=notes,
        elapsed_seconds=bench_run.elapsed_seconds,
    )
    report.write(results, WORK_DIR / "smoke.md" if args.smoke else RESULTS_DIR / f"{today}.md")
    return 0


def started_server(
    stack: ExitStack, name: str, target: str, env: dict[str, str], cores: str, workers: int
) -> Server:
    server = start_server(name, target, env=env, cores=cores, workers=workers, work_dir=WORK_DIR)
    stack.callback(server.stop)
    return server


def setup_text(options: Options, cores: Cores) -> str:
    return (
        f"Set-up: {options.users:,} seeded users. App (`{APP}`), fastapi-users peer "
        f"(`{PEER}`, on the endpoints it has) and bare reference server (`{BARE}`) each run "
        f"as 1 uvicorn worker (uvloop, httptools, access log off) pinned to core "
        f"{cores.server}; wrk is pinned to core {cores.load}; PostgreSQL is not pinned. "
        f"Per endpoint and server a {options.warmup} s warm-up, then {options.runs} runs of "
        f"{options.seconds} s alternating app, peer, bare. BCRYPT_ROUNDS={options.bcrypt_rounds}, "
        f"HASH_CONCURRENCY={options.hash_concurrency}, HASH_QUEUE_LIMIT="
        f"{options.hash_queue_limit}, DB pool {options.db_pool_size}+{options.db_max_overflow}."
    )


def profile_only(load: Load, env: dict[str, str], cores: Cores, endpoint: Endpoint) -> str:
    """The app alone under one read endpoint, sampled with py-spy; the profile in Markdown."""
    with ExitStack() as stack:
        app = started_server(stack, "app", APP, env, str(cores.server), 1)
        answer = login(app, database.ADMIN_EMAIL, database.USER_PASSWORD)
        load.tokens["app"] = str(answer["access_token"])
        print(f"profiling {endpoint.label} for {load.options.profile_seconds} s", flush=True)
        recorded = profiling.record(load, app, endpoint, load.options.profile_seconds)
        profile = profiling.markdown(recorded)
    print(profile)
    return profile
