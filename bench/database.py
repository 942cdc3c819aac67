"""The bench's PostgreSQL: the local cluster, the bench role, new migrated and seeded databases."""

import asyncio
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]  # ships no type information
from pwdlib.hashers.bcrypt import BcryptHasher
from sqlalchemy.ext.asyncio import create_async_engine

from backend.models import new_account_key
from bench.harness import WORK_DIR
from bench.peers import fastapi_users_app as peer
from bench.servers import server_env

CLUSTER_VERSION = "15"
CLUSTER_NAME = "main"
# Dedicated names, so the bench never touches a database that tests or developers use.
ROLE = "bench"
PASSWORD = "bench"  # noqa: S105  (a local-only role on a loopback-only cluster)
READY_TIMEOUT_SECONDS = 30
COLUMNS = [
    "id", "email", "name", "hashed_password", "role", "is_active", "token_version",
    "account_key", "created_at", "updated_at",
]  # fmt: skip

ADMIN_EMAIL = "user1@bench.example"
# Every seeded user has this password (one bcrypt hash, computed once, shared by all rows).
USER_PASSWORD = "Bench-Password-1"  # noqa: S105  (seed data, printed in the README)


@dataclass(frozen=True)
class Cluster:
    port: int
    status: str


def cluster() -> Cluster:
    # pg_lsclusters -h: "version name port status owner datadir logfile".
    lines = subprocess.run(
        ["pg_lsclusters", "-h"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for line in lines:
        fields = line.split()
        if fields[:2] == [CLUSTER_VERSION, CLUSTER_NAME]:
            return Cluster(port=int(fields[2]), status=fields[3])
    raise RuntimeError(f"no PostgreSQL {CLUSTER_VERSION}/{CLUSTER_NAME} cluster on this machine")


def psql_as_postgres(sql: str, port: int) -> None:
    # The SQL goes on stdin, so nothing in it needs quoting for su's shell.
    subprocess.run(
        ["su", "postgres", "-c", f"psql -X -q -v ON_ERROR_STOP=1 -p {port} -d postgres"],
        input=sql,
        text=True,
        check=True,
        capture_output=True,
    )


def provision(database: str) -> str:
    """Start the cluster if it is down, create the bench role and a new, empty `database`.

    The database is made anew each run: one migrated by another checkout (a branch with
    a newer migration) would be at a revision this code cannot migrate from. Returns its
    URL. Needs root, as in CI, for `su postgres`.
    """
    found = cluster()
    if found.status != "online":
        print(f"starting PostgreSQL {CLUSTER_VERSION}/{CLUSTER_NAME}", flush=True)
        subprocess.run(["pg_ctlcluster", CLUSTER_VERSION, CLUSTER_NAME, "start"], check=True)
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while subprocess.run(
        ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(found.port)], check=False
    ).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"PostgreSQL did not accept connections within {READY_TIMEOUT_SECONDS} s"
            )
        time.sleep(0.2)
    psql_as_postgres(
        f"""
        SELECT 'CREATE ROLE {ROLE} LOGIN'
        WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') \\gexec
        ALTER ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}';
        DROP DATABASE IF EXISTS {database} WITH (FORCE);
        CREATE DATABASE {database} OWNER {ROLE};
        """,
        found.port,
    )
    return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{found.port}/{database}"


@dataclass(frozen=True)
class Seeded:
    url: str
    hashed_password: str
    postgres_version: str


def create(database: str, users: int, bcrypt_rounds: int) -> Seeded:
    """A new database of that name, migrated, with `users` seeded users (see `seed`)."""
    print(f"preparing PostgreSQL database {database}", flush=True)
    url = provision(database)
    # The console script sits beside this venv's python (not resolved: that is a symlink).
    backend = Path(sys.executable).parent / "backend"
    # The schema the way the project makes it, run where a developer's .env is not read.
    subprocess.run([str(backend), "migrate"], env=server_env(url), cwd=WORK_DIR, check=True)
    hashed_password = BcryptHasher(rounds=bcrypt_rounds).hash(USER_PASSWORD)
    postgres_version = asyncio.run(seed(url, users, hashed_password))
    print(f"seeded {users:,} users", flush=True)
    return Seeded(url, hashed_password, postgres_version)


async def seed(url: str, users: int, hashed_password: str) -> str:
    """user1 is the admin, the rest plain users; returns the server's version.

    One sign-up a second, in an order unrelated to the names: "user1..." are not all the
    oldest accounts, as in real data, so sorting by created_at is not sorting by id.
    """
    start = datetime.now(UTC) - timedelta(seconds=users)
    seconds = list(range(users))
    random.Random(42).shuffle(seconds)
    records = (
        (
            number,
            f"user{number}@bench.example",
            f"Bench User {number}",
            hashed_password,
            "admin" if number == 1 else "user",
            True,
            0,
            new_account_key(),
            start + timedelta(seconds=second),
            start + timedelta(seconds=second),
        )
        for number, second in zip(range(1, users + 1), seconds, strict=True)
    )
    connection = await asyncpg.connect(url)
    try:
        async with connection.transaction():
            await connection.copy_records_to_table("users", records=records, columns=COLUMNS)
            # The ids were given explicitly: move the sequence past them for later inserts.
            await connection.execute(
                "SELECT setval(pg_get_serial_sequence('users', 'id'), $1)", users
            )
        # VACUUM too: the visibility map a live table's autovacuum keeps, for index-only scans.
        await connection.execute("VACUUM ANALYZE users")
        version: str = await connection.fetchval("SHOW server_version")
        return version
    finally:
        await connection.close()


def seed_peer(url: str, users: int, hashed_password: str) -> None:
    """The fastapi-users peer's own table beside the app's, with the same users.

    Created from the peer's model as its documentation's example creates it; the rows are
    the app's users (same ids, emails and password hash; user1 the superuser), so one
    wrk script reads the same user on both and login works.
    """
    asyncio.run(_seed_peer(url, users, hashed_password))
    print(f"seeded {users:,} users for the fastapi-users peer", flush=True)


async def _seed_peer(url: str, users: int, hashed_password: str) -> None:
    engine = create_async_engine(peer.async_url(url))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(peer.Base.metadata.create_all)
    finally:
        await engine.dispose()
    records = (
        (number, f"user{number}@bench.example", hashed_password, True, number == 1, True)
        for number in range(1, users + 1)
    )
    connection = await asyncpg.connect(url)
    try:
        await connection.copy_records_to_table(
            peer.TABLE,
            records=records,
            columns=["id", "email", "hashed_password", "is_active", "is_superuser", "is_verified"],
        )
        await connection.execute(f"VACUUM ANALYZE {peer.TABLE}")
    finally:
        await connection.close()
