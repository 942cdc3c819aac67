"""SQLModel families: the table classes double as request and response schemas."""

import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import pydantic
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    GetJsonSchemaHandler,
    StrictBool,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue, SkipJsonSchema
from pydantic_core import CoreSchema
from sqlalchemy import JSON, DateTime, Dialect, Enum, Index, String, TypeDecorator
from sqlmodel import Field, SQLModel

from backend.passwords import (
    DEFAULT_PASSWORD_MIN_LENGTH,
    PASSWORD_MAX_BYTES,
    normalise_password,
    password_problem,
)

# Set before any table is defined, so SQLite and PostgreSQL migrations name alike.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NAME_MAX_CHARS = 100
EMAIL_MAX_CHARS = 254


class Clock:
    """The time every timestamp and lifetime is taken from. Tests move it forward
    (tests/conftest.py, `clock`) to cross a session's lifetime without sleeping."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


clock = Clock()


def utcnow() -> datetime:
    return clock.now()


ACCOUNT_KEY_BYTES = 16


def new_account_key() -> str:
    return secrets.token_hex(ACCOUNT_KEY_BYTES)


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
    # Cs: lone surrogates, which JSON can carry but UTF-8 (and so the database) cannot.
    if any(unicodedata.category(char) in {"Cc", "Cs"} for char in value):
        raise ValueError("must not contain control characters or lone surrogates")
    return value


@dataclass(frozen=True)
class AccountRules:
    """The configurable part of the account validators (PASSWORD_MIN_LENGTH,
    ALLOW_INTERNATIONAL_EMAILS).

    The validators are pydantic annotations that FastAPI runs with no access to the app
    or its settings, and they must stay there: the OpenAPI document, generated clients
    and fuzzers read the rules off the same types. So the settings are applied to the
    process, once, by the app factory and the CLI (`use_account_rules`), and read at
    validation and at schema generation time. One process serves one configuration.
    """

    password_min_length: int = DEFAULT_PASSWORD_MIN_LENGTH
    allow_international_emails: bool = False


_rules = AccountRules()


def use_account_rules(rules: AccountRules) -> None:
    global _rules
    _rules = rules


def _check_password_policy(value: str) -> str:
    value = normalise_password(value)
    problem = password_problem(value, min_length=_rules.password_min_length)
    if problem:
        raise ValueError(problem)
    return value


class _PasswordJsonSchema:
    """The hint clients and fuzzers read, made when the schema is: minLength follows
    PASSWORD_MIN_LENGTH. The list of common passwords cannot be said in JSON Schema."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        min_length = _rules.password_min_length
        return {
            "type": "string",
            "format": "password",
            "minLength": min_length,
            "maxLength": PASSWORD_MAX_BYTES,
            "description": f"At least {min_length} characters (any: spaces, any script, no "
            f"rules about kinds), at most {PASSWORD_MAX_BYTES} bytes in UTF-8, no control "
            "characters; not a common or breached password, nor a run of repeated or "
            "consecutive characters. Compared in Unicode NFKC form.",
        }


def _normalise_name(value: str) -> str:
    if len(value) > NAME_MAX_CHARS:
        raise ValueError(f"must be at most {NAME_MAX_CHARS} characters long")
    value = _reject_control_characters(value.strip())
    if not value:
        raise ValueError("must not be empty")
    return value


_CONTROL = r"\u0000-\u001F\u007F-\u009F"
_PRINTABLE = f"[^{_CONTROL}]"


def normalise_email(value: str, *, allow_international: bool) -> str:
    """The address as stored: email-validator's normal form, lower-cased.

    Emails are identifiers here, never mail targets: internal domains such as .internal,
    .lan or .test are accepted, which EmailStr refuses. Without `allow_international`
    the whole address must be ASCII once normalised, so that no letter can be a
    look-alike from another script (`r\\u043e\\u043et`, Cyrillic o's). The domain's fullwidth or
    upper-case letters are folded to ASCII by IDNA (UTS 46) and are accepted; a Unicode
    domain, or its xn-- form (shown decoded), is not. Look-alikes that remain, within
    ASCII (`rn`, `m`) or when international addresses are allowed, are refused by the
    unique confusable skeleton (see crud and backend/confusables.py).
    """
    if len(value) > EMAIL_MAX_CHARS:
        raise ValueError(f"must be at most {EMAIL_MAX_CHARS} characters long")
    try:
        address = validate_email(
            value,
            check_deliverability=False,
            globally_deliverable=False,
            test_environment=True,
            allow_smtputf8=allow_international,
        )
    except EmailNotValidError as error:
        raise ValueError(f"is not a valid email address: {error}") from error
    if not allow_international and address.domain != address.ascii_domain:
        raise ValueError(
            "is not a valid email address: internationalised domain names are not accepted "
            "here; use ASCII letters, digits and hyphens."
        )
    return address.normalized.lower()


def _normalise_email(value: str) -> str:
    return normalise_email(value, allow_international=_rules.allow_international_emails)


def _normalise_login_email(value: str) -> str:
    # Whatever the current rule, an account made under another can still log in.
    return normalise_email(value, allow_international=True)


