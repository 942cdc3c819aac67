"""`python -m bench`: set up the database, run every scenario, write the results file."""

import argparse
import datetime
import os
import platform
import secrets
import shlex
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import FrameType

from bench import database, profiling, report, scenarios
from bench.scenarios import READS, Load, Options
from bench.servers import APP, BARE, REPO, Server, login, start_server
from bench.wrk import Wrk, ensure_wrk

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
# Logs, raw profiles, token files and smoke results: ignored by git (.gitignore).
WORK_DIR = BENCH_DIR / ".work"
PACKAGES = (
    "fastapi", "starlette", "pydantic", "sqlalchemy", "sqlmodel", "uvicorn", "uvloop",
    "httptools", "asyncpg", "pyjwt", "pwdlib", "bcrypt", "orjson",
)  # fmt: skip
# Outlives the longest run, so no access token expires mid-measurement.
ACCESS_TOKEN_MINUTES = 240


@dataclass(frozen=True)
class Cores:
    server: int
    load: int
    all: str


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load-benchmark the app against a bare reference server (bench/README.md).",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--smoke",
        action="store_true",
        help="1 s runs, 100 users, every scenario once (CI); writes bench/.work/smoke.md",
    )
    mode.add_argument(
        "--profile",
        action="store_true",
        help="only profile GET /users/{id} with py-spy; writes bench/results/DATE-profile.md",
    )
    parser.add_argument("--users", type=int, help="seeded users (default 1000; smoke 100)")
    parser.add_argument("--seconds", type=int, help="length of each measured run (default 15)")
    parser.add_argument("--warmup", type=int, help="warm-up per server and endpoint (default 2)")
    parser.add_argument("--runs", type=int, help="runs per server and scenario (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="for reads (default 32)")
    parser.add_argument("--login-connections", type=int, default=4)
    parser.add_argument("--refresh-connections", type=int, default=8)
    parser.add_argument("--bcrypt-rounds", type=int, default=12)
    parser.add_argument(
        "--hash-concurrency",
        type=int,
        default=max(1, (os.cpu_count() or 1) // 2),
        help="HASH_CONCURRENCY for both servers (default: the app's, half the cores)",
    )
    parser.add_argument("--hash-queue-limit", type=int, default=32)
    parser.add_argument("--db-pool-size", type=int, default=10)
    parser.add_argument("--db-max-overflow", type=int, default=10)
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
        seconds=pick(args.seconds, 15, 1),
        warmup=pick(args.warmup, 2, 1),
        runs=pick(args.runs, 2, 1),
        connections=args.connections,
        login_connections=args.login_connections,
        refresh_connections=args.refresh_connections,
        bcrypt_rounds=args.bcrypt_rounds,
        hash_concurrency=args.hash_concurrency,
        hash_queue_limit=args.hash_queue_limit,
        db_pool_size=args.db_pool_size,
        db_max_overflow=args.db_max_overflow,
        memory_checkpoints=(1_000, 3_000) if smoke else (10_000, 100_000),
        verify_samples=3 if smoke else 7,
        profile_seconds=pick(args.profile_seconds, 20, 1),
    )


def pick_cores() -> Cores:
    available = sorted(os.sched_getaffinity(0))
    # On one core everything shares it; the results then say so in the set-up line.
    load = available[1] if len(available) > 1 else available[0]
    return Cores(server=available[0], load=load, all=",".join(map(str, available)))


def server_env(database_url: str, options: Options) -> dict[str, str]:
    """The app's settings, the same for the bare server (which reads the ones it needs)."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        # One random key per bench run, shared by every server so a token works on all.
        "SECRET_KEY": secrets.token_urlsafe(48),
        "STAGE": "production",
        "AUTO_MIGRATE": "false",  # the harness migrates once, before any server starts
        "RATE_LIMIT_ENABLED": "false",
        # The app's own line per request is its access log: off, like uvicorn's on both.
        "LOG_LEVEL": "WARNING",
        "BCRYPT_ROUNDS": str(options.bcrypt_rounds),
        "HASH_CONCURRENCY": str(options.hash_concurrency),
        "HASH_QUEUE_LIMIT": str(options.hash_queue_limit),
        "DB_POOL_SIZE": str(options.db_pool_size),
        "DB_MAX_OVERFLOW": str(options.db_max_overflow),
        "ACCESS_TOKEN_EXPIRE_MINUTES": str(ACCESS_TOKEN_MINUTES),
    }


def machine_info(wrk_binary: str, postgres_version: str) -> list[tuple[str, str]]:
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    # --all: the harness has pinned itself to one core by now, which plain nproc reports.
    nproc = subprocess.run(["nproc", "--all"], capture_output=True, text=True, check=True)
    # Read-only git calls; --no-optional-locks keeps status from refreshing the index.
    commit = git("rev-parse", "HEAD")
    dirty = git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    wrk_version = subprocess.run([wrk_binary, "-v"], capture_output=True, text=True).stdout
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in PACKAGES)
    return [
        ("git commit", f"{commit}" + (" (with uncommitted changes)" if dirty else "")),
        ("machine", f"nproc {nproc.stdout.strip()}, {cpu_model}, Linux {platform.release()}"),
        ("software", f"Python {platform.python_version()}, PostgreSQL {postgres_version}, "
                     f"{wrk_version.split(' Copyright')[0].strip()}"),
        ("packages", versions),
    ]  # fmt: skip


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def git(*args: str) -> str:
    completed = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return completed.stdout.strip() if completed.returncode == 0 else "unknown"


def stop_on_sigterm() -> None:
    """SIGTERM (CI cancelling, `kill`) unwinds like Ctrl-C, so every server is stopped."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    stop_on_sigterm()
    try:
        run(args, argv)
    except KeyboardInterrupt:
        print("interrupted: servers stopped, no results written", file=sys.stderr)
        return 130
    return 0


def run(args: argparse.Namespace, argv: list[str]) -> None:
    started = time.monotonic()
    load_at_start = load_average()
    options = options_from(args)
    cores = pick_cores()
    # The harness itself stays off the servers' core too.
    os.sched_setaffinity(0, {cores.load})
    WORK_DIR.mkdir(exist_ok=True)
    wrk = Wrk(ensure_wrk(), cores.load)

    print("preparing PostgreSQL", flush=True)
    database_url = database.provision()
    env = server_env(database_url, options)
    database.migrate(env, WORK_DIR)
    hashed_password = database.password_hash(options.bcrypt_rounds)
    postgres_version = database.seed(database_url, options.users, hashed_password)
    print(f"seeded {options.users} users", flush=True)
    load = Load(wrk=wrk, options=options, work_dir=WORK_DIR)

    today = datetime.date.today().isoformat()
    command = "uv run --group bench python -m bench" + (" " + shlex.join(argv) if argv else "")
    if args.profile:
        header = [f"Command: `{command}`", ""]
        header += [
            f"- {name}: {value}" for name, value in machine_info(wrk.binary, postgres_version)
        ]
        header.append(f"- load average (1 min) at the start: {load_at_start}")
        profile_only(load, env, cores, RESULTS_DIR / f"{today}-profile.md", "\n".join(header))
        return

    verify_seconds = scenarios.measure_verify_seconds(
        hashed_password, options.bcrypt_rounds, options.verify_samples
    )
    notes: list[str] = []
    with ExitStack() as stack:
        app = started_server(stack, "app", APP, env, str(cores.server), 1)
        print("memory: idle, then read traffic", flush=True)
        memory = scenarios.memory(load, app)
        bare = started_server(stack, "bare", BARE, env, str(cores.server), 1)
        scenarios.check_same_answers(app, bare, load.token)
        servers = {"app": app, "bare": bare}
        print("reads, 1 worker each", flush=True)
        reads = scenarios.reads(load, servers, READS)
        print("login", flush=True)
        logins = scenarios.logins(load, servers)
        refresh = None
        if scenarios.refresh_available(app):
            print("refresh", flush=True)
            refresh = scenarios.refreshes(load, servers)
        else:
            note = "POST /api/v1/auth/refresh answered 404 on the app: refresh scenario skipped."
            print(f"note: {note}", flush=True)
            notes.append(note)
        print("login storm", flush=True)
        storm = scenarios.login_storm(load, app)
        # Smoke touches the profiler too, so CI notices when py-spy stops working.
        profile = profiling.record(load, app, options.profile_seconds) if args.smoke else None

    with ExitStack() as stack:
        print("reads, 2 workers each", flush=True)
        servers = {
            name: started_server(stack, name, target, env, cores.all, 2)
            for name, target in (("app", APP), ("bare", BARE))
        }
        reads_two_workers = scenarios.reads(load, servers, READS)

    results = report.Results(
        title=f"Benchmark {today}" + (" (smoke)" if args.smoke else ""),
        command=command,
        machine=[
            *machine_info(wrk.binary, postgres_version),
            # Anything else running shares the 2 cores: this says how busy they were.
            ("load average (1 min)", f"{load_at_start} at the start, {load_average()} at the end"),
        ],
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
            f"`uvicorn --workers 2` for both servers, allowed on cores {cores.all} (no pinning "
            f"within them); wrk still pinned to core {cores.load}, so it shares a core with a "
            f"worker. Same warm-up, runs and connections as above."
        ),
        profile=profile,
        notes=notes,
    )
    path = WORK_DIR / "smoke.md" if args.smoke else RESULTS_DIR / f"{today}.md"
    results.elapsed_seconds = time.monotonic() - started
    chart_path = report.write(results, path)
    print(f"wrote {path} and {chart_path} in {results.elapsed_seconds:.0f} s", flush=True)


