"""The login-side families: sessions, refresh tokens, mailed links and API keys, the
request and response bodies of the auth routes, and the verified claims of a JWT."""

import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

import pydantic
from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict
from sqlalchemy import String
from sqlmodel import Field, SQLModel

from backend.clock import utcnow
from backend.http.parsing import INT32_MAX
from backend.models import (
    EXAMPLE_EMAIL,
    EXAMPLE_PASSWORD,
    IP_ADDRESS_MAX_CHARS,
    NAME_MAX_CHARS,
    USER_AGENT_MAX_CHARS,
    Email,
    LoginEmail,
    Name,
    Password,
    UserPublic,
    UTCDateTime,
    string_enum,
)
from backend.rules import EMAIL_MAX_CHARS


# --- what the auth routes take and answer ---------------------------------------------
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
    email: LoginEmail
    password: str = Field(min_length=1, max_length=1024)

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={"examples": [{"email": EXAMPLE_EMAIL, "password": EXAMPLE_PASSWORD}]}
    )


class PasswordChange(SQLModel):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: Password

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={
            "examples": [{"current_password": EXAMPLE_PASSWORD, "new_password": "Battery-Staple-7"}]
        }
    )


class RefreshRequest(SQLModel):
    refresh_token: str = Field(min_length=1, max_length=4096)


class LoginResponse(SQLModel):
    access_token: str
    refresh_token: str | None = Field(
        description="null with transport=cookie: the token is in an HttpOnly cookie instead"
    )
    token_type: str = "bearer"  # noqa: S105  (the OAuth2 token type, not a secret)
    expires_in: int = Field(description="Seconds until the access token expires")
    user: UserPublic


# --- login sessions and their refresh tokens ------------------------------------------
class SessionEndReason(StrEnum):
    LOGOUT = "logout"
    REUSE = "reuse"  # a rotated refresh token came back: it leaked
    LOGOUT_ALL = "logout_all"
    ADMIN = "admin"
    PASSWORD_CHANGE = "password_change"  # noqa: S105  (a reason, not a secret)
    ROLE_CHANGE = "role_change"
    DEACTIVATED = "deactivated"
    EXPIRED = "expired"  # SESSION_MAX_DAYS after its login
    IDLE = "idle"  # SESSION_IDLE_DAYS without a refresh


SESSION_ID_BYTES = 16
SESSION_ID_PATTERN = f"^[0-9a-f]{{{2 * SESSION_ID_BYTES}}}$"


def new_session_id() -> str:
    return secrets.token_hex(SESSION_ID_BYTES)


class UserSession(SQLModel, table=True):
    """One login, from the password check until it ends: its refresh tokens rotate
    within it, and every access token names it (`sid`). See backend/auth/sessions.py."""

    __tablename__ = "sessions"

    # Random, not a sequence: it is shown to the user and sent back in paths.
    id: str = Field(
        default_factory=new_session_id, primary_key=True, sa_type=String(2 * SESSION_ID_BYTES)
    )
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_used_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)  # absolute: rotation never moves it
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_reason: SessionEndReason | None = Field(
        default=None,
        sa_type=string_enum(SessionEndReason, name="session_end_reason", length=16),
    )
    user_agent: str | None = Field(default=None, sa_type=String(USER_AGENT_MAX_CHARS))
    ip_address: str | None = Field(default=None, sa_type=String(IP_ADDRESS_MAX_CHARS))
    name: str | None = Field(default=None, sa_type=String(NAME_MAX_CHARS))

    def end_reason(self, now: datetime, idle_days: int) -> SessionEndReason | None:
        """Why the session no longer admits its tokens, or None while it is live."""
        if self.revoked_reason is not None:
            return self.revoked_reason
        if self.expires_at <= now:
            return SessionEndReason.EXPIRED
        if self.last_used_at + timedelta(days=idle_days) <= now:
            return SessionEndReason.IDLE
        return None


class SessionPublic(SQLModel):
    id: str
    name: str | None
    created_at: datetime
    last_used_at: datetime = Field(description="The login, or the latest refresh")
    expires_at: datetime = Field(description="When it ends at the latest, however used")
    user_agent: str | None = Field(description="The client's User-Agent at login")
    ip_address: str | None = Field(description="The client's address at login")
    current: bool = Field(description="Whether this is the session of the calling token")


