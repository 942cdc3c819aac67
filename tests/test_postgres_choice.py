"""Which PostgreSQL the suite runs on when the default address or TEST_POSTGRES_URL is
not usable (tests/postgres.py, choose_server), on real servers, never a mock:

- a real server refusing a wrong password,
- a port where nothing listens,
- a real role without CREATEDB, made for the test and dropped after it.

At the default address each falls back to the embedded server with one line saying why;
named in TEST_POSTGRES_URL each is an error of the run, one line, before any test.
"""

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.engine import make_url

from tests.helpers import REPO_ROOT, free_port
from tests.postgres import (
    DEFAULT_POSTGRES_URL,
    ConfiguredServerError,
    Server,
    answers,
    choose_server,
    safe_url,
)
from tests.services import ROLE_MAKER, require


def _wrong_password_url() -> str:
    """The CI server's (TEST_POSTGRES_URL) or the default address's, with a wrong password."""
    url = os.environ.get("TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL
    if not make_url(url).host or not answers(url):
        pytest.skip(f"needs a PostgreSQL server on TCP; nothing answers at {safe_url(url)}")
    return make_url(url).set(password=secrets.token_hex(8)).render_as_string(hide_password=False)


def _closed_port_url() -> str:
    return f"postgresql://backend_test:backend_test@127.0.0.1:{free_port()}/backend_test"


def _assert_fallback(default_url: str, reason: str) -> None:
    choice = choose_server(None, default_url)
    assert (choice.url, choice.embedded) == (None, True)
    assert reason in choice.passed_over
    assert choice.note.count("\n") == 0
    assert f"the default address {safe_url(default_url)} is not usable ({reason}" in choice.note
    assert "embedded server instead" in choice.note


def _assert_run_error(configured: str, reason: str) -> None:
    with pytest.raises(ConfiguredServerError) as raised:
        choose_server(configured, DEFAULT_POSTGRES_URL)
    message = str(raised.value)
    assert message.count("\n") == 0
    assert f"TEST_POSTGRES_URL={safe_url(configured)} cannot run the PostgreSQL tests" in message
    assert reason in message


def test_a_wrong_password_at_the_default_address_falls_back_to_the_embedded_server() -> None:
    url = _wrong_password_url()
    _assert_fallback(url, f'password authentication failed for user "{make_url(url).username}"')


def test_a_wrong_password_in_test_postgres_url_is_an_error_of_the_run() -> None:
    url = _wrong_password_url()
    _assert_run_error(url, f'password authentication failed for user "{make_url(url).username}"')


def test_a_closed_default_port_falls_back_to_the_embedded_server() -> None:
    url = _closed_port_url()
    _assert_fallback(url, f"nothing answers at 127.0.0.1:{make_url(url).port}")


def test_a_closed_port_in_test_postgres_url_is_an_error_of_the_run() -> None:
    url = _closed_port_url()
    _assert_run_error(url, f"nothing answers at 127.0.0.1:{make_url(url).port}")


def test_an_empty_test_postgres_url_without_the_embedded_package_is_an_error() -> None:
    with pytest.raises(ConfiguredServerError, match=r"set but empty.*cannot start: no wheel"):
        choose_server("", embedded_ready="no wheel")


def test_without_any_server_the_postgresql_half_is_skipped_with_the_reason() -> None:
    choice = choose_server(None, _closed_port_url(), embedded_ready="no wheel")
    assert (choice.url, choice.embedded) == (None, False)
    assert "nothing answers at 127.0.0.1:" in choice.problem
    assert choice.problem.endswith("and no wheel")
    assert choice.note.startswith(f"PostgreSQL: {choice.problem}; every PostgreSQL test is skipped")
    assert choice.note.count("\n") == 0


async def _admin_may_create_roles(admin_url: str) -> bool:
    connection = await asyncpg.connect(_plain(admin_url), timeout=10)
    try:
        return bool(
            await connection.fetchval(
                "SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user"
            )
        )
    finally:
        await connection.close()


async def _sql(admin_url: str, statement: str) -> None:
    connection = await asyncpg.connect(_plain(admin_url), timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _plain(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def role_without_createdb(postgres: Server) -> Iterator[str]:
    """A login role without CREATEDB on this run's server; its URL. Made through the
    run's own role, which needs CREATEROLE (.ci/run grants it; the embedded server's
    role is a superuser); elsewhere the test is skipped locally, failed in CI."""
    if not asyncio.run(_admin_may_create_roles(postgres.admin_url)):
        require(ROLE_MAKER, f"{safe_url(postgres.admin_url)} lacks CREATEROLE")
    name = f"backend_test_nocreatedb_{os.getpid()}_{secrets.token_hex(3)}"
    password = secrets.token_hex(8)
    asyncio.run(
        _sql(postgres.admin_url, f"CREATE ROLE {name} LOGIN NOCREATEDB PASSWORD '{password}'")
    )
    try:
        url = make_url(postgres.admin_url).set(username=name, password=password)
        yield url.render_as_string(hide_password=False)
    finally:
        asyncio.run(_sql(postgres.admin_url, f"DROP ROLE IF EXISTS {name}"))


def test_a_role_without_createdb_at_the_default_address_falls_back(
    role_without_createdb: str,
) -> None:
    name = make_url(role_without_createdb).username
    _assert_fallback(role_without_createdb, f'role "{name}" lacks CREATEDB')


def test_a_role_without_createdb_in_test_postgres_url_is_an_error_of_the_run(
    role_without_createdb: str,
) -> None:
    name = make_url(role_without_createdb).username
    _assert_run_error(role_without_createdb, f'role "{name}" lacks CREATEDB')


def test_the_run_stops_on_a_bad_test_postgres_url_with_one_line() -> None:
    """The whole run, as CI starts it: no test runs, no traceback, one line and exit 4."""
    url = _closed_port_url()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_health.py"],
        cwd=REPO_ROOT,
        env={**os.environ, "TEST_POSTGRES_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, lines
    assert lines == [
        f"ERROR: TEST_POSTGRES_URL={safe_url(url)} cannot run the PostgreSQL tests:"
        f" nothing answers at 127.0.0.1:{make_url(url).port}. Fix that server or role (it"
        " needs CREATEDB), or unset TEST_POSTGRES_URL to use the default address or the"
        " embedded server."
    ]
