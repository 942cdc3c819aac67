"""The bench's PostgreSQL database: the local cluster, its own role and database, seed users."""

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]  # ships no type information
from pwdlib.hashers.bcrypt import BcryptHasher

from backend.models import new_account_key

CLUSTER_VERSION = "15"
CLUSTER_NAME = "main"
# Dedicated names, so the bench never touches a database that tests or developers use.
ROLE = "bench"
DATABASE = "bench"
PASSWORD = "bench"  # noqa: S105  (a local-only role on a loopback-only cluster)
READY_TIMEOUT_SECONDS = 30

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


def provision() -> str:
    """Start the cluster if it is down, create the bench role and a new, empty bench database.

    The database is made anew each run: one migrated by another checkout (a branch with
    a newer migration) would be at a revision this code cannot migrate from. Returns the
    DATABASE_URL. Needs root, as in CI, for `su postgres`.
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
        DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE);
        CREATE DATABASE {DATABASE} OWNER {ROLE};
        """,
        found.port,
    )
    return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{found.port}/{DATABASE}"


def migrate(env: dict[str, str], cwd: Path) -> None:
    """Create the schema the way the project does: `backend migrate` (Alembic)."""
    # The console script sits beside this venv's python (not resolved: that is a symlink).
    backend = Path(sys.executable).parent / "backend"
    subprocess.run([str(backend), "migrate"], env=env, cwd=cwd, check=True)


def password_hash(rounds: int) -> str:
    return BcryptHasher(rounds=rounds).hash(USER_PASSWORD)


def seed(database_url: str, users: int, hashed_password: str) -> str:
    """Fill the new database's users table: user1 is the admin, the rest plain users.

    Returns the server's version, for the results file.
    """
    return asyncio.run(_seed(database_url, users, hashed_password))


async def _seed(database_url: str, users: int, hashed_password: str) -> str:
    now = datetime.now(UTC)
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
            now,
            now,
        )
        for number in range(1, users + 1)
    )
    connection = await asyncpg.connect(database_url)
    try:
        async with connection.transaction():
            await connection.copy_records_to_table(
                "users",
                records=records,
                columns=[
                    "id",
                    "email",
                    "name",
                    "hashed_password",
                    "role",
                    "is_active",
                    "token_version",
                    "account_key",
                    "created_at",
                    "updated_at",
                ],
            )
            # The ids were given explicitly: move the sequence past them for later inserts.
            await connection.execute(
                "SELECT setval(pg_get_serial_sequence('users', 'id'), $1)", users
            )
        await connection.execute("ANALYZE users")
        version: str = await connection.fetchval("SHOW server_version")
        return version
    finally:
        await connection.close()
