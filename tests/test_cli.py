import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from backend.cli import app
from backend.config import get_settings
from backend.db.migrate import newest_revision
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    USER_PASSWORD,
    RegisterUser,
    bearer,
    free_port,
    post_login,
)

runner = CliRunner()


@pytest.fixture
def sqlite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    database = tmp_path / "cli.db"
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("BCRYPT_ROUNDS", "4")
    monkeypatch.delenv("FIRST_ADMIN_EMAIL", raising=False)
    get_settings.cache_clear()
    yield database
    get_settings.cache_clear()


def test_help_explains_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "migrate", "create-admin", "users"):
        assert command in result.output
    users_help = runner.invoke(app, ["users", "--help"])
    for command in ("list", "create", "set-role", "deactivate", "activate", "set-password"):
        assert command in users_help.output
    serve_help = runner.invoke(app, ["serve", "--help"])
    assert "--workers" in serve_help.output
    assert "docs at" in serve_help.output


def test_migrate_then_create_admin_once(sqlite_env: Path) -> None:
    migrated = runner.invoke(app, ["migrate"])
    assert migrated.exit_code == 0, migrated.output
    newest = newest_revision()
    assert migrated.output == f"Migrated the database from empty to {newest}, the newest.\n"
    again = runner.invoke(app, ["migrate"])
    assert again.output == f"Nothing to do: the database is at the newest migration ({newest}).\n"
    tables = sqlite3.connect(sqlite_env).execute("SELECT name FROM sqlite_master").fetchall()
    assert ("users",) in tables

    args = ["create-admin", "--email", "Boss@Example.com", "--password", "Boss-Password-1"]
    created = runner.invoke(app, args)
    assert created.exit_code == 0, created.output
    assert "Created admin boss@example.com" in created.output
    row = sqlite3.connect(sqlite_env).execute("SELECT role, hashed_password FROM users").fetchone()
    assert row[0] == "admin"

    again = runner.invoke(app, [*args[:3], "--password", "Other-Password-2"])
    assert again.exit_code == 1
    assert "already exists; nothing changed" in again.output
    unchanged = sqlite3.connect(sqlite_env).execute("SELECT hashed_password FROM users").fetchone()
    assert unchanged[0] == row[1]


def test_create_admin_rejects_a_weak_password(sqlite_env: Path) -> None:
    result = runner.invoke(app, ["create-admin", "--email", "a@example.com", "--password", "weak"])
    assert result.exit_code == 2
    assert "password: must be at least 12 characters long" in result.output


