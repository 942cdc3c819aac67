"""Install and drive wrk; every run goes through a script in bench/lua/ that prints a summary."""

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

LUA_DIR = Path(__file__).resolve().parent / "lua"
RESULT_PREFIX = "BENCH_RESULT "
# Requests slower than wrk's default 2 s timeout would be left out of the percentiles.
TIMEOUT = "10s"


@dataclass(frozen=True)
class StatusLatency:
    """The answers of one status in a run (login.lua), timed by the script."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    counters: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, StatusLatency] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def failed(self) -> int:
        """Socket errors, timeouts and answers of 400 or above."""
        return sum(self.errors.values())


def ensure_wrk() -> str:
    """The wrk binary, installed from Debian's package when missing (CI starts without it)."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is missing: installing the Debian package", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, env=env, stdin=subprocess.DEVNULL, check=False).returncode:
        # A fresh machine has no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], env=env, stdin=subprocess.DEVNULL, check=True)
        subprocess.run(install, env=env, stdin=subprocess.DEVNULL, check=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("apt-get reported success but wrk is not on PATH")
    return found


@dataclass(frozen=True)
class Job:
    """One bounded wrk run: a script from bench/lua/ against a URL on 127.0.0.1."""

    url: str
    script: str
    seconds: int
    connections: int
    threads: int = 1
    headers: tuple[str, ...] = ()
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Wrk:
    """wrk pinned to one core."""

    binary: str
    core: int

    def version(self) -> str:
        printed = subprocess.run([self.binary, "-v"], capture_output=True, text=True).stdout
        return printed.split(" Copyright")[0].strip()

    def command(self, job: Job) -> list[str]:
        if not job.url.startswith("http://127.0.0.1:"):
            raise ValueError(f"wrk only ever targets this machine, not {job.url}")
        command = ["taskset", "-c", str(self.core), self.binary]
        command += [f"-t{job.threads}", f"-c{job.connections}", f"-d{job.seconds}s"]
        command += [f"--timeout={TIMEOUT}"]
        for header in job.headers:
            command += ["-H", header]
        command += ["-s", str(LUA_DIR / job.script), job.url]
        return command + (["--", *job.args] if job.args else [])

    def run(self, job: Job) -> WrkResult:
        completed = subprocess.run(
            self.command(job),
            cwd=LUA_DIR,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=job.seconds + 60,
            check=False,
        )
        return parse_output(completed.stdout, completed.stderr, completed.returncode)

    @contextmanager
    def background(self, job: Job) -> Iterator[subprocess.Popen[str]]:
        """Run beside other work (a second load, a profiler); read it with `collect`.

        Leaving the block early (an error, Ctrl-C) kills it rather than waiting it out.
        """
        process = subprocess.Popen(
            self.command(job),
            cwd=LUA_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()


def collect(process: subprocess.Popen[str], job: Job) -> WrkResult:
    stdout, stderr = process.communicate(timeout=job.seconds + 60)
    return parse_output(stdout, stderr, process.returncode)


def parse_output(stdout: str, stderr: str, returncode: int) -> WrkResult:
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            data = json.loads(line.removeprefix(RESULT_PREFIX))
            return WrkResult(
                requests=data["requests"],
                seconds=data["duration_us"] / 1e6,
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                errors=data["errors"],
                counters=data["counters"],
                by_status={
                    status: StatusLatency(
                        count=timed["count"],
                        p50_ms=timed["p50_us"] / 1000,
                        p99_ms=timed["p99_us"] / 1000,
                        max_ms=timed["max_us"] / 1000,
                    )
                    for status, timed in data.get("latency_by_status", {}).items()
                },
            )
    raise RuntimeError(f"wrk exited {returncode} without a summary:\n{stdout}\n{stderr}")
