"""Round trips to PostgreSQL per request, counted rather than timed (load cannot move them).

    uv run --group bench python -m bench.round_trips [--rev main] [--requests 100]

Serves the app (the working tree, and a revision to compare with if given) on a freshly
seeded database, sends each read endpoint sequentially, and traces the worker with
strace over those requests, counting its writes on sockets connected to PostgreSQL's
port: one write per round trip, since asyncpg sends a statement's Bind, Execute and
Sync together. Needs root (strace attaches to the worker) and strace.
"""

import argparse
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

from bench import database
from bench.compare import checkout
from bench.database import ADMIN_EMAIL, USER_PASSWORD
from bench.harness import REPO, WORK_DIR
from bench.servers import APP, Server, login, request, server_env, start_server

PATHS = ("/api/v1/users/2", "/api/v1/users/me", "/api/v1/users?per_page=10")
WARMUP_REQUESTS = 20  # fill the pool and asyncpg's statement cache first
# strace -f -o prefixes each line with the thread id once it traces more than one.
WRITES = re.compile(r"^(?:\d+\s+)?(?:write|writev|sendto|sendmsg)\((\d+),")
TRACE_SETTLE_SECONDS = 1.0  # strace needs a moment to attach to every thread


def postgres_sockets(pid: int, port: int) -> set[int]:
    """The worker's file descriptors that are TCP connections to that port."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2].endswith(f":{port:04X}"):
            inodes.add(fields[9])
    descriptors = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:[") and target[8:-1] in inodes:
            descriptors.add(int(fd.name))
    return descriptors


def count(server: Server, token: str, path: str, requests: int, port: int) -> float:
    for _ in range(WARMUP_REQUESTS):
        request("GET", f"{server.url}{path}", token=token)
    pid = server.worker_pids()[0]
    trace = WORK_DIR / "round-trips.strace"
    command = ["strace", "-f", "-e", "trace=write,writev,sendto,sendmsg", "-o", str(trace)]
    tracer = subprocess.Popen([*command, "-p", str(pid)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(TRACE_SETTLE_SECONDS)
        for _ in range(requests):
            status, body, _ = request("GET", f"{server.url}{path}", token=token)
            if status != 200:
                raise RuntimeError(f"{path} answered {status}: {body}")
        sockets = postgres_sockets(pid, port)
    finally:
        tracer.terminate()
        tracer.wait()
    writes = Counter(
        int(match.group(1))
        for line in trace.read_text().splitlines()
        if (match := WRITES.match(line))
    )
    return sum(writes[fd] for fd in sockets) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", help="also count a git revision's app, e.g. main")
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    if shutil.which("strace") is None:
        parser.error("needs strace (apt-get install strace)")

    WORK_DIR.mkdir(parents=True, exist_ok=True)
    apps = {"working tree": REPO}
    if args.rev:
        apps = {args.rev: checkout(args.rev), **apps}
    seeded = database.create("bench_round_trips", 1000, bcrypt_rounds=4)
    port = database.cluster().port
    try:
        for name, app_dir in apps.items():
            server = start_server(
                "round-trips", APP, env=server_env(seeded.url), cores="0", workers=1,
                work_dir=WORK_DIR, app_dir=app_dir,
            )  # fmt: skip
            try:
                token = login(server, ADMIN_EMAIL, USER_PASSWORD)["access_token"]
                for path in PATHS:
                    per_request = count(server, token, path, args.requests, port)
                    print(f"{name:14} GET {path:28} {per_request:.2f} round trips per request")
            finally:
                server.stop()
    finally:
        if args.rev:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(apps[args.rev])], cwd=REPO, check=False
            )


if __name__ == "__main__":
    main()
