"""What every bench entry point shares: its files, its cores, the machine it ran on, Ctrl-C."""

import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
# Logs, raw profiles, token files and smoke results: ignored by git (.gitignore).
WORK_DIR = REPO / "bench" / ".work"
PACKAGES = (
    "fastapi", "starlette", "pydantic", "sqlalchemy", "sqlmodel", "uvicorn", "uvloop",
    "httptools", "asyncpg", "pyjwt", "pwdlib", "bcrypt", "orjson",
)  # fmt: skip


@dataclass(frozen=True)
class Cores:
    server: int
    load: int
    all: str


def pick_cores() -> Cores:
    available = sorted(os.sched_getaffinity(0))
    # On one core everything shares it; the results then say so in the set-up line.
    load = available[1] if len(available) > 1 else available[0]
    return Cores(server=available[0], load=load, all=",".join(map(str, available)))


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def git(*args: str) -> str:
    completed = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return completed.stdout.strip() if completed.returncode == 0 else "unknown"


@dataclass
class Run:
    """One run of an entry point, pinned off the servers' core from the moment it starts."""

    module: str
    argv: list[str]
    cores: Cores = field(default_factory=pick_cores)
    started: float = field(default_factory=time.monotonic)
    load_at_start: str = field(default_factory=load_average)

    def __post_init__(self) -> None:
        # The harness and its load stay off the core the server under test runs on.
        os.sched_setaffinity(0, {self.cores.load})
        WORK_DIR.mkdir(exist_ok=True)

    @property
    def command(self) -> str:
        return shlex.join(
            ["uv", "run", "--group", "bench", "python", "-m", self.module, *self.argv]
        )

    @property
    def elapsed_seconds(self) -> float:
        return time.monotonic() - self.started

    def machine(self, postgres_version: str, load_generator: str) -> list[tuple[str, str]]:
        """The results file's description of what ran, where, and how busy the machine was."""
        cpu_model = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor() or "unknown",
        )
        # --all: this process is pinned to one core by now, which plain nproc reports.
        nproc = subprocess.run(["nproc", "--all"], capture_output=True, text=True, check=True)
        # Read-only git calls; --no-optional-locks keeps status from refreshing the index.
        commit = git("rev-parse", "HEAD")
        dirty = git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
        versions = ", ".join(f"{name} {metadata.version(name)}" for name in PACKAGES)
        return [
            ("git commit", commit + (" (with uncommitted changes)" if dirty else "")),
            ("machine", f"nproc {nproc.stdout.strip()}, {cpu_model}, Linux {platform.release()}"),
            ("software", f"Python {platform.python_version()}, PostgreSQL {postgres_version}, "
                         f"{load_generator}"),
            ("packages", versions),
            # Anything else running shares the cores: this says how busy they were.
            ("load average (1 min)",
             f"{self.load_at_start} at the start, {load_average()} at the end"),
        ]  # fmt: skip


def entry_point(run: Callable[[list[str]], int]) -> int:
    """Run `run(argv)`; Ctrl-C or SIGTERM (CI cancelling, `kill`) unwinds it, stopping servers."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        return run(sys.argv[1:])
    except KeyboardInterrupt:
        print("interrupted: servers stopped, no results written", file=sys.stderr)
        return 130
