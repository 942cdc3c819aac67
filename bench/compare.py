"""Paired comparison of the app at a base revision and in the working tree.

    uv run --group bench python -m bench.compare BASE_REV [--seconds 10] [--rounds 3]
    uv run --group bench python -m bench.compare BASE_REV --endpoints --logins


The rule for a change that makes the code harder to read: it must buy at least 10% in a
paired, alternating comparison. This checks BASE_REV out into a git worktree, serves
both versions (one uvicorn worker each, pinned to core 0) on one freshly seeded
database, and drives each read endpoint with wrk on core 1 in turn, base, change, base,
change..., so that drift on this noisy machine hits both alike. It prints requests/s per
round and the change's median ratio to the base, and the worker's CPU time per request
(user + system, from /proc), which other work on the machine hardly moves.

With --logins it also compares POST /auth/login (bench/lua/login.lua, --login-connections
connections) with the right password and with a wrong one (every answer a 401). The
database's users have the cheapest bcrypt cost, so the login's own work, not the hash,
is most of what is measured: a change to the login path shows at its largest.
"""

import argparse
import os
import statistics
import subprocess
import urllib.parse
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench import database
from bench.database import ADMIN_EMAIL, USER_PASSWORD
from bench.harness import REPO, WORK_DIR
from bench.scenarios import READS_BY_KEY
from bench.servers import APP, Server, login, server_env, start_server
from bench.wrk import Job, Wrk, ensure_wrk

WARMUP_SECONDS = 3
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


def checkout(revision: str) -> Path:
    path = WORK_DIR / f"base-{revision.replace('/', '_')}"
    if path.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, check=True)
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), revision], cwd=REPO, check=True
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the git revision to compare against, e.g. HEAD~1")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--endpoints", nargs="*", choices=list(READS_BY_KEY), default=["list", "by_id", "me"]
    )
    parser.add_argument("--logins", action="store_true", help="also compare POST /auth/login")
    parser.add_argument("--login-connections", type=int, default=4)
    parser.add_argument(
        "--database", default="bench_compare", help="its own name for a run beside another"
    )
    args = parser.parse_args()

    WORK_DIR.mkdir(parents=True, exist_ok=True)
    base_dir = checkout(args.base)
    # The cheapest bcrypt cost: the harness's own login is quick. Compared logins run at
    # it too (the servers would otherwise rehash each user's password at their own cost
    # on its first login), so that they cost the login's own work more than the hash's.
    url = database.create(args.database, args.users, bcrypt_rounds=4).url
    env = server_env(url, **({"BCRYPT_ROUNDS": 4} if args.logins else {}))
    wrk = Wrk(binary=ensure_wrk(), core=1)
    servers: dict[str, Server] = {}
    try:
        for name, app_dir in (("base", base_dir), ("change", REPO)):
            servers[name] = start_server(
                name, APP, env=env, cores="0", workers=1, work_dir=WORK_DIR, app_dir=app_dir
            )
        token = login(servers["change"], ADMIN_EMAIL, USER_PASSWORD)["access_token"]
        for endpoint in (READS_BY_KEY[key] for key in args.endpoints):
            job = partial(endpoint.job, token=token, users=args.users, connections=args.connections)
            _compare(wrk, servers, endpoint.label, job, args.seconds, args.rounds)
        if args.logins:
            for label, password in (
                ("POST /auth/login", USER_PASSWORD),
                ("POST /auth/login (401)", "Wrong-" + USER_PASSWORD),
            ):
                login_job = partial(
                    _login_job,
                    users=args.users,
                    password=password,
                    connections=args.login_connections,
                )
                _compare(wrk, servers, label, login_job, args.seconds, args.rounds)
    finally:
        for server in servers.values():
            server.stop()
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(base_dir)], cwd=REPO, check=False
        )


def _login_job(server: Server, *, users: int, password: str, connections: int, seconds: int) -> Job:
    return Job(
        url=server.url,
        script="login.lua",
        seconds=seconds,
        connections=connections,
        threads=connections,  # one connection a thread, as login.lua needs
        args=(str(users), urllib.parse.quote(password, safe="")),
    )


def _compare(
    wrk: Wrk,
    servers: dict[str, Server],
    label: str,
    job: Callable[..., Job],
    seconds: int,
    rounds: int,
) -> None:
    """Warm both up, then run them in turn `rounds` times; print the rates and ratio."""
    for server in servers.values():  # fill the pools; this run is not counted
        wrk.run(job(server, seconds=WARMUP_SECONDS))
    rates: dict[str, list[float]] = {"base": [], "change": []}
    cpu_ms: dict[str, list[float]] = {"base": [], "change": []}
    for _ in range(rounds):
        for name, server in servers.items():
            pid = server.worker_pids()[0]
            cpu_before = cpu_seconds(pid)
            result = wrk.run(job(server, seconds=seconds))
            cpu_ms[name].append((cpu_seconds(pid) - cpu_before) * 1000 / result.requests)
            if result.failed and "(401)" not in label:
                # A starved machine's 503s say nothing about the change: noted, not fatal.
                print(f"{name} {label}: {result.failed} failed ({result.errors})")
            rates[name].append(result.rps)
    ratios = [c / b for b, c in zip(rates["base"], rates["change"], strict=True)]
    per_round = ", ".join(f"{b:.0f}/{c:.0f}" for b, c in zip(*rates.values(), strict=True))
    cpu = {name: statistics.median(values) for name, values in cpu_ms.items()}
    print(
        f"{label:24} base/change req/s per round: {per_round}; "
        f"median change/base {statistics.median(ratios):.2f}x; "
        f"worker CPU per request {cpu['base']:.2f}/{cpu['change']:.2f} ms "
        f"({cpu['change'] / cpu['base']:.2f}x)",
        flush=True,
    )


if __name__ == "__main__":
    main()
