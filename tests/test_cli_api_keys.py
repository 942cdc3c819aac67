"""`backend api-keys create|list|revoke`: bootstrapping a script's API key on the server."""

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backend.cli import app
from backend.main import create_app
from tests.helpers import API, bearer, make_settings, running
from tests.test_cli import create_user, sqlite_env  # noqa: F401  (sqlite_env: a fixture)

runner = CliRunner()


def create_key(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["api-keys", "create", *args])
    return result.exit_code, result.stdout, result.stderr


def api_answers(database: Path, secret: str) -> tuple[int, str | None, int]:
    """With the key, on the API over that database: GET /users/me's status and email,
    and a PATCH's status. (Outside the CLI's own event loops, hence a sync test.)"""

    async def ask() -> tuple[int, str | None, int]:
        async with running(create_app(make_settings(f"sqlite:///{database}"))) as client:
            me = await client.get(f"{API}/users/me", headers=bearer(secret))
            patch = await client.patch(
                f"{API}/users/me", json={"name": "G"}, headers=bearer(secret)
            )
            return me.status_code, me.json().get("email"), patch.status_code

    return asyncio.run(ask())


def test_create_prints_a_working_key_once_and_list_and_revoke_manage_it(
    sqlite_env: Path,  # noqa: F811
) -> None:
    assert create_user("grace@example.com", "Grace Hopper").exit_code == 0
    code, out, err = create_key(
        "--email", "Grace@Example.com", "--name", "backup job", "--scope", "read", "--days", "90"
    )
    assert code == 0, err
    secret = out.strip()
    assert out == secret + "\n"  # stdout is the key alone: KEY=$(backend tokens create ...)
    assert secret.startswith("uak_")
    assert "Created read API key 1 (backup job) for grace@example.com" in err
    assert "shown this once" in err
    database = sqlite3.connect(sqlite_env)
    stored = database.execute("SELECT secret_hash, prefix, scope FROM api_keys").fetchall()
    assert stored == [(hashlib.sha256(secret.encode()).hexdigest(), secret[:12], "read")]

    # The key works against the API on the same database, as the account, read-only.
    assert api_answers(sqlite_env, secret) == (200, "grace@example.com", 403)

    listed = runner.invoke(app, ["api-keys", "list", "--email", "grace@example.com"])
    assert listed.exit_code == 0, listed.output
    header, row = listed.stdout.splitlines()
    assert header.split() == [
        "ID", "OWNER", "NAME", "PREFIX", "SCOPE", "CREATED", "EXPIRES", "LAST", "USED"
    ]  # fmt: skip
    assert row.split()[:6] == ["1", "grace@example.com", "backup", "job", secret[:12], "read"]
    assert secret not in listed.output

    revoked = runner.invoke(app, ["api-keys", "revoke", "1"])
    assert revoked.exit_code == 0, revoked.output
    assert f"Revoked API key 1 (backup job, {secret[:12]}...)." in revoked.stdout
    assert "No API keys." in runner.invoke(app, ["api-keys", "list"]).stdout
    assert api_answers(sqlite_env, secret) == (401, None, 401)
    again = runner.invoke(app, ["api-keys", "revoke", "1"])
    assert again.exit_code == 1
    assert "There is no live API key 1." in again.stderr

    audit = database.execute(
        "SELECT actor_id, action FROM audit_events WHERE action LIKE 'user.api_key%' ORDER BY id"
    ).fetchall()
    assert audit == [(None, "user.api_key_create"), (None, "user.api_key_revoke")]


def test_list_shows_everyones_keys_newest_first(sqlite_env: Path) -> None:  # noqa: F811
    for email in ("ada@example.com", "linus@example.com"):
        assert create_user(email, "Someone").exit_code == 0
        assert create_key("--email", email, "--name", "job", "--scope", "write")[0] == 0
    listed = runner.invoke(app, ["api-keys", "list"])
    owners = [line.split()[1] for line in listed.stdout.splitlines()[1:]]
    assert owners == ["linus@example.com", "ada@example.com"]
    limited = runner.invoke(app, ["api-keys", "list", "--limit", "1"])
    assert len(limited.stdout.splitlines()) == 2
    assert "1 of 2 keys shown; raise --limit for more." in limited.stderr


def test_create_refuses_bad_input_changing_nothing(sqlite_env: Path) -> None:  # noqa: F811
    assert create_user("grace@example.com", "Grace").exit_code == 0
    usage_errors = [
        (["--scope", "admin"], "--scope"),
        (["--scope", "read", "--days", "0"], "--days"),
        (["--scope", "read", "--days", "367"], "--days"),
    ]
    for extra, named in usage_errors:
        code, _, err = create_key("--email", "grace@example.com", "--name", "job", *extra)
        assert code == 2, extra
        assert named in err, extra
    code, _, err = create_key("--email", "grace@example.com", "--name", " ", "--scope", "read")
    assert code == 2
    assert "name: must not be empty" in err
    code, _, err = create_key("--email", "nobody@example.com", "--name", "job", "--scope", "read")
    assert code == 1
    assert "No user with email nobody@example.com." in err
    assert runner.invoke(app, ["users", "deactivate", "grace@example.com"]).exit_code == 0
    code, _, err = create_key("--email", "grace@example.com", "--name", "job", "--scope", "read")
    assert code == 1
    assert "grace@example.com is deactivated" in err
    assert sqlite3.connect(sqlite_env).execute("SELECT count(*) FROM api_keys").fetchone() == (0,)


def test_help_names_the_api_keys_commands() -> None:
    assert "api-keys" in runner.invoke(app, ["--help"]).output
    keys_help = runner.invoke(app, ["api-keys", "--help"]).output
    for command in ("create", "list", "revoke"):
        assert command in keys_help


def test_a_role_change_or_deactivation_on_the_cli_revokes_the_keys(
    sqlite_env: Path,  # noqa: F811
) -> None:
    for email in ("ada@example.com", "linus@example.com"):
        assert create_user(email, "Someone").exit_code == 0
        assert create_key("--email", email, "--name", "job", "--scope", "read")[0] == 0
    assert runner.invoke(app, ["users", "set-role", "ada@example.com", "admin"]).exit_code == 0
    assert runner.invoke(app, ["users", "deactivate", "linus@example.com"]).exit_code == 0
    reasons = sqlite3.connect(sqlite_env).execute(
        "SELECT users.email, revoked_reason FROM api_keys JOIN users ON users.id = user_id"
        " ORDER BY users.email"
    )
    assert reasons.fetchall() == [
        ("ada@example.com", "role_change"),
        ("linus@example.com", "deactivated"),
    ]
    assert "No API keys." in runner.invoke(app, ["api-keys", "list"]).stdout


@pytest.mark.usefixtures("sqlite_env")
def test_tokens_is_a_hidden_alias_of_api_keys() -> None:
    """Scripts written for the command's first name keep working; --help shows one name."""
    create_user("grace@example.com", "Grace")
    listed = runner.invoke(app, ["tokens", "list", "--email", "grace@example.com"])
    assert listed.exit_code == 0, listed.stderr
    assert "No API keys." in listed.stdout
    top_help = runner.invoke(app, ["--help"]).stdout
    assert "api-keys" in top_help
    assert "tokens" not in top_help