@dataclass(frozen=True)
class ClientInfo:
    """Who logged in, as the session list shows it: the User-Agent and the address."""

    user_agent: str | None
    ip_address: str | None

    @classmethod
    def bounded(cls, user_agent: str | None, ip_address: str | None) -> "ClientInfo":
        return cls(
            user_agent=_printable(user_agent, USER_AGENT_MAX_CHARS),
            ip_address=_printable(ip_address, IP_ADDRESS_MAX_CHARS),
        )


def _printable(value: str | None, max_chars: int) -> str | None:
    """At most max_chars characters (the column's limit, counted as PostgreSQL does),
    without control characters, which PostgreSQL refuses (NUL) or a terminal obeys."""
    if value is None:
        return None
    kept = "".join(char for char in value if unicodedata.category(char) not in {"Cc", "Cs"})
    return kept.strip()[:max_chars] or None


class RefreshToken(SQLModel, table=True):
    """One issued refresh token. Only a hash of its jti is stored, never the token."""

    __tablename__ = "refresh_tokens"
    # Ids never reused (see User): a request still holding a deleted record's id must
    # not retire another token that took it.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    jti_hash: str = Field(sa_type=String(64), unique=True, index=True)
    # The session only, not the user: inserting a token then takes no lock on the
    # user's row (the lock order in backend/auth/sessions.py).
    session_id: str = Field(
        sa_type=String(2 * SESSION_ID_BYTES),
        foreign_key="sessions.id",
        ondelete="CASCADE",
        index=True,
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


ID_TEXT = re.compile(r"[1-9][0-9]{0,9}")


def _id_text(value: object) -> int:
    if not isinstance(value, str) or not ID_TEXT.fullmatch(value) or int(value) > INT32_MAX:
        raise ValueError("must be a user id as text")
    return int(value)


# A user id as a token's subject: RFC 7519's string, in the one spelling our tokens use
# (no sign, space or leading zero), within the ids a table can hold.
TokenSubject = Annotated[int, BeforeValidator(_id_text)]
TOKEN_TEXT_MAX_CHARS = 64
TokenType = Literal["access", "refresh"]


class TokenClaims(BaseModel):
    """The verified payload of one of our JWTs, read strictly: a correctly signed token
    whose claims are not exactly what we issue is refused like a forged one."""

    model_config = ConfigDict(frozen=True, strict=True)

    sub: TokenSubject
    type: TokenType
    jti: str = pydantic.Field(max_length=TOKEN_TEXT_MAX_CHARS)
    ver: int = pydantic.Field(ge=0, le=INT32_MAX)
    # The account key: see User.account_key.
    acc: str = pydantic.Field(max_length=TOKEN_TEXT_MAX_CHARS)
    exp: int = pydantic.Field(ge=0)
    iat: int = pydantic.Field(ge=0)
    # The session. Refresh tokens from before sessions named their family `fam`; the
    # migration made each family a session of the same id, so they still work.
    sid: str | None = pydantic.Field(
        default=None,
        max_length=TOKEN_TEXT_MAX_CHARS,
        validation_alias=AliasChoices("sid", "fam"),
    )


# --- mailed links ---------------------------------------------------------------------
class LinkPurpose(StrEnum):
    INVITE = "invite"
    RESET = "reset"
    VERIFY = "verify"


LINK_SECRET_BYTES = 32
# "<row id>.<secret>": the id finds the row, the secret is compared with its hash in
# constant time (see backend/auth/links.py). 43 characters: 32 bytes in unpadded base64url.
LINK_TOKEN_PATTERN = r"^[0-9]{1,10}\.[A-Za-z0-9_-]{43}$"  # noqa: S105  (a shape)
MailedToken = Annotated[
    str,
    pydantic.Field(
        pattern=LINK_TOKEN_PATTERN,
        description="The token from the link in the mail",
        examples=["42.q3Wk0wzJbR7mNf1xLpVtYc8HsAe5uGd2iOj6nKlZmXo"],
    ),
]


class LinkToken(SQLModel, table=True):
    """One link mailed to a user: an invitation, a password reset or an address check.
    Only a SHA-256 of its secret is stored. Used once (used_at), until expires_at."""

    __tablename__ = "link_tokens"
    __table_args__ = {"sqlite_autoincrement": True}  # ids never reused, as every table's

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    purpose: LinkPurpose = Field(sa_type=string_enum(LinkPurpose, name="link_purpose", length=16))
    token_hash: str = Field(sa_type=String(64))
    # The address it was mailed to: refused once the account's address differs.
    email: str = Field(sa_type=String(EMAIL_MAX_CHARS))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class LinkUse(SQLModel):
    token: MailedToken


class PasswordSet(SQLModel):
    """An invitation accepted or a forgotten password replaced, with the mailed token."""

    token: MailedToken
    new_password: Password

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={
            "examples": [
                {
                    "token": "42.q3Wk0wzJbR7mNf1xLpVtYc8HsAe5uGd2iOj6nKlZmXo",
                    "new_password": "Battery-Staple-7",
                }
            ]
        }
    )


