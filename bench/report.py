"""The results files (Markdown) and the harness's chart (PNG, matplotlib's Agg backend)."""

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display in CI; must precede pyplot's import

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench.harness import REPO
from bench.profiling import Profile, markdown
from bench.scenarios import PEER_P99_SHARE, READS, Memory, Options, Runs, Storm
from bench.wrk import WrkResult

# Issue 13: on every read endpoint the app's p99 stays within this multiple of its p50.
TAIL_TARGET = 3.0
STORM_SHARE_TARGET = 0.40
STORM_P99_TARGET_MS = 200
REFUSAL_P99_TARGET_MS = 50
IDLE_RSS_TARGET_MB = 80
RSS_GROWTH_TARGET = 0.10
APP_COLOUR = "#1f77b4"
# Bar colours per server, in the order of the alternating runs.
COLOURS = {"app": APP_COLOUR, "peer": "#ff7f0e", "bare": "#bbbbbb"}
LABELS = {endpoint.key: endpoint.label for endpoint in READS} | {
    "login": "POST /auth/login",
    "refresh": "POST /auth/refresh",
}


def heading(title: str, command: str, machine: list[tuple[str, str]]) -> list[str]:
    """The top of every results file: what was run, on what, when it was how busy."""
    return [f"# {title}", "", f"Command: `{command}`", ""] + [
        f"- {name}: {value}" for name, value in machine
    ]


