import base64
import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from backend import config
from backend.config import Settings, load_settings, secret_key_weakness
from backend.db.engine import async_url
from tests.helpers import REPO_ROOT, TEST_SECRET_KEY

# What uvicorn does with `--factory backend.main:served_app`.
SERVE_APP = "from backend.main import served_app; served_app()"


def settings_from(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_production_without_secret_key_exits_with_one_line() -> None:
    env = {key: value for key, value in os.environ.items() if key != "SECRET_KEY"}
    env.update(STAGE="production", DATABASE_URL="postgresql://u:p@127.0.0.1/db")
    result = subprocess.run(
        [sys.executable, "-c", SERVE_APP],
        cwd=REPO_ROOT / "tests",  # no .env there
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Configuration error: SECRET_KEY must be set")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("stage", ["local", "test", "staging", "production"])
@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("secret", "is 6 bytes; it must be at least 32"),
        ("é" * 15, "is 30 bytes"),
        ("a" * 32, "0 bits of entropy"),
        ("ab" * 40, "80 bits of entropy"),
        ("changethis" * 4, "the placeholder 'changethis'"),
        ("Th1s-is-my-SECRET-signing-key-for-prod!", "the placeholder 'secret'"),
        ("pa$$word-CHANGEME-" + "x7Qk9" * 4, "the placeholder 'changeme'"),
        ("abcdefghijklmnopqrstuvwxyzABCDEF", "runs of repeated or consecutive"),
        ("0123456789:;<=>?@ABCDEFGHIJKLMNO", "runs of repeated or consecutive"),
        ("aabbccddeeffgghhiijjkkllmmnnooppqqrrssttuuvvwwxxyyzz", "runs of repeated"),
        (hashlib.sha256(b"secret").hexdigest(), "the sha256 hex digest of a common"),
        (hashlib.sha256(b"secret\n").hexdigest().upper(), "the sha256 hex digest"),
        (hashlib.md5(b"changeme").hexdigest(), "the md5 hex digest"),  # noqa: S324
        (hashlib.sha1(b"sunshine").hexdigest(), "the sha1 hex digest"),  # noqa: S324
        (hashlib.sha512(b"iloveyou").hexdigest(), "the sha512 hex digest"),
        (hashlib.sha256(b"Admin-Pass-1").hexdigest(), "the sha256 hex digest"),
        ("deadbeef" * 4, "bits of entropy"),
        ("correct horse battery staple plus four more", "is words (7), about 90 bits"),
        ("CorrectHorseBatteryStapleIsNotRandomEnough", "is words (8), about 103 bits"),
    ],
)
def test_a_weak_secret_key_is_refused_in_every_stage(stage: str, key: str, reason: str) -> None:
    with pytest.raises(SystemExit) as raised:
        load_settings(_env_file=None, STAGE=stage, SECRET_KEY=key)
    message = str(raised.value)
    assert message.startswith("Configuration error: SECRET_KEY is too weak: it ")
    assert reason in message
    assert "secrets.token_urlsafe(48)" in message  # how to make a good one
    assert len(message.splitlines()) == 1
    assert key not in message.split(". Generate")[0]  # a key, however weak, is never echoed


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: secrets.token_urlsafe(32),
        lambda: secrets.token_urlsafe(48),
        lambda: secrets.token_hex(16),
        lambda: secrets.token_hex(32),
        lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
    ],
    ids=[
        "token_urlsafe(32)",
        "token_urlsafe(48)",
        "token_hex(16)",
        "token_hex(32)",
        "openssl rand -base64 32",
    ],
)
def test_random_keys_of_128_bits_or_more_pass(
    make_key: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each hex key of a digest's length is hashed against 111,711 candidates (0.2 s):
    # that part runs below for a few keys, the estimates here for a thousand.
    monkeypatch.setattr(config, "HEX_DIGESTS", {})
    for _ in range(1000):
        key = make_key()
        assert secret_key_weakness(key) is None, key


@pytest.mark.parametrize("make_key", [secrets.token_hex, lambda: secrets.token_hex(16)])
def test_random_hex_keys_are_no_common_digest(make_key: Callable[[], str]) -> None:
    for _ in range(3):
        key = make_key()
        assert secret_key_weakness(key) is None, key


def test_keys_the_project_ships_pass() -> None:
    assert secret_key_weakness(TEST_SECRET_KEY) is None


def test_local_generates_a_key_and_the_served_app_warns() -> None:
    first = settings_from(STAGE="local")
    second = settings_from(STAGE="local")
    assert len(first.SECRET_KEY) >= 32
    assert first.SECRET_KEY != second.SECRET_KEY
    assert first.secret_key_generated
    assert not settings_from(STAGE="local", SECRET_KEY=TEST_SECRET_KEY).secret_key_generated
    env = {key: value for key, value in os.environ.items() if key != "SECRET_KEY"}
    result = subprocess.run(
        [sys.executable, "-c", SERVE_APP],
        cwd=REPO_ROOT / "tests",  # no .env there
        env={**env, "STAGE": "local", "DATABASE_URL": "sqlite:///:memory:"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "SECRET_KEY is not set: using a random key for this process" in result.stderr


def test_the_served_app_takes_what_start_up_made_out_of_garbage_collection() -> None:
    env = {key: value for key, value in os.environ.items() if key != "SECRET_KEY"}
    result = subprocess.run(
        [sys.executable, "-c", f"import gc; {SERVE_APP}; print(gc.get_freeze_count())"],
        cwd=REPO_ROOT / "tests",
        env={**env, "STAGE": "local", "DATABASE_URL": "sqlite:///:memory:"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) > 10_000  # modules, routes, schemas


def test_invalid_values_name_the_variable() -> None:
    with pytest.raises(SystemExit) as raised:
        load_settings(_env_file=None, DATABASE_URL="mysql://x", BCRYPT_ROUNDS=2)
    message = str(raised.value)
    assert "Configuration error: DATABASE_URL: must start with sqlite:///" in message
    assert "Configuration error: BCRYPT_ROUNDS:" in message


def test_the_api_key_rate_limit_is_checked_like_the_others() -> None:
    with pytest.raises(SystemExit) as raised:
        load_settings(_env_file=None, STAGE="local", RATE_LIMIT_API_KEY="600 a minute")
    assert "Configuration error: RATE_LIMIT_API_KEY: '600 a minute' is not a rate like" in str(
        raised.value
    )
    assert load_settings(_env_file=None, STAGE="local").RATE_LIMIT_API_KEY == "600/minute"


def test_first_admin_email_follows_the_international_setting() -> None:
    with pytest.raises(SystemExit, match="FIRST_ADMIN_EMAIL: is not a valid email address"):
        load_settings(_env_file=None, FIRST_ADMIN_EMAIL="jürgen@example.com")
    settings = settings_from(
        FIRST_ADMIN_EMAIL="Jürgen@Example.com", ALLOW_INTERNATIONAL_EMAILS=True
    )
    assert settings.FIRST_ADMIN_EMAIL == "jürgen@example.com"


def test_first_admin_password_must_meet_the_policy() -> None:
    with pytest.raises(SystemExit, match="FIRST_ADMIN_PASSWORD: is too common"):
        load_settings(_env_file=None, FIRST_ADMIN_PASSWORD="qwertyuiop123")
    with pytest.raises(SystemExit, match="FIRST_ADMIN_PASSWORD: must be at least 16 char"):
        load_settings(
            _env_file=None, PASSWORD_MIN_LENGTH=16, FIRST_ADMIN_PASSWORD="Admin-Password1"
        )
    with pytest.raises(SystemExit, match="PASSWORD_MIN_LENGTH: Input should be greater"):
        load_settings(_env_file=None, PASSWORD_MIN_LENGTH=6)


def test_environment_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example/ ,")
    monkeypatch.setenv("API_V1_PREFIX", "api/v2/")
    monkeypatch.setenv("SOMETHING_UNKNOWN", "ignored")
    settings = settings_from()
    assert settings.CORS_ORIGINS == ["https://a.example", "https://b.example"]
    assert settings.API_V1_PREFIX == "/api/v2"
    assert settings.DATABASE_URL == "sqlite:///./data/app.db"
    assert settings.AUTO_MIGRATE is True
    assert settings.HASH_CONCURRENCY >= 1
    assert settings.BCRYPT_ROUNDS == 12


POSTGRES_URL = "postgresql://u:p@127.0.0.1/db"


@pytest.mark.parametrize(
    ("limits", "pool", "connect", "statement"),
    [
        ({}, 3.0, 3.0, 3.0),
        ({"DB_REQUEST_BUDGET_SECONDS": 8}, 8.0, 8.0, 8.0),
        # The old defaults, set explicitly: capped, as they could never fire.
        (
            {
                "DB_POOL_TIMEOUT_SECONDS": 5,
                "DB_CONNECT_TIMEOUT_SECONDS": 1,
                "DB_STATEMENT_TIMEOUT_SECONDS": 0,
            },
            3.0,
            1.0,
            0,
        ),
    ],
)
def test_database_limits_fit_in_the_request_budget(
    limits: dict[str, float], pool: float, connect: float, statement: float
) -> None:
    settings = settings_from(DATABASE_URL=POSTGRES_URL, **limits)
    assert settings.request_database_budget_seconds == settings.DB_REQUEST_BUDGET_SECONDS
    assert settings.pool_timeout_seconds == pool
    assert settings.connect_timeout_seconds == connect
    assert settings.statement_timeout_seconds == statement


def test_sqlite_has_no_request_budget() -> None:
    assert settings_from(DATABASE_URL="sqlite:///x.db").request_database_budget_seconds is None


def test_auto_migrate_defaults_off_for_postgresql_outside_local() -> None:
    settings = settings_from(
        STAGE="production", SECRET_KEY=TEST_SECRET_KEY, DATABASE_URL="postgresql://u:p@h/db"
    )
    assert settings.AUTO_MIGRATE is False


def test_production_refuses_test_strength_hashes() -> None:
    production = {"STAGE": "production", "SECRET_KEY": TEST_SECRET_KEY, "BCRYPT_ROUNDS": "10"}
    message = "BCRYPT_ROUNDS must be at least 12 when STAGE=production"
    with pytest.raises(ValidationError, match=message):
        settings_from(**production, DATABASE_URL="postgresql://u:p@h/db")
    # Elsewhere it is what tests use.
    settings_from(**{**production, "STAGE": "staging"}, DATABASE_URL="sqlite:///x.db")


@pytest.mark.parametrize("stage", ["local", "test", "staging", "production"])
@pytest.mark.parametrize(
    ("email", "password", "message"),
    [
        ("admin@example.com", "Admin-Pass-1", "an example from this project's documentation"),
        ("admin@example.com", "Change-Me-Now-1", "an example from this project's documentation"),
        ("zebedee.quill@example.com", "ZebedeeQuill2024", "must not be made of the email"),
    ],
)
def test_the_first_admin_password_is_not_an_example_nor_the_email(
    stage: str, email: str, password: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=f"FIRST_ADMIN_PASSWORD: .*{message}"):
        settings_from(
            STAGE=stage,
            SECRET_KEY=TEST_SECRET_KEY,
            DATABASE_URL=POSTGRES,
            FIRST_ADMIN_EMAIL=email,
            FIRST_ADMIN_PASSWORD=password,
        )


@pytest.mark.parametrize("token", [None, ""])
def test_production_refuses_metrics_without_a_token(token: str | None) -> None:
    metrics = {"METRICS_ENABLED": "true"} | ({} if token is None else {"METRICS_TOKEN": token})
    production = {"STAGE": "production", "SECRET_KEY": TEST_SECRET_KEY, **metrics}
    message = "METRICS_ENABLED=true needs METRICS_TOKEN when STAGE=production"
    with pytest.raises(ValidationError, match=message):
        settings_from(**production, DATABASE_URL="postgresql://u:p@h/db")
    # Elsewhere metrics may be open: a local Prometheus, the tests.
    settings_from(**{**production, "STAGE": "staging"}, DATABASE_URL="sqlite:///x.db")


def test_production_serves_metrics_with_a_token() -> None:
    token = secrets.token_urlsafe(32)
    settings = settings_from(
        STAGE="production",
        SECRET_KEY=TEST_SECRET_KEY,
        DATABASE_URL="postgresql://u:p@h/db",
        METRICS_ENABLED="true",
        METRICS_TOKEN=token,
    )
    assert settings.METRICS_TOKEN is not None
    assert settings.METRICS_TOKEN.get_secret_value() == token
    assert token not in repr(settings)


@pytest.mark.parametrize("stage", ["test", "production"])
@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("prometheus", "is 10 bytes; it must be at least 32"),
        ("metrics-token-changeme-" + "x7Qk9" * 3, "the placeholder 'changeme'"),
        ("m" * 40, "0 bits of entropy"),
    ],
)
def test_a_weak_metrics_token_is_refused_in_one_line(stage: str, token: str, reason: str) -> None:
    with pytest.raises(SystemExit) as raised:
        load_settings(
            _env_file=None,
            STAGE=stage,
            SECRET_KEY=TEST_SECRET_KEY,
            DATABASE_URL=POSTGRES,
            METRICS_ENABLED=True,
            METRICS_TOKEN=token,
        )
    message = str(raised.value.code)
    assert message.startswith("Configuration error: METRICS_TOKEN is too weak: it ")
    assert reason in message
    assert len(message.splitlines()) == 1
    assert token not in message


def test_an_empty_metrics_token_is_unset() -> None:
    assert settings_from(METRICS_TOKEN="").METRICS_TOKEN is None


def test_env_file_is_read(tmp_path: os.PathLike[str]) -> None:
    env_file = os.path.join(tmp_path, ".env")
    with open(env_file, "w") as handle:
        handle.write("PROJECT_NAME=From File\nBCRYPT_ROUNDS=5\n")
    settings = Settings(_env_file=env_file)
    assert settings.PROJECT_NAME == "From File"
    assert settings.BCRYPT_ROUNDS == 5


@pytest.mark.parametrize(
    ("plain", "expected"),
    [
        ("sqlite:///./data/app.db", "sqlite+aiosqlite:///./data/app.db"),
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:***@h:5432/db"),
        ("postgres://u:p@h/db", "postgresql+asyncpg://u:***@h/db"),
        ("postgresql://u:p@h/db?sslmode=require", "postgresql+asyncpg://u:***@h/db?ssl=require"),
    ],
)
def test_plain_urls_get_async_drivers(plain: str, expected: str) -> None:
    assert str(async_url(plain)) == expected


def test_importing_the_app_module_reads_no_settings() -> None:
    # A configuration that the factory refuses: the import alone must not notice it.
    env = {key: value for key, value in os.environ.items() if key != "SECRET_KEY"}
    env.update(STAGE="production", DATABASE_URL="postgresql://u:p@127.0.0.1/db")
    result = subprocess.run(
        [sys.executable, "-c", "import backend.main"],
        cwd=REPO_ROOT / "tests",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


# --- refuse, don't warn ---------------------------------------------------------------

PRODUCTION = {"STAGE": "production", "SECRET_KEY": TEST_SECRET_KEY}
POSTGRES = "postgresql://u:p@h/db"


def test_production_refuses_sqlite_unless_allowed() -> None:
    message = "DATABASE_URL is SQLite with STAGE=production: use PostgreSQL, or set ALLOW_SQLITE"
    with pytest.raises(ValidationError, match=message):
        settings_from(**PRODUCTION, DATABASE_URL="sqlite:///x.db")
    settings_from(**PRODUCTION, DATABASE_URL="sqlite:///x.db", ALLOW_SQLITE_IN_PRODUCTION="true")
    settings_from(**{**PRODUCTION, "STAGE": "staging"}, DATABASE_URL="sqlite:///x.db")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"RATE_LIMIT_STORAGE": "redis"}, "RATE_LIMIT_STORAGE=redis needs REDIS_URL"),
        (
            {"RATE_LIMIT_STORAGE": "memory", "REDIS_URL": "redis://127.0.0.1:6379/0"},
            "RATE_LIMIT_STORAGE=memory and REDIS_URL are both set",
        ),
    ],
)
def test_rate_limit_storage_contradictions_are_refused(
    values: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        settings_from(DATABASE_URL=POSTGRES, **values)


@pytest.mark.parametrize(
    ("stage", "enabled"),
    [("local", True), ("test", True), ("staging", False), ("production", False)],
)
def test_docs_are_off_by_default_outside_local_and_test(stage: str, enabled: bool) -> None:
    settings = settings_from(STAGE=stage, SECRET_KEY=TEST_SECRET_KEY, DATABASE_URL=POSTGRES)
    assert settings.DOCS_ENABLED is enabled


def test_several_workers_need_a_secret_key_and_in_production_shared_limits() -> None:
    local = settings_from(STAGE="local", DATABASE_URL=POSTGRES)
    assert local.workers_problem(1) is None
    assert (local.workers_problem(2) or "").startswith("SECRET_KEY: several workers need one")
    sqlite = settings_from(STAGE="local", SECRET_KEY=TEST_SECRET_KEY, DATABASE_URL="sqlite://")
    assert (sqlite.workers_problem(2) or "").startswith("--workers: several workers need Postgre")
    production = settings_from(**PRODUCTION, DATABASE_URL=POSTGRES)
    assert (production.workers_problem(2) or "").startswith("REDIS_URL: several workers")
    spelled_out = settings_from(**PRODUCTION, DATABASE_URL=POSTGRES, RATE_LIMIT_STORAGE="memory")
    assert spelled_out.workers_problem(2) is None
    shared = settings_from(**PRODUCTION, DATABASE_URL=POSTGRES, REDIS_URL="redis://h:6379/0")
    assert shared.workers_problem(2) is None
    for problem in (local.workers_problem(2), production.workers_problem(2)):
        assert problem is not None
        assert "\n" not in problem
