"""The README and docs/ cannot drift from the code: every relative link and anchor
resolves, every setting is on the settings page with its default, every route of the
OpenAPI document is in the API reference, every module of the design map exists, every
password the docs show as an example is refused, and the README's curl tour and the CSV
export of docs/scripting.md run against a served app.

No database half: plain functions, and one `backend serve` process on a SQLite file for
the two runnable examples.
"""

import csv
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic.fields import FieldInfo

from backend.config import Settings
from backend.errors import ProblemCode
from backend.main import create_app
from backend.rules import PASSWORD_MIN_LENGTH_FLOOR, password_problem
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    REPO_ROOT,
    USER_PASSWORD,
    free_port,
    make_settings,
    server_env,
    wait_until_healthy,
)

DOCS = REPO_ROOT / "docs"
PAGES = sorted([REPO_ROOT / "README.md", REPO_ROOT / "bench" / "README.md", *DOCS.glob("*.md")])
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`+[^`]*`+")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# The address the documented commands use, swapped for the served app's.
DOCUMENTED_SERVER = "http://127.0.0.1:8000"


# --- reading Markdown ------------------------------------------------------------------


def prose_lines(text: str) -> Iterator[str]:
    """The lines outside fenced code blocks, HTML comments emptied."""
    inside = False
    for line in HTML_COMMENT.sub("", text).splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield line


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Every fenced block as (info string, body)."""
    blocks: list[tuple[str, str]] = []
    info, body = "", list[str]()
    inside = False
    for line in text.splitlines():
        match = FENCE.match(line)
        if match and not inside:
            inside, info, body = True, line.strip()[3:].strip(), []
        elif match:
            inside = False
            blocks.append((info, "\n".join(body) + "\n"))
        elif inside:
            body.append(line)
    return blocks


def section(text: str, heading: str) -> str:
    """The text under a heading, up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    level = len(heading) - len(heading.lstrip("#"))
    start = lines.index(heading)
    end, inside = len(lines), False
    for index in range(start + 1, len(lines)):
        inside ^= bool(FENCE.match(lines[index]))
        match = None if inside else HEADING.match(lines[index])
        if match and len(match.group(1)) <= level:
            end = index
            break
    return "\n".join(lines[start + 1 : end])


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower-case, punctuation but `-`
    and `_` dropped, each space a `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """A page's heading anchors; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: Counter[str] = Counter()
    found: set[str] = set()
    for line in prose_lines(text):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            found.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
            seen[base] += 1
    return found


def relative_links(page: Path) -> list[str]:
    targets: list[str] = []
    for line in prose_lines(page.read_text()):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if not SCHEME.match(target):
                targets.append(target)
    return targets


def broken_links(page: Path) -> list[str]:
    broken: list[str] = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix != ".md":
            broken.append(f"{target}: an anchor into a file that is not Markdown")
        elif anchor and anchor not in anchors(resolved.read_text()):
            broken.append(f"{target}: no heading with that anchor in {resolved.name}")
    return broken


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row (header and rule rows included)."""
    rows: list[list[str]] = []
    for line in prose_lines(text):
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
            rows.append([cell.strip() for cell in cells])
    return rows


# --- (a) links and anchors -------------------------------------------------------------


def test_the_pages_exist_and_the_readme_stays_short() -> None:
    assert (DOCS / "README.md").exists()
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO_ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_every_docs_page_is_linked_from_the_readme_and_the_index() -> None:
    for index in (REPO_ROOT / "README.md", DOCS / "README.md"):
        linked = {
            (index.parent / target.partition("#")[0]).resolve() for target in relative_links(index)
        }
        missing = [page.name for page in DOCS.glob("*.md") if page != index and page not in linked]
        assert missing == [], f"{index.relative_to(REPO_ROOT)} does not link {missing}"


def test_the_slug_rules() -> None:
    assert slug("The admin dashboard (`clients/admin`)") == "the-admin-dashboard-clientsadmin"
    assert slug("Mailed links: invitations, password reset and email verification") == (
        "mailed-links-invitations-password-reset-and-email-verification"
    )
    assert slug("A [linked](x.md) **heading**_with-marks!") == "a-linked-heading_with-marks"
    page = "# Title\n## Setup\n```\n## Not a heading\n```\n## Setup\n### Setup\n"
    assert anchors(page) == {"title", "setup", "setup-1", "setup-2"}


# --- (b) settings ----------------------------------------------------------------------

