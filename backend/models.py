"""SQLModel families: the table classes double as request and response schemas."""

import unicodedata
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, field_validator
from sqlalchemy import DateTime, Dialect, Enum, String, TypeDecorator
from sqlmodel import Field, SQLModel

# Set before any table is defined, so SQLite and PostgreSQL migrations name alike.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PASSWORD_MIN_CHARS = 8
PASSWORD_MAX_BYTES = 72  # bcrypt's limit: longer passwords are refused, never truncated
NAME_MAX_CHARS = 100
EMAIL_MAX_CHARS = 254


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where a timezone-aware one is required")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _reject_control_characters(value: str) -> str:
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError("must not contain control characters")
    return value


def _check_password_policy(value: str) -> str:
    if len(value) < PASSWORD_MIN_CHARS:
        raise ValueError(f"must be at least {PASSWORD_MIN_CHARS} characters long")
    if len(value.encode()) > PASSWORD_MAX_BYTES:
        raise ValueError(f"must be at most {PASSWORD_MAX_BYTES} bytes in UTF-8")
    if not any(char.isupper() for char in value):
        raise ValueError("must contain at least one uppercase letter")
    return _reject_control_characters(value)


def _normalise_name(value: str) -> str:
    value = _reject_control_characters(value.strip())
    if not value:
        raise ValueError("must not be empty")
    if len(value) > NAME_MAX_CHARS:
        raise ValueError(f"must be at most {NAME_MAX_CHARS} characters long")
    return value


Email = Annotated[EmailStr, AfterValidator(str.lower)]
Password = Annotated[str, AfterValidator(_check_password_policy)]
Name = Annotated[str, AfterValidator(_normalise_name)]


class UserRole(StrEnum):
    ADMIN = "admin"
    USER = "user"


class UserBase(SQLModel):
    email: Email = Field(sa_type=String(EMAIL_MAX_CHARS), unique=True, index=True)
    name: Name = Field(sa_type=String(NAME_MAX_CHARS))
    role: UserRole = Field(
        default=UserRole.USER,
        # A VARCHAR with a CHECK: adding a role later needs no ALTER TYPE.
        sa_type=Enum(
            UserRole,
            name="role",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda roles: [role.value for role in roles],
        ),
    )
    is_active: bool = True


class User(UserBase, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    hashed_password: str = Field(sa_type=String(255))
    # Part of every token: bumping it revokes all of the user's tokens at once.
    token_version: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


EXAMPLE_EMAIL = "ada@example.com"
EXAMPLE_PASSWORD = "Correct-Horse-9"  # noqa: S105  (documentation example)


class UserCreate(UserBase):
    password: Password

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={
            "examples": [
                {
                    "email": EXAMPLE_EMAIL,
                    "name": "Ada Lovelace",
                    "password": EXAMPLE_PASSWORD,
                    "role": "user",
                    "is_active": True,
                }
            ]
        }
    )


class UserUpdate(SQLModel):
    """Admin edit: only the fields sent are changed."""

    email: Email | None = None
    name: Name | None = None
    role: UserRole | None = None
    is_active: bool | None = None
    password: Password | None = None

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={"examples": [{"name": "Ada King", "role": "admin"}]}
    )

    @field_validator("*", mode="before")
    @classmethod
    def reject_null(cls, value: object) -> object:
        # Omit a field to leave it unchanged; null would mean "erase", which none allows.
        if value is None:
            raise ValueError("must not be null; omit the field to leave it unchanged")
        return value


class UserUpdateMe(SQLModel):
    name: Name

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={"examples": [{"name": "Ada King"}]}
    )


class UserPublic(UserBase):
    id: int
    created_at: datetime
    updated_at: datetime


class RegisterRequest(SQLModel):
    email: Email
    password: Password
    name: Name

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={
            "examples": [{"email": EXAMPLE_EMAIL, "password": EXAMPLE_PASSWORD, "name": "Ada"}]
        }
    )


class LoginRequest(SQLModel):
    # No policy check here: a login only compares, and must not reveal the rules.
    email: Email
    password: str = Field(min_length=1, max_length=1024)

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={"examples": [{"email": EXAMPLE_EMAIL, "password": EXAMPLE_PASSWORD}]}
    )


class LoginResponse(SQLModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"  # noqa: S105  (the OAuth2 token type, not a secret)
    expires_in: int = Field(description="Seconds until the access token expires")
    user: UserPublic


class TokenClaims(BaseModel):
    """The verified payload of one of our JWTs."""

    model_config = ConfigDict(frozen=True)

    sub: int
    type: str
    jti: str
    ver: int
    exp: int
    iat: int
    fam: str | None = None