class MailRequest(SQLModel):
    """An address to mail a link to, if it belongs to an account that may have one."""

    email: LoginEmail

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={"examples": [{"email": EXAMPLE_EMAIL}]}
    )


class Accepted(SQLModel):
    detail: str


# --- API keys -------------------------------------------------------------------------
API_KEY_PREFIX = "uak_"
API_KEY_SECRET_BYTES = 32
# secrets.token_urlsafe(32): 43 characters of base64url, no padding.
API_KEY_PATTERN = rf"^{API_KEY_PREFIX}[A-Za-z0-9_-]{{43}}$"
# What listings show of a key, enough to tell keys apart and nowhere near enough to guess.
API_KEY_SHOWN_CHARS = len(API_KEY_PREFIX) + 8
API_KEY_MAX_DAYS = 366
API_KEY_DEFAULT_DAYS = 30  # as GitHub suggests for fine-grained tokens


def new_api_key_secret() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_SECRET_BYTES)


class ApiKeyScope(StrEnum):
    READ = "read"  # GET and HEAD only
    WRITE = "write"  # whatever the owner may do


class ApiKeyEndReason(StrEnum):
    REVOKED = "revoked"  # by its owner
    ADMIN = "admin"  # by an admin, or on the server (`backend tokens revoke`)
    PASSWORD_CHANGE = "password_change"  # noqa: S105  (a reason, not a secret)
    ROLE_CHANGE = "role_change"
    DEACTIVATED = "deactivated"


class ApiKeyBase(SQLModel):
    name: Name = Field(sa_type=String(NAME_MAX_CHARS))
    scope: ApiKeyScope = Field(sa_type=string_enum(ApiKeyScope, name="api_key_scope", length=8))


def _json_number(value: object) -> object:
    # A JSON number, 30 or 30.0 (both are JSON Schema integers), never "30" or true.
    if isinstance(value, str | bool):
        raise ValueError("must be a number")
    return value


class ApiKeyCreate(ApiKeyBase):
    expires_in_days: Annotated[int, BeforeValidator(_json_number)] = Field(
        default=API_KEY_DEFAULT_DAYS,
        ge=1,
        le=API_KEY_MAX_DAYS,
        description=f"Days until the key stops working, 1 to {API_KEY_MAX_DAYS}",
    )

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={
            "examples": [{"name": "nightly report", "scope": "read", "expires_in_days": 90}]
        }
    )


class ApiKey(ApiKeyBase, table=True):
    """A personal access token for scripts. Only a SHA-256 of its secret is stored: the
    secret is shown once, when it is made. See backend/auth/api_keys.py."""

    __tablename__ = "api_keys"
    __table_args__ = {"sqlite_autoincrement": True}  # ids never reused, as every table's

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    prefix: str = Field(sa_type=String(API_KEY_SHOWN_CHARS))
    secret_hash: str = Field(sa_type=String(64), unique=True, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_reason: ApiKeyEndReason | None = Field(
        default=None,
        sa_type=string_enum(ApiKeyEndReason, name="api_key_end_reason", length=16),
    )


class ApiKeyPublic(ApiKeyBase):
    id: int
    prefix: str = Field(description="The key's first characters, to tell keys apart")
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None = Field(
        description="Its latest use, to the minute: updated at most once a minute"
    )


class ApiKeyCreated(ApiKeyPublic):
    secret: str = Field(
        description="The key itself, shown this once: send it as `Authorization: Bearer`"
    )