SETTINGS_PAGE = DOCS / "settings.md"
NONE = "none"
# Fields left unset whose value the app works out at start-up (a random key, the budget,
# the stage...): the page says how in words. Every other unset field reads "none".
WORKED_OUT = {
    "SECRET_KEY",
    "AUTO_MIGRATE",
    "HASH_CONCURRENCY",
    "DB_POOL_TIMEOUT_SECONDS",
    "DB_CONNECT_TIMEOUT_SECONDS",
    "DB_STATEMENT_TIMEOUT_SECONDS",
    "PUBLIC_URL",
    "INVITATIONS_ENABLED",
    "PASSWORD_RESET_ENABLED",
    "EMAIL_CHANGE_ENABLED",
    "LOG_FORMAT",
    "ADMIN_DIR",
    "RATE_LIMIT_STORAGE",
    "DOCS_ENABLED",
    "RP_ID",
    "RP_NAME",
    "WEBAUTHN_ORIGINS",
    "WEBHOOK_ALLOW_PRIVATE_ADDRESSES",
}


def unset(field: FieldInfo) -> bool:
    return field.default_factory is not None or field.default in (None, "", [])


def rendered_default(field: FieldInfo) -> str:
    """A default as the settings page writes it: as in `.env`, in code font."""
    if unset(field):
        return NONE
    value = field.default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def documented_defaults() -> dict[str, str]:
    defaults: dict[str, str] = {}
    for cells in table_rows(SETTINGS_PAGE.read_text()):
        match = re.fullmatch(r"`([A-Z0-9_]+)`", cells[0])
        if match:
            assert match.group(1) not in defaults, f"{match.group(1)} has two rows"
            defaults[match.group(1)] = cells[1]
    return defaults


def test_the_rendering_rule() -> None:
    fields = Settings.model_fields
    assert rendered_default(fields["PROJECT_NAME"]) == "`Users API`"
    assert rendered_default(fields["RATE_LIMIT_ENABLED"]) == "`true`"
    assert rendered_default(fields["AUTH_CACHE_SECONDS"]) == "`5`"  # 5.0
    assert rendered_default(fields["REDIS_URL"]) == NONE
    assert rendered_default(fields["CORS_ORIGINS"]) == NONE  # []
    assert unset(fields["SECRET_KEY"])  # ""
    assert unset(fields["HASH_CONCURRENCY"])  # a factory


def test_every_setting_is_documented_with_its_default() -> None:
    fields = Settings.model_fields
    documented = documented_defaults()
    assert sorted(set(documented) - set(fields)) == [], "rows for settings that do not exist"
    assert sorted(name for name in WORKED_OUT if not unset(fields[name])) == [], (
        "WORKED_OUT names a setting that has a plain default now"
    )
    wrong: list[str] = []
    for name, field in fields.items():
        cell = documented.get(name)
        if cell is None:
            wrong.append(f"{name}: not on the page")
        elif name in WORKED_OUT:
            if cell in ("", NONE) or re.fullmatch(r"`[^`]*`", cell):
                wrong.append(f"{name}: worked out at start-up, so say how, not {cell!r}")
        elif cell != rendered_default(field):
            wrong.append(f"{name}: the page says {cell!r}, the code {rendered_default(field)!r}")
    assert wrong == []


def test_env_example_names_every_setting() -> None:
    """The settings page says `.env.example` lists them all: each as `NAME=` or
    `# NAME=`, and nothing else."""
    text = (REPO_ROOT / ".env.example").read_text()
    named = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))
    assert sorted(set(Settings.model_fields) - named) == []
    assert sorted(named - set(Settings.model_fields)) == []


# --- (c) routes ------------------------------------------------------------------------

API_PAGE = DOCS / "api.md"
# Served, but outside the OpenAPI document (only with METRICS_ENABLED=true).
UNDOCUMENTED_BY_OPENAPI = {("GET", "/metrics")}
ROUTE = re.compile(r"`(GET|HEAD|POST|PUT|PATCH|DELETE) (/[^`?\s]*)[^`]*`")


def openapi_routes(tmp_path: Path) -> set[tuple[str, str]]:
    settings = make_settings(f"sqlite:///{tmp_path / 'unused.db'}", METRICS_ENABLED=True)
    app = create_app(settings)
    prefix = settings.API_V1_PREFIX
    assert f"under `{prefix}`" in API_PAGE.read_text(), "api.md must state the prefix once"
    routes: set[tuple[str, str]] = set()
    for path, operations in app.openapi()["paths"].items():
        short = path.removeprefix(prefix) if path.startswith(prefix + "/") else path
        routes.update((method.upper(), short) for method in operations)
    served = {getattr(route, "path", None) for route in app.routes}
    assert {path for _, path in UNDOCUMENTED_BY_OPENAPI} <= served
    return routes


def documented_routes() -> set[tuple[str, str]]:
    routes: set[tuple[str, str]] = set()
    for cells in table_rows(API_PAGE.read_text()):
        match = ROUTE.match(cells[0])
        if match:
            routes.add((match.group(1), match.group(2)))
    return routes


