"""List-query latency on a large users table (issue 4's performance requirement).

    uv run --group bench python -m bench.list_latency [--users 100000] [--requests 60]

Seeds its own PostgreSQL database (bench_list) with N users whose created_at are spread
over time, serves the app with one uvicorn worker, and times, one request at a time
over HTTP, the list queries a dashboard makes: newest first with the total, a `q`
search (matching and not), a json-server page, and a deep page. Prints a table of
median and p95 milliseconds and writes it to bench/results/list-latency-<date>.md.
"""

import argparse
import asyncio
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import asyncpg  # type: ignore[import-untyped]  # ships no type information

from bench.database import ADMIN_EMAIL, USER_PASSWORD, cluster, migrate, password_hash
from bench.database import psql_as_postgres as run_sql
from bench.servers import REPO, login, request, start_server

DATABASE = "bench_list"
ROLE = "bench"
PASSWORD = "bench"  # noqa: S105  (the bench's loopback-only role, see bench/database.py)
PER_PAGE = 20
QUERIES = {
    "newest first, with total": f"per_page={PER_PAGE}&sort=-created_at",
    "q search, selective": f"per_page={PER_PAGE}&sort=-created_at&q=user4242",
    "q search, broad": f"per_page={PER_PAGE}&sort=-created_at&q=user1",
    "q search, no match": f"per_page={PER_PAGE}&q=nobody-has-this",
    "json-server page, name desc": "_start=40&_end=60&_sort=name&_order=desc",
    "deep page 5,000, newest first": f"per_page={PER_PAGE}&sort=-created_at&page=5000",
}


def provision_and_seed(users: int, database: str = DATABASE) -> str:
    found = cluster()
    if found.status != "online":
        subprocess.run(["pg_ctlcluster", "15", "main", "start"], check=True)
    run_sql(
        f"""
        SELECT 'CREATE ROLE {ROLE} LOGIN' WHERE NOT EXISTS
            (SELECT FROM pg_roles WHERE rolname = '{ROLE}') \\gexec
        ALTER ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}';
        DROP DATABASE IF EXISTS {database} WITH (FORCE);
        CREATE DATABASE {database} OWNER {ROLE};
        """,
        found.port,
    )
    url = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{found.port}/{database}"
    migrate({**os.environ, "DATABASE_URL": url, "STAGE": "local"}, REPO)
    asyncio.run(_seed(url, users, password_hash(rounds=4)))
    return url


async def _seed(url: str, users: int, hashed_password: str) -> None:
    start = datetime.now(UTC) - timedelta(seconds=users)
    # One sign-up a second, in an order unrelated to the names: "user1..." are not all the
    # oldest accounts, as in real data (see the note on correlation in bench/README.md).
    seconds = list(range(users))
    random.Random(42).shuffle(seconds)
    rows = (
        (
            f"user{number}@bench.example",
            f"Bench User {number}",
            hashed_password,
            "admin" if number == 1 else "user",
            True,
            0,
            start + timedelta(seconds=second),
            start + timedelta(seconds=second),
        )
        for number, second in zip(range(1, users + 1), seconds, strict=True)
    )
    connection = await asyncpg.connect(url)
    try:
        await connection.copy_records_to_table(
            "users",
            records=rows,
            columns=[
                "email",
                "name",
                "hashed_password",
                "role",
                "is_active",
                "token_version",
                "created_at",
                "updated_at",
            ],
        )
        await connection.execute("VACUUM ANALYZE users")
    finally:
        await connection.close()


def measure(url: str, users: int, requests: int) -> dict[str, tuple[float, float, str]]:
    work_dir = REPO / "bench" / ".work"
    work_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "STAGE": "production",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "RATE_LIMIT_ENABLED": "false",
        "AUTO_MIGRATE": "false",
        "LOG_LEVEL": "WARNING",
    }
    server = start_server(
        "app", "backend.main:app", env=env, cores="0", workers=1, work_dir=work_dir
    )
    try:
        token = login(server, ADMIN_EMAIL, USER_PASSWORD)["access_token"]
        results = {}
        for label, query in QUERIES.items():
            timings = []
            for attempt in range(requests + 5):
                started = time.perf_counter()
                status, body, headers = request(
                    "GET", f"{server.url}/api/v1/users?{query}", token=token
                )
                elapsed = (time.perf_counter() - started) * 1000
                if status != 200:
                    raise RuntimeError(f"{query} answered {status}: {body}")
                if attempt >= 5:  # the first few warm the pool and caches
                    timings.append(elapsed)
            p95 = statistics.quantiles(timings, n=20)[-1]
            results[label] = (statistics.median(timings), p95, headers["x-total-count"])
        return results
    finally:
        server.stop()


def report(users: int, requests: int, results: dict[str, tuple[float, float, str]]) -> str:
    lines = [
        f"# List latency, {users:,} users, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"`uv run --group bench python -m bench.list_latency --users {users} "
        f"--requests {requests}`: one uvicorn worker on core 0, PostgreSQL 15, "
        f"{requests} sequential requests per query after 5 warm-up requests, timed by the "
        "client over loopback HTTP. Targets: median under 50 ms; the deep page under 200 ms.",
        "",
        "| query | total | median ms | p95 ms |",
        "|---|---:|---:|---:|",
    ]
    for label, (median, p95, total) in results.items():
        lines.append(f"| {label} (`{QUERIES[label]}`) | {total} | {median:.1f} | {p95:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=60)
    args = parser.parse_args()
    url = provision_and_seed(args.users)
    results = measure(url, args.users, args.requests)
    text = report(args.users, args.requests, results)
    print(text)
    out = REPO / "bench" / "results" / f"list-latency-{datetime.now(UTC):%Y-%m-%d}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