def table(headings: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """A Markdown table; `align` holds an l or r per column, left by default."""
    rule = "|" + "".join(
        " ---: |" if side == "r" else " --- |" for side in align or "l" * len(headings)
    )
    return [table_row(headings), rule, *(table_row(cells) for cells in rows)]


def table_row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def save(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path.relative_to(REPO)}", flush=True)


def verdict(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"


def megabytes(kib: int) -> float:
    return kib * 1024 / 1e6


@dataclass
class Results:
    title: str
    command: str
    machine: list[tuple[str, str]]
    setup: str
    options: Options
    verify_seconds: float
    memory: Memory
    reads: Runs
    logins: dict[str, list[WrkResult]]
    refresh: dict[str, list[WrkResult]] | None
    storm: Storm
    reads_two_workers: Runs
    two_worker_setup: str
    profile: Profile | None = None
    notes: list[str] = field(default_factory=list)
    elapsed_seconds: float = 0.0


def rps(runs: list[WrkResult]) -> float:
    return statistics.fmean(run.rps for run in runs)


def p50(runs: list[WrkResult]) -> float:
    return statistics.median(run.p50_ms for run in runs)


def p99(runs: list[WrkResult]) -> float:
    """The worst run's p99: a target on p99 should hold in every run."""
    return max(run.p99_ms for run in runs)


def failed(runs: list[WrkResult]) -> int:
    return sum(run.failed for run in runs)


def status_p99(runs: list[WrkResult], status: str) -> float | None:
    """The worst run's p99 of the answers with this status (login.lua), None if none."""
    timed = [run.by_status[status] for run in runs if status in run.by_status]
    return max((each.p99_ms for each in timed if each.count), default=None)


def refused_share(runs: list[WrkResult]) -> float:
    answered = sum(run.requests for run in runs)
    return sum(run.counters.get("status_503", 0) for run in runs) / answered if answered else 0.0


def ratio(per_server: dict[str, list[WrkResult]], other: str) -> float | None:
    """The app's mean req/s over another server's, when that server ran this scenario and
    answered at all (a 1 s smoke run can end before a slow login does)."""
    if other not in per_server or rps(per_server[other]) == 0:
        return None
    return rps(per_server["app"]) / rps(per_server[other])


def ratio_text(per_server: dict[str, list[WrkResult]], other: str) -> str:
    value = ratio(per_server, other)
    if value is not None:
        return f"{value:.2f}x"
    return f"no {other}" if other not in per_server else f"{other} answered none"


def targets(results: Results) -> list[str]:
    rows = []
    for endpoint in READS:
        runs = results.reads[endpoint.key]
        app_p99 = p99(runs["app"])
        if endpoint.peer_ratio is not None:
            peer_ratio = rps(runs["app"]) / rps(runs["peer"])
            peer_p99 = p99(runs["peer"])
            rows += [
                (
                    f"{endpoint.label} req/s >= {endpoint.peer_ratio:.1f}x peer",
                    f"{peer_ratio:.2f}x",
                    verdict(peer_ratio >= endpoint.peer_ratio),
                ),
                (
                    f"{endpoint.label} p99 <= {PEER_P99_SHARE:g}x peer p99",
                    f"{app_p99:.1f} / {peer_p99:.1f} ms = {app_p99 / peer_p99:.2f}x",
                    verdict(app_p99 <= PEER_P99_SHARE * peer_p99),
                ),
            ]
        if endpoint.target_ratio is not None:
            bare_ratio = rps(runs["app"]) / rps(runs["bare"])
            rows.append(
                (
                    f"{endpoint.label} req/s >= {endpoint.target_ratio:.2f}x bare",
                    f"{bare_ratio:.2f}x",
                    verdict(bare_ratio >= endpoint.target_ratio),
                )
            )
        app_p50 = p50(runs["app"])
        rows.append(
            (
                f"{endpoint.label} p99 <= {TAIL_TARGET:g}x p50",
                f"{app_p99:.1f} / {app_p50:.1f} ms = {app_p99 / app_p50:.1f}x",
                verdict(app_p99 <= TAIL_TARGET * app_p50),
            )
        )
    storm = results.storm
    for level in storm.levels:
        share = rps(level.reads) / rps(storm.quiet)
        storm_p99 = p99(level.reads)
        answered = sum(run.requests for run in level.reads) > 0
        rows += [
            (
                f"{level.login_connections} login connections keep >= {STORM_SHARE_TARGET:.0%} "
                f"of quiet {storm.reads.label}",
                f"{share:.0%}",
                verdict(share >= STORM_SHARE_TARGET),
            ),
            (
                f"{storm.reads.label} p99 during {level.login_connections} login connections "
                f"< {STORM_P99_TARGET_MS} ms",
                f"{storm_p99:.1f} ms" if answered else "no read answered",
                verdict(answered and storm_p99 < STORM_P99_TARGET_MS),
            ),
        ]
        budget_ms = results.options.login_max_wait_seconds * 1000
        admitted, refused = status_p99(level.logins, "200"), status_p99(level.logins, "503")
        rows += [
            (
                f"admitted logins' p99 during {level.login_connections} login connections "
                f"<= LOGIN_MAX_WAIT_SECONDS ({budget_ms:.0f} ms)",
                "none admitted" if admitted is None else f"{admitted:.1f} ms",
                verdict(admitted is not None and admitted <= budget_ms),
            ),
            (
                f"refused logins' p99 during {level.login_connections} login connections "
                f"<= {REFUSAL_P99_TARGET_MS} ms",
                "none refused" if refused is None else f"{refused:.1f} ms",
                verdict(refused is None or refused <= REFUSAL_P99_TARGET_MS),
            ),
        ]
    idle = megabytes(results.memory.idle_kib)
    rows.append(
        (
            f"idle RSS <= {IDLE_RSS_TARGET_MB} MB",
            f"{idle:.1f} MB",
            verdict(idle <= IDLE_RSS_TARGET_MB),
        )
    )
    (first_requests, first_kib), (last_requests, last_kib) = (
        results.memory.checkpoints[0],
        results.memory.checkpoints[-1],
    )
    growth = last_kib / first_kib - 1
    rows.append(
        (
            f"RSS after {last_requests:,} requests within {RSS_GROWTH_TARGET:.0%} of RSS after "
            f"{first_requests:,}",
            f"{growth:+.1%}",
            verdict(abs(growth) <= RSS_GROWTH_TARGET),
        )
    )
    return table(("target", "measured", ""), rows)


def runs_table(runs: Runs, *, show_refused: bool = False) -> list[str]:
    headings = ["endpoint", "server", "req/s per run", "req/s", "p50 ms", "p99 ms", "failed"]
    headings += ["503 share"] if show_refused else []
    headings += ["app/peer", "app/bare"]
    rows = []
    for key, per_server in runs.items():
        ratios = [ratio_text(per_server, "peer"), ratio_text(per_server, "bare")]
        for name, server_runs in per_server.items():
            row: list[object] = [LABELS[key], name]
            row += [", ".join(f"{run.rps:.0f}" for run in server_runs)]
            row += [f"{rps(server_runs):.1f}", f"{p50(server_runs):.2f}"]
            row += [f"{p99(server_runs):.2f}", failed(server_runs)]
            row += [f"{refused_share(server_runs):.1%}"] if show_refused else []
            if name == "app":
                row += ratios
            else:
                row += ["", ""]
            rows.append(row)
    return table(headings, rows, "ll" + "r" * (len(headings) - 2))


def write(results: Results, markdown_path: Path) -> None:
    """Write the Markdown results and the chart beside it."""
    chart_path = markdown_path.with_suffix(".png")
    chart(results, chart_path)
    save(markdown_path, render(results, chart_path.name))


def render(results: Results, chart_name: str) -> str:
    options = results.options
    lines = heading(results.title, results.command, results.machine)
    lines += ["", results.setup, "", f"![chart]({chart_name})", "", "## Targets", ""]
    lines += targets(results)
    lines += [
        "",
        "## Reads, 1 worker",
        "",
        f"{options.connections} connections. req/s is the mean of the runs, p50 the median of "
        "their p50s, p99 the worst run's p99; failed counts socket errors, timeouts and "
        "answers >= 400. app/peer and app/bare divide the app's req/s by the other server's "
        "in this run; the peer (fastapi-users, bench/peers/) has no list endpoint and no "
        "refresh.",
        "",
    ]
    lines += runs_table(results.reads)
    lines += ["", "## Login and refresh", ""]
    lines += [
        f"Login: {options.login_connections} connections, OAuth2 form, random seeded users, "
        f"BCRYPT_ROUNDS={options.bcrypt_rounds}. Refresh: {options.refresh_connections} "
        "connections, each following its own token chain (bench/lua/refresh.lua).",
        "",
    ]
    auth_runs: Runs = {"login": results.logins}
    if results.refresh is not None:
        auth_runs["refresh"] = results.refresh
    lines += runs_table(auth_runs, show_refused=True)
    if results.refresh is not None:
        relogins = {
            name: sum(run.counters.get("relogins", 0) for run in runs)
            for name, runs in results.refresh.items()
        }
        lines += ["", f"Refresh chains that broke and logged in again: {relogins}."]
    lines += storm_section(results)
    lines += memory_section(results.memory)
    lines += ["", "## 2 workers", "", results.two_worker_setup, ""]
    lines += two_workers_table(results)
    if results.profile is not None:
        lines += ["", "## Profile: GET /users/{id}", "", markdown(results.profile)]
    if results.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in results.notes]
    lines += ["", f"Elapsed: {results.elapsed_seconds:.0f} s.", ""]
    return "\n".join(lines)


def storm_section(results: Results) -> list[str]:
    options, storm = results.options, results.storm
    bound = options.hash_concurrency / results.verify_seconds
    counts = ", ".join(str(level.login_connections) for level in storm.levels)
    rows = [storm_row(f"{storm.reads.label}, quiet", storm.quiet)]
    for level in storm.levels:
        during = f"during {level.login_connections} login connections"
        rows += [
            storm_row(f"{storm.reads.label}, {during}", level.reads),
            storm_row(f"POST /auth/login, {during}", level.logins),
        ]
    lines = [
        "",
        "## Login storm",
        "",
        f"{storm.reads.label} at {options.connections} connections alone, then while a second "
        f"wrk logs in with each of {counts} connections (both wrk on the load core), "
        f"{options.runs} times. HASH_CONCURRENCY={options.hash_concurrency}, "
        f"HASH_QUEUE_LIMIT={options.hash_queue_limit}, "
        f"LOGIN_MAX_WAIT_SECONDS={options.login_max_wait_seconds:g}.",
        "",
        *table(("load", "req/s per run", "req/s", "p50 ms", "p99 ms", "failed"), rows, "lrrrrr"),
        "",
        f"Theoretical login bound: HASH_CONCURRENCY / one verify's CPU time = "
        f"{options.hash_concurrency} / {results.verify_seconds * 1000:.0f} ms = {bound:.2f} "
        f"logins/s (verify measured in this run: pwdlib bcrypt, rounds {options.bcrypt_rounds}, "
        f"median CPU time of {options.verify_samples}).",
        "",
    ]
    for level in storm.levels:
        logins = level.logins
        lines.append(
            f"- {level.login_connections} login connections: reads kept "
            f"{rps(level.reads) / rps(storm.quiet):.0%} of their quiet throughput; "
            f"{rps(logins):.2f} logins/s, {rps(logins) / bound:.0%} of the bound, "
            f"{refused_share(logins):.1%} refused with 503; "
            f"{status_line(logins, '200', 'admitted')}; {status_line(logins, '503', 'refused')}."
        )
    return lines


def status_line(runs: list[WrkResult], status: str, what: str) -> str:
    timed = [run.by_status[status] for run in runs if status in run.by_status]
    count = sum(each.count for each in timed)
    if not count:
        return f"none {what}"
    worst = max(timed, key=lambda each: each.p99_ms)
    return (
        f"{count} {what}: p50 {worst.p50_ms:.1f} ms, p99 {worst.p99_ms:.1f} ms, "
        f"max {max(each.max_ms for each in timed):.1f} ms (worst run)"
    )


def storm_row(label: str, runs: list[WrkResult]) -> list[object]:
    per_run = ", ".join(f"{run.rps:.1f}" for run in runs)
    return [
        label,
        per_run,
        f"{rps(runs):.1f}",
        f"{p50(runs):.2f}",
        f"{p99(runs):.2f}",
        failed(runs),
    ]


def memory_section(memory: Memory) -> list[str]:
    rows = [("idle after start-up", "0", f"{megabytes(memory.idle_kib):.1f}")]
    rows += [
        ("checkpoint", f"{requests:,}", f"{megabytes(kib):.1f}")
        for requests, kib in memory.checkpoints
    ]
    return [
        "",
        "## Memory",
        "",
        "VmRSS of the app's one worker (/proc/PID/status), under mixed read traffic "
        "(list, by id, me, health in turn). Counts include the one login.",
        "",
        *table(("point", "requests served", "VmRSS MB"), rows, "lrr"),
    ]


def two_workers_table(results: Results) -> list[str]:
    headings = ("endpoint", "app req/s", "bare req/s", "app/bare", "app p99 ms",
                "app 1 worker req/s", "app 2w/1w")  # fmt: skip
    rows = []
    for endpoint in READS:
        two = results.reads_two_workers[endpoint.key]
        app, bare = rps(two["app"]), rps(two["bare"])
        one = rps(results.reads[endpoint.key]["app"])
        app_p99 = p99(two["app"])
        rows.append(
            [endpoint.label, f"{app:.1f}", f"{bare:.1f}", f"{app / bare:.2f}x", f"{app_p99:.2f}",
             f"{one:.1f}", f"{app / one:.2f}x"]
        )  # fmt: skip
    return table(headings, rows, "l" + "r" * 6)


def chart(results: Results, path: Path) -> None:
    figure, axes = plt.subplots(2, 3, figsize=(16, 9), layout="constrained")
    figure.suptitle(results.title)

    throughput = axes[0][0]
    server_bars(throughput, results.reads, rps, "%.0f")
    throughput.set_yscale("log")  # /health is an order of magnitude above the rest
    throughput.set_title("Reads, 1 worker: req/s (log scale; ratios under each)")

    latency = axes[0][1]
    server_bars(latency, results.reads, p99, "%.1f")
    latency.set_yscale("log")
    latency.set_title("Reads, 1 worker: worst p99 ms (log scale)")

    two = axes[0][2]
    server_bars(two, results.reads_two_workers, rps, "%.0f")
    two.set_yscale("log")
    two.set_title("Reads, 2 workers: req/s (log scale; no peer)")

    auth_runs: Runs = {"login": results.logins}
    if results.refresh is not None:
        auth_runs["refresh"] = results.refresh
    auth = axes[1][0]
    server_bars(auth, auth_runs, rps, "%.1f")
    auth.set_yscale("log")  # logins are bcrypt-bound, two orders below refreshes
    auth.set_title(
        "Auth: req/s (log scale)" + ("" if results.refresh is not None else ", no refresh yet")
    )

    storm = axes[1][1]
    phases = {"quiet": results.storm.quiet} | {
        f"{level.login_connections} logging in": level.reads for level in results.storm.levels
    }
    bars = storm.bar(list(phases), [rps(runs) for runs in phases.values()], color=APP_COLOUR)
    storm.bar_label(
        bars,
        labels=[f"{rps(runs):.0f} req/s\np99 {p99(runs):.0f} ms" for runs in phases.values()],
        fontsize=8,
    )
    storm.set_ylim(top=max(rps(runs) for runs in phases.values()) * 1.25)
    storm.set_title(f"Login storm: app {results.storm.reads.label}, by login connections")

    memory = axes[1][2]
    points = {"idle": results.memory.idle_kib}
    points |= {f"{requests:,} requests": kib for requests, kib in results.memory.checkpoints}
    bars = memory.bar(list(points), [megabytes(kib) for kib in points.values()], color=APP_COLOUR)
    memory.bar_label(bars, fmt="%.1f", fontsize=8)
    memory.axhline(IDLE_RSS_TARGET_MB, color="red", linestyle="--", linewidth=1)
    memory.set_title(f"App worker VmRSS, MB (idle target {IDLE_RSS_TARGET_MB} MB dashed)")

    figure.savefig(path, dpi=100)
    plt.close(figure)


def server_bars(
    axis: Axes, runs: Runs, value: Callable[[list[WrkResult]], float], fmt: str
) -> None:
    """Side-by-side bars per scenario for each server that ran it, the ratios in the labels."""
    width = 0.27
    for index, (name, colour) in enumerate(COLOURS.items()):
        offset = (index - 1) * width
        present = [
            (position, per_server)
            for position, per_server in enumerate(runs.values())
            if name in per_server
        ]
        if not present:  # no bars, and no legend entry, for a server that did not run
            continue
        bars = axis.bar(
            [position + offset for position, _ in present],
            [value(per_server[name]) for _, per_server in present],
            width,
            label=name,
            color=colour,
        )
        axis.bar_label(bars, fmt=fmt, fontsize=7)
    labels = []
    for key, per_server in runs.items():
        # "GET\n/users/{id}\n2.10x peer\n0.15x bare": one line each keeps labels apart.
        label = LABELS[key].replace(" ", "\n", 1)
        for other in ("peer", "bare"):
            value_ratio = ratio(per_server, other)
            label += "" if value_ratio is None else f"\n{value_ratio:.2f}x {other}"
        labels.append(label)
    axis.set_xticks(list(range(len(runs))), labels, fontsize=8)
    axis.legend(fontsize=8)