def test_every_route_is_in_the_api_reference_and_no_other(tmp_path: Path) -> None:
    served = openapi_routes(tmp_path)
    documented = documented_routes()
    assert sorted(served - documented) == [], "routes missing from docs/api.md"
    assert sorted(documented - served - UNDOCUMENTED_BY_OPENAPI) == [], "routes the app lacks"


# --- repository paths in code spans ---------------------------------------------------

REPO_PATH = re.compile(r"`((?:backend|tests|clients|bench|alembic|docs|\.ci)/[\w./-]*)`")
# Made by a build or a run, not kept in the repository: the dashboard's bundle, the
# migrations as the wheel carries them, the benchmark's output.
BUILT_PATHS = ("clients/admin/dist", "backend/alembic", "bench/.work")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO_ROOT)))
def test_every_repository_path_in_the_docs_exists(page: Path) -> None:
    named = set(REPO_PATH.findall("\n".join(prose_lines(page.read_text()))))
    kept = {path for path in named if not path.startswith(BUILT_PATHS)}
    missing = sorted(path for path in kept if not (REPO_ROOT / path).exists())
    assert missing == []


# --- the problem codes ---------------------------------------------------------------

CODE_ROW = re.compile(r"^\| `([a-z_]+)` \| ([0-9]{3}|any) \|", re.MULTILINE)


def test_every_problem_code_has_a_row_in_the_api_reference() -> None:
    documented = CODE_ROW.findall((DOCS / "api.md").read_text())
    assert [code for code, _ in documented] == [code.value for code in ProblemCode]


# --- example passwords ---------------------------------------------------------------

# Where a password appears as an example: an account's password in an environment
# variable or a Python constant, a JSON or form field, a keyword argument, a client call.
_VALUE = r"[\w!#%*+,.@~^-]+(?=[\s\"'|)&`]|$)"  # a literal: not `$VAR`, nor code
EXAMPLE_PASSWORD = re.compile(
    rf"(?:ADMIN_|USER_)PASSWORD[ \t]*[=:][ \t]*[\"']?(?P<env>{_VALUE})"
    rf"|\"password\":\s*\"(?P<json>{_VALUE})"
    rf"|\bpassword=[\"']?(?P<form>{_VALUE})"
    rf"|login\(\"[^\"]*\",\s*\"(?P<call>{_VALUE})",
    re.MULTILINE,
)
EXAMPLE_SOURCES = [
    *PAGES,
    REPO_ROOT / ".env.example",
    REPO_ROOT / "compose.yml",
    *(REPO_ROOT / "bench").rglob("*.py"),
    *(REPO_ROOT / "bench").rglob("*.lua"),
]


def documented_passwords() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in EXAMPLE_SOURCES:
        for match in EXAMPLE_PASSWORD.finditer(path.read_text()):
            password = next(group for group in match.groups() if group is not None)
            found.setdefault(password, str(path.relative_to(REPO_ROOT)))
    return found


def test_every_example_password_is_refused() -> None:
    """Anyone who read the docs knows their passwords: each one they show is refused
    by the password policy, whatever PASSWORD_MIN_LENGTH is."""
    found = documented_passwords()
    assert {"Admin-Pass-1", "Bench-Password-1"} <= set(found)
    accepted = {
        password: where
        for password, where in found.items()
        if password_problem(password, min_length=PASSWORD_MIN_LENGTH_FLOOR) is None
    }
    assert accepted == {}, "add them to backend.rules.EXAMPLE_PASSWORDS"


# --- (d) the design map ----------------------------------------------------------------

DESIGN_PAGE = DOCS / "design.md"
ENTRY = re.compile(r"^( *)([\w.]+(?:\.py|/))(?:\s|$)")


def design_map_paths() -> list[str]:
    """The map's tree (`backend/` then entries indented two spaces a level; wrapped
    descriptions are indented deeper than any entry), and every `backend/...` in prose."""
    tree = next(
        body for _, body in fenced_blocks(DESIGN_PAGE.read_text()) if body.startswith("backend/")
    )
    paths: list[str] = []
    parents: list[str] = []
    for line in tree.splitlines():
        match = ENTRY.match(line)
        if not match or len(match.group(1)) > 8:
            continue  # a wrapped description
        depth = len(match.group(1)) // 2
        parents[depth:] = [match.group(2)]
        paths.append("".join(parents))
    prose = "\n".join(prose_lines(DESIGN_PAGE.read_text()))
    paths += re.findall(r"\bbackend/[\w./]*[\w/]", prose)
    return paths