class _EmailJsonSchema:
    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema: JsonSchemaValue = {
            "type": "string",
            "format": "email",
            "maxLength": EMAIL_MAX_CHARS,
            "description": "Stored lower-case. Refused when it looks like an existing "
            "account's (Unicode TR39 confusables).",
        }
        if not _rules.allow_international_emails:
            schema["description"] = "ASCII only. " + schema["description"]
        return schema


# The validators enforce the rules; the schema hints let clients and fuzzers know them.
Email = Annotated[str, AfterValidator(_normalise_email), _EmailJsonSchema()]
LoginEmail = Annotated[
    str,
    AfterValidator(_normalise_login_email),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": EMAIL_MAX_CHARS}),
]
# A valid Password is in NFKC form: what is hashed.
Password = Annotated[str, AfterValidator(_check_password_policy), _PasswordJsonSchema()]
Name = Annotated[
    str,
    AfterValidator(_normalise_name),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": NAME_MAX_CHARS,
            # Some non-space character, and no control characters anywhere.
            "pattern": f"^{_PRINTABLE}*[^\\s{_CONTROL}]{_PRINTABLE}*$",
            "description": f"At most {NAME_MAX_CHARS} characters, not all spaces; "
            "surrounding spaces are trimmed.",
        }
    ),
]


EXAMPLE_EMAIL = "ada@example.com"
EXAMPLE_PASSWORD = "Correct-Horse-9"  # noqa: S105  (documentation example)


class UserRole(StrEnum):
    ADMIN = "admin"
    USER = "user"


NO_PASSWORD = ""  # the hash of an invited account's password, before it has one


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
    # Strict: JSON true/false only, not 0, 1 or "yes".
    is_active: StrictBool = True


class User(UserBase, table=True):
    __tablename__ = "users"
    # (sort key, id) pairs: list pages walk them in order, ties broken by id, and find a
    # deep page's ids without reading the table (see crud._page). PostgreSQL also has
    # trigram indexes on lower(email) and lower(name) for `q`, and both databases one on
    # (last_login_at NULLS FIRST, id), whose spelling differs between them: in the
    # migrations only (backend.db.UNMODELLED_INDEXES).
    __table_args__ = (
        Index("ix_users_created_at_id", "created_at", "id"),
        Index("ix_users_name_id", "name", "id"),
        # Ids are never reused: SQLite would otherwise hand a deleted highest id to the
        # next insert (PostgreSQL's sequence never goes back).
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    # email_skeleton(email), set by crud: unique, so that no two accounts' emails look
    # alike, checked by the database without a race. NULL for rows inserted by hand and
    # for look-alikes that predate the column (see its migration).
    email_skeleton: str | None = Field(default=None, sa_type=String(64), unique=True, index=True)
    # NO_PASSWORD until an invited user sets one (POST /auth/password/set); no password
    # matches it. Not NULL: making the column nullable rebuilds `users` on SQLite, whose
    # DROP TABLE deletes every session by cascade.
    hashed_password: str = Field(sa_type=String(255))
    # The owner proved the address by following a link sent to it (registration's,
    # an invitation's or a password reset's). See EMAIL_VERIFICATION.
    is_verified: bool = Field(default=False, sa_column_kwargs={"server_default": "0"})
    # Part of every token: bumping it revokes all of the user's tokens at once.
    token_version: int = 0
    # Part of every token too, and never changed: it names this account, where an id
    # could come back for another one (a restored backup, a row made by hand), so a
    # token never speaks for an account it was not issued to. Revoking is
    # token_version's job alone.
    account_key: str = Field(default_factory=new_account_key, sa_type=String(2 * ACCOUNT_KEY_BYTES))
    # Bumped by every change; the ETag, so that If-Match can refuse a stale edit.
    version: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # The latest login or refresh, to the minute (see LAST_LOGIN_RESOLUTION); None until
    # the first. Not a version change: it moves neither `version` nor `updated_at`.
    last_login_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# last_login_at is written at most this often per user: a dashboard reads it to the
# minute, and a refresh storm then costs no write to the users table.
LAST_LOGIN_RESOLUTION = timedelta(minutes=1)


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

    # SkipJsonSchema: optional, but never null (see reject_null).
    email: Email | SkipJsonSchema[None] = None
    name: Name | SkipJsonSchema[None] = None
    role: UserRole | SkipJsonSchema[None] = None
    is_active: StrictBool | SkipJsonSchema[None] = None
    password: Password | SkipJsonSchema[None] = None

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


class UserReplace(UserBase):
    """PUT: the whole record, as a dashboard sends back what it read. The read-only
    fields may be sent, and must then match the stored ones."""

    role: UserRole
    is_active: StrictBool
    password: Password | SkipJsonSchema[None] = None
    id: int | SkipJsonSchema[None] = None
    created_at: datetime | SkipJsonSchema[None] = None
    updated_at: datetime | SkipJsonSchema[None] = None

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={
            "examples": [
                {
                    "id": 2,
                    "email": EXAMPLE_EMAIL,
                    "name": "Ada King",
                    "role": "user",
                    "is_active": True,
                    "created_at": "2026-01-01T12:00:00Z",
                    "updated_at": "2026-01-01T12:00:00Z",
                }
            ]
        }
    )

    def changes(self) -> UserUpdate:
        return UserUpdate.model_validate(
            self.model_dump(exclude={"id", "created_at", "updated_at"}, exclude_none=True)
        )


