"""Sample the app's worker with py-spy under wrk load and say which libraries the CPU went to."""

import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import REPO
from bench.scenarios import Endpoint, Load
from bench.servers import Server
from bench.wrk import collect

SAMPLES_PER_SECOND = 100
# A collapsed-stack frame: "function (path/to/file.py:line)".
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# First match wins: the categories asked about, then the rest by what they are.
LIBRARIES = (
    ("fastapi/starlette", ("/fastapi/", "/starlette/")),
    ("pydantic", ("/pydantic/", "/pydantic_core/")),
    ("sqlalchemy/sqlmodel", ("/sqlalchemy/", "/sqlmodel/")),
    ("asyncpg", ("/asyncpg/",)),
    ("uvicorn/uvloop/httptools", ("/uvicorn/", "/uvloop/", "/httptools/")),
    ("jwt", ("/jwt/",)),
    ("anyio", ("/anyio/",)),
    ("backend/", ("/backend/",)),
)
STDLIB = "stdlib (asyncio, json, ...) with no library above it"
NATIVE = "no Python frame (C code)"
TOP_FUNCTIONS = 15
# Work worth watching, counted inclusively: (what it is, function, end of its file path).
# A table of backend/ callers would not do: SQLAlchemy runs queries in greenlets, whose
# stacks py-spy shows cut off from the request's frames.
NOTABLE = (
    ("pool pre-ping before each checkout", "AsyncAdapt_asyncpg_connection._async_ping",
     "sqlalchemy/dialects/postgresql/asyncpg.py"),
    ("sync dependencies sent to the threadpool", "run_in_threadpool", "starlette/concurrency.py"),
    ("response_model validation and serialisation", "serialize_response", "fastapi/routing.py"),
    ("... of it, email re-validation", "validate_email", "email_validator/validate_email.py"),
    ("ROLLBACK when the session closes", "Transaction.rollback", "asyncpg/transaction.py"),
    ("JWT decode (PyJWT)", "PyJWT.decode", "jwt/api_jwt.py"),
    ("ORM Session.get (caller and target look-ups)", "Session.get", "sqlalchemy/orm/session.py"),
)  # fmt: skip


@dataclass
class Profile:
    samples: int
    seconds: int
    raw_file: Path
    load_rps: float
    endpoint: str
    # Self samples per library, stdlib time charged to the library that called it.
    by_library: Counter[str] = field(default_factory=Counter)
    # Self samples per (library, function) with the same charging.
    by_function: Counter[str] = field(default_factory=Counter)
    # Samples with a NOTABLE function anywhere on the stack, by its description.
    notable: Counter[str] = field(default_factory=Counter)


def library_of(path: str) -> str | None:
    for name, markers in LIBRARIES:
        if any(marker in path for marker in markers):
            return name
    if "site-packages" in path:
        return "other packages"
    return None  # the standard library (or the interpreter itself)


def summarise(raw_file: Path, seconds: int, load_rps: float, endpoint: str) -> Profile:
    profile = Profile(
        samples=0, seconds=seconds, raw_file=raw_file, load_rps=load_rps, endpoint=endpoint
    )
    for line in raw_file.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        profile.samples += count
        frames = [FRAME.match(frame) for frame in stack_text.split(";")]
        parsed = [(match["function"], match["file"]) for match in frames if match]
        if not parsed:  # py-spy saw the GIL held with no Python frame (C code)
            profile.by_library[NATIVE] += count
            profile.by_function[NATIVE] += count
            continue
        # The innermost frame that belongs to a library is charged: a json.dumps called
        # by starlette is starlette's cost, an idle event loop step is the stdlib's.
        owner, function = STDLIB, parsed[-1][0]
        for name, path in reversed(parsed):
            library = library_of(path)
            if library is not None:
                owner, function = library, f"{name} ({short_path(path)})"
                break
        profile.by_library[owner] += count
        profile.by_function[function] += count
        for description, function_name, file_end in NOTABLE:
            if any(name == function_name and path.endswith(file_end) for name, path in parsed):
                profile.notable[description] += count
    return profile


def short_path(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    if path.startswith(f"{REPO}/"):
        return path.removeprefix(f"{REPO}/")
    # The standard library: /.../lib/python3.11/asyncio/runners.py -> asyncio/runners.py
    return re.sub(r"^.*/lib/python3\.\d+/", "", path)


def record(load: Load, app: Server, endpoint: Endpoint, seconds: int) -> Profile:
    """py-spy on the one worker for `seconds` while wrk drives one read endpoint at it."""
    (pid,) = app.worker_pids()
    raw_file = load.work_dir / f"profile-{endpoint.key}.txt"
    load.wrk.run(load.read_job(app, endpoint, load.options.warmup))
    job = load.read_job(app, endpoint, seconds + 2)
    with load.wrk.background(job) as wrk_process:
        time.sleep(1)  # sample a loaded worker, not its first connections
        py_spy = Path(sys.executable).parent / "py-spy"
        # Pinned beside wrk, off the worker's core; --format raw is collapsed stacks,
        # which speedscope and flamegraph.pl both open.
        command = ["taskset", "-c", str(load.wrk.core), str(py_spy), "record"]
        command += ["--pid", str(pid), "--duration", str(seconds)]
        command += ["--rate", str(SAMPLES_PER_SECOND), "--format", "raw", "--output", str(raw_file)]
        # --gil: only the thread running Python. Without it, idle anyio worker threads
        # (parked in Condition.wait) are counted as busy on this VM. Full file names tell
        # the standard library from site-packages from backend/.
        command += ["--gil", "--full-filenames"]
        sampled = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
        if sampled.returncode:
            raise RuntimeError(f"py-spy failed ({sampled.returncode}): {sampled.stderr}")
        run = collect(wrk_process, job)
    return summarise(raw_file, seconds, run.rps, endpoint.label)


def markdown(profile: Profile) -> str:
    total = profile.samples or 1
    lines = [
        f"py-spy, {SAMPLES_PER_SECOND} samples/s for {profile.seconds} s on the app's one "
        f"worker (core 0) under wrk `{profile.endpoint}` ({profile.load_rps:.0f} req/s while "
        f"sampled); {profile.samples} non-idle samples. Raw stacks: `{profile.raw_file.name}` "
        "in bench/.work/ (open in speedscope).",
        "",
        "Self time by library (stdlib frames charged to the library that called them):",
        "",
        "| library | share of samples |",
        "| --- | ---: |",
    ]
    for library, count in profile.by_library.most_common():
        lines.append(f"| {library} | {100 * count / total:.1f}% |")
    lines += ["", f"Top {TOP_FUNCTIONS} functions by self time:", ""]
    lines += ["| function | share |", "| --- | ---: |"]
    for function, count in profile.by_function.most_common(TOP_FUNCTIONS):
        lines.append(f"| `{function}` | {100 * count / total:.1f}% |")
    lines += ["", "Notable work, inclusive (samples with it anywhere on the stack):", ""]
    lines += ["| work | function | share |", "| --- | --- | ---: |"]
    for description, function, _ in NOTABLE:
        share = 100 * profile.notable[description] / total
        lines.append(f"| {description} | `{function}` | {share:.1f}% |")
    return "\n".join(lines) + "\n"