def test_the_design_map_comes_first_and_is_read_as_a_tree() -> None:
    first = next(line for line in DESIGN_PAGE.read_text().splitlines() if line.startswith("## "))
    assert first == "## The map"
    paths = design_map_paths()
    assert paths[0] == "backend/"
    assert "backend/db/engine.py" in paths
    assert "backend/routers/health.py" in paths


def test_every_module_in_the_design_map_exists() -> None:
    missing = [path for path in design_map_paths() if not (REPO_ROOT / path).exists()]
    assert missing == []


def test_every_module_of_the_package_is_in_the_design_map() -> None:
    """The other way round: a module or package added to backend/ gets its line."""
    mapped = set(design_map_paths())
    package = REPO_ROOT / "backend"
    modules = {
        f"backend/{path.relative_to(package).as_posix()}"
        for path in package.rglob("*.py")
        if path.name != "__init__.py" and "alembic" not in path.parts
    }
    packages = {
        f"backend/{path.parent.relative_to(package).as_posix()}/"
        for path in package.rglob("__init__.py")
        if path.parent != package
    }
    unmapped = (modules | packages) - mapped
    assert sorted(unmapped) == []


# --- (e) the documented commands, run ----------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`backend serve` on a SQLite file, in an empty folder: its base URL."""
    workdir = tmp_path_factory.mktemp("docs-served")
    port = free_port()
    log = workdir / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "backend"), "serve", "--port", str(port)],
            cwd=workdir,
            env={**server_env(workdir / "served.db"), "LOG_LEVEL": "WARNING"},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base_url, process, log, 60.0)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def pointed_at(block: str, base_url: str) -> str:
    """A documented block with its server address swapped for the served app's."""
    assert block.count(DOCUMENTED_SERVER) == 1, "the block names the server once"
    return block.replace(DOCUMENTED_SERVER, base_url)


def test_the_readme_tour_runs(served: str) -> None:
    tour = section((REPO_ROOT / "README.md").read_text(), "## A ten-line tour")
    [(info, block)] = fenced_blocks(tour)
    assert info == "sh"
    assert len(block.splitlines()) <= 10
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", pointed_at(block, served)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    registered, _, listed = result.stdout.partition("HTTP/1.1 ")
    assert json.loads(registered)["user"]["email"] == "ada@example.com"
    head, _, body = listed.partition("\n\n")  # text mode reads CRLF as a newline
    status, *header_lines = head.split("\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    assert status.startswith("200")
    assert int(headers["x-total-count"]) >= 2  # the first admin and Ada
    assert 'rel="first"' in headers["link"]
    assert headers["content-range"].startswith("users 0-")
    users: list[dict[str, Any]] = json.loads(body)
    assert users[0]["email"] == "ada@example.com"  # newest first
    assert len(users) <= 5


def test_the_csv_export_runs(served: str, tmp_path: Path) -> None:
    scripting = (DOCS / "scripting.md").read_text()
    [(info, script)] = fenced_blocks(section(scripting, "## A complete CSV export"))
    assert info == "python"
    with httpx.Client(base_url=served + API) as api:
        credentials = {"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        token = api.post("/auth/login", data=credentials).raise_for_status().json()["access_token"]
        api.headers["Authorization"] = f"Bearer {token}"
        names = ['=HYPERLINK("http://x")', 'Zoë "Z", Jr.', "-1+1", "Plain"]
        for number, name in enumerate(names):
            fields = {
                "email": f"export{number}@example.com",
                "name": name,
                "password": USER_PASSWORD,
            }
            api.post("/users", json={**fields, "role": "user"}).raise_for_status()
        key = {"name": "export", "scope": "read", "expires_in_days": 1}
        secret = api.post("/users/me/tokens", json=key).raise_for_status().json()["secret"]
        expected = (
            api.get("/users", params={"per_page": 1000, "sort": "id"}).raise_for_status().json()
        )
    assert len(expected) >= 5  # the admin and four more: three pages of two
    path = tmp_path / "export_users.py"
    path.write_text(pointed_at(script, served))
    output = tmp_path / "users.csv"
    environment = {"PATH": os.environ["PATH"], "USERS_API_KEY": secret, "PER_PAGE": "2"}
    result = subprocess.run(
        [sys.executable, str(path), str(output)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"{len(expected)} users written" in result.stderr
    with output.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [row["id"] for row in rows] == [str(user["id"]) for user in expected]
    assert [row["email"] for row in rows] == [user["email"] for user in expected]
    by_email = {row["email"]: row for row in rows}
    assert by_email["export0@example.com"]["name"] == '\'=HYPERLINK("http://x")'
    assert by_email["export1@example.com"]["name"] == 'Zoë "Z", Jr.'
    assert by_email["export2@example.com"]["name"] == "'-1+1"
    assert by_email[ADMIN_EMAIL]["role"] == "admin"