class UserUpdateMe(SQLModel):
    name: Name

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={"examples": [{"name": "Ada King"}]}
    )


class UserInvite(SQLModel):
    """An account made for someone who chooses their own password, from a mailed link."""

    email: Email
    name: Name
    role: UserRole = UserRole.USER

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={"examples": [{"email": EXAMPLE_EMAIL, "name": "Ada", "role": "user"}]}
    )


class UserPublic(UserBase):
    # Output only: what the database holds was validated on the way in, and
    # re-validating every email of every page costs ~50 us a user, every name ~25 us.
    email: str
    name: str
    id: int
    is_verified: bool = Field(description="Whether the owner followed a link mailed to it")
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None = Field(
        description="The latest login or token refresh, to the minute; null if never"
    )


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


class LinkPurpose(StrEnum):
    INVITE = "invite"
    RESET = "reset"
    VERIFY = "verify"


LINK_SECRET_BYTES = 32
# "<row id>.<secret>": the id finds the row, the secret is compared with its hash in
# constant time (see backend/links.py). 43 characters: 32 bytes in unpadded base64url.
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
    purpose: LinkPurpose = Field(
        sa_type=Enum(
            LinkPurpose,
            name="link_purpose",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda purposes: [purpose.value for purpose in purposes],
        )
    )
    token_hash: str = Field(sa_type=String(64))
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
USER_AGENT_MAX_CHARS = 512
IP_ADDRESS_MAX_CHARS = 64


def new_session_id() -> str:
    return secrets.token_hex(SESSION_ID_BYTES)


class UserSession(SQLModel, table=True):
    """One login, from the password check until it ends: its refresh tokens rotate
    within it, and every access token names it (`sid`). See backend/sessions.py."""

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
        sa_type=Enum(
            SessionEndReason,
            name="session_end_reason",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda reasons: [reason.value for reason in reasons],
        ),
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


class RefreshToken(SQLModel, table=True):
    """One issued refresh token. Only a hash of its jti is stored, never the token."""

    __tablename__ = "refresh_tokens"
    # Ids never reused (see User): a request still holding a deleted record's id must
    # not retire another token that took it.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    jti_hash: str = Field(sa_type=String(64), unique=True, index=True)
    # The session only, not the user: inserting a token then takes no lock on the
    # user's row (the lock order in backend/sessions.py).
    session_id: str = Field(
        sa_type=String(2 * SESSION_ID_BYTES),
        foreign_key="sessions.id",
        ondelete="CASCADE",
        index=True,
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class TokenClaims(BaseModel):
    """The verified payload of one of our JWTs."""

    model_config = ConfigDict(frozen=True)

    sub: int
    type: str
    jti: str
    ver: int
    acc: str  # the account key: see User.account_key
    exp: int
    iat: int
    # The session. Refresh tokens from before sessions named their family `fam`; the
    # migration made each family a session of the same id, so they still work.
    sid: str | None = pydantic.Field(default=None, validation_alias=AliasChoices("sid", "fam"))


class AuditAction(StrEnum):
    CREATE = "user.create"
    UPDATE = "user.update"
    ROLE_CHANGE = "user.role_change"
    DEACTIVATE = "user.deactivate"
    ACTIVATE = "user.activate"
    DELETE = "user.delete"
    SESSION_END = "user.session_end"
    SESSIONS_END_ALL = "user.sessions_end_all"
    LINK_ISSUE = "user.link_issue"  # details: purpose
    LINK_USE = "user.link_use"
    API_KEY_CREATE = "user.api_key_create"
    API_KEY_REVOKE = "user.api_key_revoke"


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
    scope: ApiKeyScope = Field(
        sa_type=Enum(
            ApiKeyScope,
            name="api_key_scope",
            native_enum=False,
            create_constraint=True,
            length=8,
            values_callable=lambda scopes: [scope.value for scope in scopes],
        )
    )


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
    secret is shown once, when it is made. See backend/api_keys.py."""

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
        sa_type=Enum(
            ApiKeyEndReason,
            name="api_key_end_reason",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda reasons: [reason.value for reason in reasons],
        ),
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


class AuditEventBase(SQLModel):
    # No foreign keys: the trail outlives the accounts it mentions.
    actor_id: int | None = Field(default=None, index=True)
    action: AuditAction = Field(
        sa_type=Enum(
            AuditAction,
            name="action",
            native_enum=False,
            create_constraint=True,
            length=32,
            values_callable=lambda actions: [action.value for action in actions],
        ),
        index=True,
    )
    target_id: int | None = Field(default=None, index=True)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class AuditEvent(AuditEventBase, table=True):
    """One change to an account, written in the transaction that made it."""

    __tablename__ = "audit_events"
    __table_args__ = {"sqlite_autoincrement": True}  # ids never reused, as every table's

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class AuditEventPublic(AuditEventBase):
    id: int
    created_at: datetime