def started_server(
    stack: ExitStack, name: str, target: str, env: dict[str, str], cores: str, workers: int
) -> Server:
    server = start_server(name, target, env=env, cores=cores, workers=workers, work_dir=WORK_DIR)
    stack.callback(server.stop)
    return server


def setup_text(options: Options, cores: Cores) -> str:
    return (
        f"Set-up: {options.users:,} seeded users. App (`{APP}`) and bare reference server "
        f"(`{BARE}`) each run as 1 uvicorn worker (uvloop, httptools, access log off) pinned "
        f"to core {cores.server}; wrk is pinned to core {cores.load}; PostgreSQL is not pinned. "
        f"Per endpoint and server a {options.warmup} s warm-up, then {options.runs} runs of "
        f"{options.seconds} s alternating app, bare. BCRYPT_ROUNDS={options.bcrypt_rounds}, "
        f"HASH_CONCURRENCY={options.hash_concurrency}, HASH_QUEUE_LIMIT="
        f"{options.hash_queue_limit}, DB pool {options.db_pool_size}+{options.db_max_overflow}."
    )


def profile_only(load: Load, env: dict[str, str], cores: Cores, path: Path, header: str) -> None:
    with ExitStack() as stack:
        app = started_server(stack, "app", APP, env, str(cores.server), 1)
        load.token = str(login(app, database.ADMIN_EMAIL, database.USER_PASSWORD)["access_token"])
        print(f"profiling GET /users/{{id}} for {load.options.profile_seconds} s", flush=True)
        profile = profiling.record(load, app, load.options.profile_seconds)
    path.parent.mkdir(parents=True, exist_ok=True)
    title = f"# Profile {path.stem.removesuffix('-profile')}"
    path.write_text(f"{title}\n\n{header}\n\n{profiling.markdown(profile)}")
    print(profiling.markdown(profile))
    print(f"wrote {path}", flush=True)