def test_create_admin_rejects_a_password_like_the_email(sqlite_env: Path) -> None:
    args = ["create-admin", "--email", "zebedee.quill@example.com", "--password", "ZebedeeQuill-24"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "password: must not be made of the email address's name part" in result.output
    assert sqlite3.connect(sqlite_env).execute("SELECT count(*) FROM users").fetchone() == (0,)


def test_serve_refuses_several_workers_on_sqlite(sqlite_env: Path) -> None:
    result = runner.invoke(app, ["serve", "--workers", "2"])
    assert result.exit_code == 2
    assert result.output == "--workers: several workers need PostgreSQL, not SQLite\n"


def test_serve_refuses_several_workers_without_a_secret_key(sqlite_env: Path) -> None:
    env = {"DATABASE_URL": "postgresql://u:p@127.0.0.1:9/db", "SECRET_KEY": "", "STAGE": "local"}
    result = runner.invoke(app, ["serve", "--workers", "2"], env=env)
    assert result.exit_code == 2
    assert result.output.startswith("SECRET_KEY: several workers need one set")
    assert result.output.count("\n") == 1


def create_user(email: str, name: str, role: str = "user") -> Result:
    args = ["users", "create", "--email", email, "--name", name, "--role", role]
    return runner.invoke(app, args, env={"USER_PASSWORD": "User-Password-1"})


def account(database: Path, email: str) -> tuple[str, int, int]:
    """(role, is_active, token_version) as stored."""
    row = (
        sqlite3.connect(database)
        .execute("SELECT role, is_active, token_version FROM users WHERE email = ?", (email,))
        .fetchone()
    )
    assert row is not None, email
    return row[0], row[1], row[2]


def test_users_create_validates_like_the_api(
    sqlite_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = create_user("Grace@Example.com", "Grace Hopper")
    assert created.exit_code == 0, created.output
    assert "Created user grace@example.com (id 1)." in created.output
    stored = sqlite3.connect(sqlite_env).execute("SELECT hashed_password FROM users").fetchone()
    assert stored[0].startswith("$2b$04$")  # hashed with BCRYPT_ROUNDS, never stored as typed

    taken = create_user("GRACE@example.com", "Another Grace")
    assert taken.exit_code == 1
    assert "A user with this email already exists." in taken.stderr
    assert sqlite3.connect(sqlite_env).execute("SELECT count(*) FROM users").fetchone()[0] == 1

    weak = runner.invoke(
        app,
        ["users", "create", "--email", "weak@example.com", "--name", "Weak"],
        env={"USER_PASSWORD": "password1234"},
    )
    assert weak.exit_code == 2
    assert "password: is too common" in weak.stderr

    monkeypatch.delenv("USER_PASSWORD", raising=False)
    prompted = runner.invoke(
        app,
        ["users", "create", "--email", "ada@example.com", "--name", "Ada", "--role", "admin"],
        input="Typed-Password-1\nTyped-Password-1\n",
    )
    assert prompted.exit_code == 0, prompted.output
    assert "Repeat for confirmation" in prompted.output
    assert account(sqlite_env, "ada@example.com")[0] == "admin"


def test_users_list_filters_and_limits(sqlite_env: Path) -> None:
    empty = runner.invoke(app, ["users", "list"])  # on a new file: migrated, then empty
    assert empty.exit_code == 0, empty.output
    assert "No users match." in empty.output
    for email, name, role in (
        ("ada@example.com", "Ada Lovelace", "admin"),
        ("grace@example.com", "Grace Hopper", "user"),
        ("linus@example.com", "Linus", "user"),
    ):
        assert create_user(email, name, role).exit_code == 0

    everyone = runner.invoke(app, ["users", "list"])
    assert everyone.exit_code == 0, everyone.output
    header, *rows = everyone.stdout.splitlines()
    assert header.split() == ["ID", "EMAIL", "NAME", "ROLE", "ACTIVE", "CREATED"]
    assert [row.split()[:2] for row in rows] == [
        ["1", "ada@example.com"],
        ["2", "grace@example.com"],
        ["3", "linus@example.com"],
    ]
    assert "Ada Lovelace  admin  yes" in rows[0]
    # The columns line up under their headings.
    assert {row.index(row.split()[1]) for row in rows} == {header.index("EMAIL")}
    assert {row.index("2026-") for row in rows} == {header.index("CREATED")}

    users = runner.invoke(app, ["users", "list", "--role", "user"]).stdout
    assert "grace@example.com" in users
    assert "linus@example.com" in users
    assert "ada@example.com" not in users
    searched = runner.invoke(app, ["users", "list", "--q", "HOP"]).stdout
    assert [line.split()[:2] for line in searched.splitlines()[1:]] == [["2", "grace@example.com"]]

    limited = runner.invoke(app, ["users", "list", "--limit", "2"])
    assert limited.exit_code == 0
    assert len(limited.stdout.splitlines()) == 3
    assert "2 of 3 users shown; raise --limit for more." in limited.stderr

    assert runner.invoke(app, ["users", "list", "--role", "owner"]).exit_code == 2
    assert runner.invoke(app, ["users", "list", "--limit", "0"]).exit_code == 2


def test_users_set_role_and_deactivate_keep_the_api_rules(sqlite_env: Path) -> None:
    assert create_user("ada@example.com", "Ada", "admin").exit_code == 0
    assert create_user("grace@example.com", "Grace").exit_code == 0

    promoted = runner.invoke(app, ["users", "set-role", "grace@example.com", "admin"])
    assert promoted.exit_code == 0, promoted.output
    assert "grace@example.com is now admin; every token it held is revoked." in promoted.output
    assert account(sqlite_env, "grace@example.com") == ("admin", 1, 1)
    again = runner.invoke(app, ["users", "set-role", "GRACE@example.com", "admin"])
    assert again.exit_code == 0
    assert "grace@example.com is already admin; nothing changed." in again.output
    assert account(sqlite_env, "grace@example.com") == ("admin", 1, 1)

    assert runner.invoke(app, ["users", "set-role", "ada@example.com", "user"]).exit_code == 0
    last_admin = "The last active admin cannot be demoted, deactivated, banned or deleted."
    for command in (["set-role", "grace@example.com", "user"], ["deactivate", "grace@example.com"]):
        refused = runner.invoke(app, ["users", *command])
        assert refused.exit_code == 1
        assert last_admin in refused.stderr
    assert account(sqlite_env, "grace@example.com") == ("admin", 1, 1)

    deactivated = runner.invoke(app, ["users", "deactivate", "ada@example.com"])
    assert deactivated.exit_code == 0, deactivated.output
    assert "ada@example.com is now inactive; every token it held is revoked." in deactivated.output
    assert account(sqlite_env, "ada@example.com") == ("user", 0, 2)
    activated = runner.invoke(app, ["users", "activate", "ada@example.com"])
    assert activated.exit_code == 0
    assert "ada@example.com is now active." in activated.output
    assert account(sqlite_env, "ada@example.com") == ("user", 1, 2)  # nothing to revoke

    unknown = runner.invoke(app, ["users", "deactivate", "nobody@example.com"])
    assert unknown.exit_code == 1
    assert "No user with email nobody@example.com." in unknown.stderr


def test_migrate_refuses_a_missing_folder_in_one_line(
    sqlite_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mistyped = sqlite_env.parent / "dta" / "app.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{mistyped}")
    result = runner.invoke(app, ["migrate"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"DATABASE_URL: the folder {mistyped.parent} of the SQLite file does not exist "
        "(create it, or correct the path)"
    )
    assert not mistyped.parent.exists()


def test_the_default_database_folder_is_made_on_the_first_run(
    sqlite_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL")
    result = runner.invoke(app, ["migrate"])
    assert result.exit_code == 0, result.output
    assert (sqlite_env.parent / "data" / "app.db").is_file()


@pytest.mark.parametrize("command", [["migrate"], ["users", "list"]])
def test_an_unreachable_database_is_one_line(
    command: list[str], sqlite_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("DATABASE_URL", f"postgresql://user:Db-Secret-1@127.0.0.1:{port}/app")
    result = runner.invoke(app, command)
    assert result.exit_code == 1
    assert result.output.startswith(
        f"DATABASE_URL: cannot use the database at 127.0.0.1:{port}/app: "
    )
    assert len(result.output.strip().splitlines()) == 1
    assert "Db-Secret-1" not in result.output


@pytest.mark.parametrize("port", ["-1", "65536", "99999"])
def test_serve_refuses_a_port_out_of_range(port: str) -> None:
    result = runner.invoke(app, ["serve", "--port", port])
    assert result.exit_code == 2
    assert "Invalid value for '--port'" in result.output


def test_users_sessions_lists_and_users_logout_ends_them(sqlite_env: Path) -> None:
    assert create_user("ada@example.com", "Ada").exit_code == 0
    none = runner.invoke(app, ["users", "sessions", "ada@example.com"])
    assert none.exit_code == 0, none.output
    assert "ada@example.com has no live session." in none.output
    connection = sqlite3.connect(sqlite_env)
    with connection:
        connection.execute(
            "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at,"
            " user_agent, ip_address) SELECT :id, id, datetime('now'), datetime('now'),"
            " datetime('now', '+30 days'), 'Firefox/130', '203.0.113.9' FROM users",
            {"id": "c" * 32},
        )
    listed = runner.invoke(app, ["users", "sessions", "ada@example.com"])
    assert listed.exit_code == 0, listed.output
    header, row = listed.output.splitlines()
    assert header.split() == [
        "ID",
        "CREATED",
        "LAST",
        "USED",
        "EXPIRES",
        "ADDRESS",
        "USER",
        "AGENT",
    ]
    assert row.startswith("c" * 32)
    assert row.endswith("203.0.113.9  Firefox/130")
    ended = runner.invoke(app, ["users", "logout", "ada@example.com"])
    assert ended.exit_code == 0, ended.output
    assert "Ended 1 session of ada@example.com." in ended.output
    assert (
        "has no live session" in runner.invoke(app, ["users", "sessions", "ada@example.com"]).output
    )
    reason = connection.execute("SELECT revoked_reason FROM sessions").fetchone()
    assert reason == ("admin",)
    audit = connection.execute(
        "SELECT action, actor_id FROM audit_events ORDER BY id DESC"
    ).fetchone()
    assert audit == ("user.sessions_end_all", None)
    unknown = runner.invoke(app, ["users", "logout", "nobody@example.com"])
    assert unknown.exit_code == 1
    assert "No user with email nobody@example.com." in unknown.output


# --- set-password and delete, on both databases, beside a running app ----------------


@pytest.fixture
def cli_on_test_database(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The CLI's settings point at the database the `client` fixture's app uses."""
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("BCRYPT_ROUNDS", "4")
    monkeypatch.setenv("AUTO_MIGRATE", "false")
    monkeypatch.delenv("FIRST_ADMIN_EMAIL", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def invoke(args: list[str], input: str | None = None) -> Result:
    """The command in a thread: it runs its own event loop (asyncio.run)."""
    return await asyncio.to_thread(runner.invoke, app, args, input=input)


async def test_users_set_password_prompts_twice_and_ends_every_session(
    cli_on_test_database: None,
    client: httpx.AsyncClient,
    register: RegisterUser,
    admin_headers: dict[str, str],
) -> None:
    help_text = (await invoke(["users", "set-password", "--help"])).output
    assert "--password" not in help_text  # never on the command line
    tokens = await register(email="pat@example.com")
    new = "Brand-New-Secret-7"
    # A mistyped confirmation is asked again; what is typed is never shown.
    typed = f"{new}\nSomething-Else-7\n{new}\n{new}\n"
    result = await invoke(["users", "set-password", "Pat@Example.com"], input=typed)
    assert result.exit_code == 0, result.output
    assert result.output.count("New password") == 2
    assert "do not match" in result.output
    assert new not in result.output
    assert "Password of pat@example.com set; every session it had is ended." in result.output

    me = await client.get(f"{API}/users/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 401
    refresh = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refresh.status_code == 401
    assert (await post_login(client, "pat@example.com", USER_PASSWORD)).status_code == 401
    assert (await post_login(client, "pat@example.com", new)).status_code == 200
    audit = await client.get(
        f"{API}/audit", params={"sort": "-id", "per_page": "1"}, headers=admin_headers
    )
    event = audit.json()[0]
    assert (event["action"], event["actor_id"], event["details"]) == (
        "user.update",
        None,
        {"fields": ["password"]},
    )

    weak = await invoke(["users", "set-password", "pat@example.com"], input="password1234\n" * 2)
    assert weak.exit_code == 2
    assert "password: is too common" in weak.stderr
    assert (await post_login(client, "pat@example.com", new)).status_code == 200
    unknown = await invoke(["users", "set-password", "nobody@example.com"], input=f"{new}\n" * 2)
    assert unknown.exit_code == 1
    assert "No user with email nobody@example.com." in unknown.stderr


async def test_users_delete_asks_unless_yes_and_keeps_the_last_admin(
    cli_on_test_database: None,
    client: httpx.AsyncClient,
    register: RegisterUser,
    admin_headers: dict[str, str],
) -> None:
    tokens = await register(email="del@example.com")
    user_id = tokens["user"]["id"]

    declined = await invoke(["users", "delete", "del@example.com"], input="n\n")
    assert declined.exit_code == 1
    assert "Delete the account del@example.com and end its sessions? [y/N]" in declined.output
    assert (await client.get(f"{API}/users/{user_id}", headers=admin_headers)).status_code == 200

    confirmed = await invoke(["users", "delete", "del@example.com"], input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert f"Deleted del@example.com (id {user_id})." in confirmed.output
    assert (await client.get(f"{API}/users/{user_id}", headers=admin_headers)).status_code == 404
    me = await client.get(f"{API}/users/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 401
    audit = await client.get(
        f"{API}/audit", params={"action": "user.delete"}, headers=admin_headers
    )
    assert [(event["target_id"], event["actor_id"]) for event in audit.json()] == [(user_id, None)]

    await register(email="quick@example.com")
    quick = await invoke(["users", "delete", "quick@example.com", "--yes"])
    assert quick.exit_code == 0, quick.output
    assert "[y/N]" not in quick.output

    last_admin = await invoke(["users", "delete", ADMIN_EMAIL, "--yes"])
    assert last_admin.exit_code == 1
    assert "last active admin" in last_admin.stderr
    assert (await post_login(client, ADMIN_EMAIL, ADMIN_PASSWORD)).status_code == 200
    unknown = await invoke(["users", "delete", "nobody@example.com", "-y"])
    assert unknown.exit_code == 1
    assert "No user with email nobody@example.com." in unknown.stderr
