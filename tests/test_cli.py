import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backend.cli import app
from backend.config import get_settings

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
    for command in ("serve", "migrate", "create-admin"):
        assert command in result.output
    serve_help = runner.invoke(app, ["serve", "--help"])
    assert "--workers" in serve_help.output
    assert "docs at" in serve_help.output


def test_migrate_then_create_admin_once(sqlite_env: Path) -> None:
    migrated = runner.invoke(app, ["migrate"])
    assert migrated.exit_code == 0, migrated.output
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
    assert "password: must be at least 8 characters long" in result.output


def test_serve_refuses_several_workers_on_sqlite(sqlite_env: Path) -> None:
    result = runner.invoke(app, ["serve", "--workers", "2"])
    assert result.exit_code == 2
    assert "several workers need PostgreSQL" in result.output
