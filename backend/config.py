"""Settings from the environment and `.env`, validated once at start-up."""

import os
import secrets
import sys
from functools import lru_cache
from typing import Annotated, Literal

from limits import parse
from pydantic import (
    Field,
    IPvAnyNetwork,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backend.models import Email, Password

MIN_SECRET_KEY_BYTES = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=True
    )

    PROJECT_NAME: str = "Users API"
    STAGE: Literal["local", "test", "staging", "production"] = "local"
    SECRET_KEY: str = ""
    DATABASE_URL: str = "sqlite:///./data/app.db"
    API_V1_PREFIX: str = "/api/v1"
    ACCESS_TOKEN_EXPIRE_MINUTES: int = Field(default=30, ge=1)
    REFRESH_TOKEN_EXPIRE_DAYS: int = Field(default=14, ge=1)
    # A session ends this long after its login however it is used, or after this long
    # without a refresh (see backend/sessions.py).
    SESSION_MAX_DAYS: int = Field(default=30, ge=1)
    SESSION_IDLE_DAYS: int = Field(default=14, ge=1)
    # NoDecode: a plain comma list, not the JSON pydantic-settings expects for lists.
    CORS_ORIGINS: Annotated[list[str], NoDecode] = []

    FIRST_ADMIN_EMAIL: Email | None = None
    FIRST_ADMIN_PASSWORD: Password | None = None
    REGISTRATION_ENABLED: bool = True
    RATE_LIMIT_ENABLED: bool = True
    # limits notation, "N/second|minute|hour|day": see the README for why these values.
    RATE_LIMIT_LOGIN: str = "10/minute"
    RATE_LIMIT_LOGIN_PER_IP: str = "60/minute"
    RATE_LIMIT_REGISTER: str = "20/hour"
    RATE_LIMIT_REFRESH: str = "60/minute"
    RATE_LIMIT_LOGIN_PER_ACCOUNT: str = "100/hour"  # failed logins, from every address
    REDIS_URL: str | None = None
    # Proxies whose X-Forwarded-For is believed (addresses or CIDR networks).
    TRUSTED_PROXIES: Annotated[list[IPvAnyNetwork], NoDecode] = []
    MAX_BODY_BYTES: int = Field(default=1024 * 1024, ge=1024)
    REFRESH_REUSE_GRACE_SECONDS: int = Field(default=10, ge=0)
    AUTO_MIGRATE: bool | None = None
    # `backend serve`: on SIGTERM, how long in-flight requests may take to finish.
    SHUTDOWN_GRACE_SECONDS: int = Field(default=20, ge=1)

    BCRYPT_ROUNDS: int = Field(default=12, ge=4, le=31)
    HASH_CONCURRENCY: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 1) // 2), ge=1)
    HASH_QUEUE_LIMIT: int = Field(default=32, ge=0)

    DB_POOL_SIZE: int = Field(default=10, ge=1)
    DB_MAX_OVERFLOW: int = Field(default=10, ge=0)
    DB_POOL_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0)
    DB_POOL_RECYCLE_SECONDS: int = Field(default=1800, ge=-1)
    DB_POOL_PRE_PING: bool = True
    # Bounds on a PostgreSQL outage: a request gets 503 instead of waiting for the OS.
    DB_CONNECT_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0)
    DB_STATEMENT_TIMEOUT_SECONDS: float = Field(default=5.0, ge=0)  # 0: no limit
    DB_ECHO: bool = False

    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # json (one object per line, for collectors) or text; default: text in local only.
    LOG_FORMAT: Literal["json", "text"] | None = None
    METRICS_ENABLED: bool = False

    @field_validator("CORS_ORIGINS", mode="before")
    @classmethod
    def split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("TRUSTED_PROXIES", mode="before")
    @classmethod
    def split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [network.strip() for network in value.split(",") if network.strip()]
        return value

    @field_validator(
        "RATE_LIMIT_LOGIN",
        "RATE_LIMIT_LOGIN_PER_IP",
        "RATE_LIMIT_LOGIN_PER_ACCOUNT",
        "RATE_LIMIT_REGISTER",
        "RATE_LIMIT_REFRESH",
    )
    @classmethod
    def check_rate_limit(cls, value: str) -> str:
        try:
            parse(value)
        except ValueError as error:
            raise ValueError(f"{value!r} is not a rate like '10/minute'") from error
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def check_redis_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://")):
            raise ValueError("must start with redis:// or rediss://")
        return value or None

    @field_validator("API_V1_PREFIX")
    @classmethod
    def normalise_prefix(cls, value: str) -> str:
        value = "/" + value.strip("/")
        return "" if value == "/" else value

    @field_validator("DATABASE_URL")
    @classmethod
    def check_database_url(cls, value: str) -> str:
        dialect = value.split("://", 1)[0].split("+", 1)[0]
        if dialect not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError(
                "must start with sqlite:/// or postgresql:// (the app picks the async driver)"
            )
        return value

    @model_validator(mode="after")
    def check_secret_key_and_defaults(self) -> "Settings":
        if self.STAGE != "local" and len(self.SECRET_KEY.encode()) < MIN_SECRET_KEY_BYTES:
            raise ValueError(
                f"SECRET_KEY must be set to at least {MIN_SECRET_KEY_BYTES} bytes when "
                f"STAGE={self.STAGE} (generate one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        if not self.SECRET_KEY:
            self.SECRET_KEY = secrets.token_urlsafe(48)
            self._secret_key_generated = True
        if self.AUTO_MIGRATE is None:
            self.AUTO_MIGRATE = self.is_sqlite or self.STAGE == "local"
        return self

    _secret_key_generated: bool = PrivateAttr(default=False)

    @property
    def secret_key_generated(self) -> bool:
        """Whether SECRET_KEY is a random one made for this process (STAGE=local only)."""
        return self._secret_key_generated

    @property
    def log_format(self) -> str:
        return self.LOG_FORMAT or ("text" if self.STAGE == "local" else "json")

    @property
    def is_sqlite(self) -> bool:
        return self.DATABASE_URL.startswith("sqlite:")


def describe_validation_error(error: ValidationError) -> str:
    """One line per bad setting, naming the variable, instead of a traceback."""
    lines = []
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["loc"]:
            message = ".".join(str(part) for part in item["loc"]) + ": " + message
        lines.append(f"Configuration error: {message}")
    return "\n".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Build settings, or exit with a one-line message per invalid variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        sys.exit(describe_validation_error(error))


@lru_cache
def get_settings() -> Settings:
    return load_settings()
