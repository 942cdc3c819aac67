"""Field types and the User and AuditEvent families: the table classes double as
request and response schemas. The login-side families are in backend/auth/models.py."""

import json
import math
import secrets
import unicodedata
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    GetJsonSchemaHandler,
    StrictBool,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue, SkipJsonSchema
from pydantic_core import CoreSchema, PydanticCustomError
from sqlalchemy import JSON, DateTime, Dialect, Enum, Index, String, TypeDecorator, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from backend.clock import utcnow
from backend.confusables import is_default_ignorable
from backend.rules import (
    BIDI_CONTROLS,
    EMAIL_MAX_CHARS,
    PASSWORD_MAX_BYTES,
    account_rules,
    normalise_email,
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
BAN_REASON_MAX_CHARS = 500
# A ban's end date: within a century, which is "for good" in all but name (send no
# `until` for that), and keeps every date far from the years Python cannot hold.
BAN_MAX_DAYS = 36_500
# A client as sessions and sign-in events record it.
USER_AGENT_MAX_CHARS = 512
IP_ADDRESS_MAX_CHARS = 64

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


def string_enum(enum: type[StrEnum], *, name: str, length: int) -> Enum:
    """An enum column stored as a VARCHAR with a CHECK of its values, not a database
    enum type: adding a value later needs no ALTER TYPE."""
    return Enum(
        enum,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=length,
        values_callable=lambda members: [member.value for member in members],
    )


def _check_password_policy(value: str) -> str:
    value = normalise_password(value)
    problem = password_problem(value, min_length=account_rules().password_min_length)
    if problem:
        # Its own error type: the 422's field error carries the problem's code.
        raise PydanticCustomError(problem.code, problem.message)
    return value


class _PasswordJsonSchema:
    """The hint clients and fuzzers read, made when the schema is: minLength follows
    PASSWORD_MIN_LENGTH. The list of common passwords cannot be said in JSON Schema."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        min_length = account_rules().password_min_length
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
    if any(char in BIDI_CONTROLS for char in value):
        raise ValueError("must not contain bidirectional control characters")
    if all(char.isspace() or is_default_ignorable(char) for char in value):
        raise ValueError("must not be empty (invisible characters alone are empty)")
    if not value:
        raise ValueError("must not be empty")
    return value


_CONTROL = r"\u0000-\u001F\u007F-\u009F"
_BIDI = r"\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069"
_PRINTABLE = f"[^{_CONTROL}{_BIDI}]"
# What makes a name not empty: something visible (the ignorables of the Basic
# Multilingual Plane; JSON Schema patterns have no flag for the rest).
_INVISIBLE = (
    r"\u00AD\u034F\u115F\u1160\u17B4\u17B5\u180B-\u180F\u200B-\u200D\u2060-\u206F\u3164"
    r"\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFF8"
)


def _normalise_email(value: str) -> str:
    return normalise_email(value, allow_international=account_rules().allow_international_emails)


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
        if not account_rules().allow_international_emails:
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
            "pattern": f"^{_PRINTABLE}*[^\\s{_CONTROL}{_BIDI}{_INVISIBLE}]{_PRINTABLE}*$",
            "description": f"At most {NAME_MAX_CHARS} characters, not all spaces; "
            "surrounding spaces are trimmed.",
        }
    ),
]


# Profile data without a migration (user_metadata, app_metadata): JSON objects, capped so
# that a row stays small and a filter or an index entry cheap.
METADATA_MAX_BYTES = 8192  # serialized compactly, in UTF-8
METADATA_MAX_DEPTH = 5  # the object itself is depth 1


def _metadata_problem(value: Any, depth: int) -> str | None:
    if depth > METADATA_MAX_DEPTH:
        return f"must nest at most {METADATA_MAX_DEPTH} levels deep (objects and arrays)"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _unstorable_text(key) or _metadata_problem(item, depth + 1)
            if problem:
                return problem
    elif isinstance(value, list):
        for item in value:
            if problem := _metadata_problem(item, depth + 1):
                return problem
    elif isinstance(value, str):
        return _unstorable_text(value)
    elif isinstance(value, float) and not math.isfinite(value):
        # Python's JSON reads NaN and Infinity, which JSON (and PostgreSQL's jsonb) lacks.
        return "must not contain NaN or Infinity"
    return None


def _unstorable_text(text: str) -> str | None:
    # NUL, which jsonb cannot hold, and lone surrogates, which UTF-8 cannot encode.
    if "\x00" in text or any("\ud800" <= char <= "\udfff" for char in text):
        return "must not contain NUL characters or lone surrogates"
    return None


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    problem = _metadata_problem(value, 1)
    if problem:
        raise ValueError(problem)
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    if size > METADATA_MAX_BYTES:
        raise ValueError(f"must be at most {METADATA_MAX_BYTES} bytes as compact JSON in UTF-8")
    return value


Metadata = Annotated[
    dict[str, Any],
    AfterValidator(_check_metadata),
    WithJsonSchema(
        {
            "type": "object",
            "additionalProperties": True,
            "description": f"A JSON object of at most {METADATA_MAX_BYTES} bytes (compact, "
            f"UTF-8), nested at most {METADATA_MAX_DEPTH} levels; no NUL characters, NaN or "
            "Infinity. Replaced whole when sent.",
        }
    ),
]
# JSONB on PostgreSQL, for its GIN index and @> containment (list filters); JSON text on
# SQLite. Never NULL: an empty object.
METADATA_COLUMN = JSON().with_variant(JSONB(), "postgresql")


def _metadata_field() -> Any:
    return Field(
        default_factory=dict,
        sa_type=METADATA_COLUMN,
        sa_column_kwargs={"server_default": text("'{}'"), "nullable": False},
    )


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
        default=UserRole.USER, sa_type=string_enum(UserRole, name="role", length=16)
    )
    # Strict: JSON true/false only, not 0, 1 or "yes".
    is_active: StrictBool = True


class User(UserBase, table=True):
    __tablename__ = "users"
    # (sort key, id) pairs: list pages walk them in order, ties broken by id, and find a
    # deep page's ids without reading the table (see crud.list_page). PostgreSQL also has
    # trigram indexes on lower(email) and lower(name) for `q`, and both databases one on
    # (last_login_at NULLS FIRST, id), whose spelling differs between them: in the
    # migrations only (backend.db.migrate.UNMODELLED_INDEXES).
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
    # A ban (POST /users/{id}/ban): in force from banned_at until banned_until, or for
    # good while banned_until is NULL. It ends by the clock, with no job: every check
    # compares banned_until with the time (ban_in_force); lifting it clears all three.
    banned_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    banned_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    ban_reason: str | None = Field(default=None, sa_type=String(BAN_REASON_MAX_CHARS))

    def ban_in_force(self, now: datetime) -> bool:
        return self.banned_at is not None and (self.banned_until is None or self.banned_until > now)

    # When `backend purge` may remove the account: its owner asked for its deletion
    # with ACCOUNT_DELETION=grace. Any new session (a login) clears it.
    deletion_scheduled_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)

    # What the owner keeps about themselves (PATCH /users/me), and what admins keep
    # about the account (PATCH /users/{id}), without a column of their own. PostgreSQL
    # also has a GIN index on each, for the list's key filters: in the migrations only
    # (UNMODELLED_INDEXES), as SQLite has no such index.
    user_metadata: dict[str, Any] = _metadata_field()
    app_metadata: dict[str, Any] = _metadata_field()


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
    user_metadata: Metadata | SkipJsonSchema[None] = None
    app_metadata: Metadata | SkipJsonSchema[None] = None

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
    # Omitted: unchanged, as a client that predates them sends the record back.
    user_metadata: Metadata | SkipJsonSchema[None] = None
    app_metadata: Metadata | SkipJsonSchema[None] = None
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
    """One's own edit: only the fields sent are changed. `app_metadata` is the admins'
    (403 for anyone else): accepted here only to refuse it by name."""

    name: Name | SkipJsonSchema[None] = None
    user_metadata: Metadata | SkipJsonSchema[None] = None
    app_metadata: Metadata | SkipJsonSchema[None] = None

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={
            "examples": [{"name": "Ada King", "user_metadata": {"team": "blue", "theme": "dark"}}]
        }
    )

    @field_validator("*", mode="before")
    @classmethod
    def reject_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("must not be null; omit the field to leave it unchanged")
        return value


class EmailChange(SQLModel):
    """A new address for one's own account: it is mailed a link that makes the change."""

    email: Email

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={"examples": [{"email": "ada.king@example.com"}]}
    )


class UserInvite(SQLModel):
    """An account made for someone who chooses their own password, from a mailed link."""

    email: Email
    name: Name
    role: UserRole = UserRole.USER

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={"examples": [{"email": EXAMPLE_EMAIL, "name": "Ada", "role": "user"}]}
    )


class _IdFirst(SQLModel):
    id: int


# Bases after UserBase: pydantic orders fields from the last base to the first, so `id`
# leads every user in JSON, the OpenAPI schema and a dashboard's CSV export, at no cost.
class UserPublic(UserBase, _IdFirst):
    # Output only: what the database holds was validated on the way in, and
    # re-validating every email of every page costs ~50 us a user, every name ~25 us.
    email: str
    name: str
    is_verified: bool = Field(description="Whether the owner followed a link mailed to it")
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None = Field(
        description="The latest login or token refresh, to the minute; null if never"
    )
    user_metadata: dict[str, Any] = Field(
        description="The owner's own data (PATCH /users/me), a JSON object"
    )
    app_metadata: dict[str, Any] = Field(
        description="Data only admins set (PATCH /users/{user_id}), a JSON object"
    )
    deletion_scheduled_at: datetime | None = Field(
        description="When the account is removed, its owner having asked for its deletion "
        "(ACCOUNT_DELETION=grace); null unless scheduled. A login cancels it."
    )
    # Shown to admins and to the user themselves; null in other users' views.
    banned_at: datetime | None = Field(
        default=None, description="When the latest ban began; null when none (or lifted)"
    )
    banned_until: datetime | None = Field(
        default=None,
        description="When that ban ends by itself; null with banned_at set: a permanent ban",
    )
    ban_reason: str | None = Field(default=None, description="Why, as the admin wrote it")


BAN_FIELDS = ("banned_at", "banned_until", "ban_reason")


class Impersonator(SQLModel):
    id: int
    email: str


class UserMe(UserPublic):
    impersonated_by: Impersonator | None = Field(
        description="The admin acting as you in this session (support), or null"
    )


def _normalise_reason(value: str) -> str:
    if len(value) > BAN_REASON_MAX_CHARS:
        raise ValueError(f"must be at most {BAN_REASON_MAX_CHARS} characters long")
    value = _reject_control_characters(value.strip())
    if any(char in BIDI_CONTROLS for char in value):
        raise ValueError("must not contain bidirectional control characters")
    if not value:
        raise ValueError("must not be empty")
    return value


def _iso_8601_only(value: object) -> object:
    # pydantic would also read numbers as Unix times: 0.5 is not a date an admin means.
    if not isinstance(value, str) or not value[:4].isdigit() or "-" not in value:
        raise ValueError("must be an ISO 8601 date-time with its offset, e.g. 2027-01-31T12:00:00Z")
    return value


def _future_instant(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must carry its UTC offset, e.g. 2027-01-31T12:00:00Z")
    now = utcnow()
    if value <= now:
        raise ValueError("must be in the future")
    if value > now + timedelta(days=BAN_MAX_DAYS):
        raise ValueError(f"must be within {BAN_MAX_DAYS} days; omit it for a permanent ban")
    return value.astimezone(UTC)


BanReason = Annotated[
    str,
    AfterValidator(_normalise_reason),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": BAN_REASON_MAX_CHARS,
            "pattern": f"^{_PRINTABLE}*[^\\s{_CONTROL}{_BIDI}]{_PRINTABLE}*$",
            "description": f"At most {BAN_REASON_MAX_CHARS} characters, not all spaces; "
            "shown to admins, not to the user",
        }
    ),
]
BanEnd = Annotated[
    datetime,
    BeforeValidator(_iso_8601_only),
    AfterValidator(_future_instant),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "description": f"When the ban ends by itself: in the future, within {BAN_MAX_DAYS} "
            "days, with its UTC offset. Omit it (or send null) for a ban with no end",
        }
    ),
]


class BanRequest(SQLModel):
    reason: BanReason
    until: BanEnd | None = None

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={
            "examples": [{"reason": "Spam in the forums", "until": "2027-01-31T00:00:00Z"}]
        }
    )


class UserListed(UserPublic):
    """A user as the users list shows it."""

    sign_in_methods: list[str] | None = Field(
        default=None,
        description="For admins: `password` if the user has one, then each identity "
        "provider linked (its slug); null for other callers",
    )


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
    PASSKEY_ADD = "user.passkey_add"
    PASSKEY_REMOVE = "user.passkey_remove"
    IDENTITY_LINK = "user.identity_link"  # details: provider, subject, email
    IDENTITY_UNLINK = "user.identity_unlink"
    SSO_REFUSE = "user.sso_refuse"  # details: provider, code, email; target when known
    WEBHOOK_CREATE = "webhook.create"  # details: webhook_id, url, events
    WEBHOOK_UPDATE = "webhook.update"  # details: webhook_id, fields
    WEBHOOK_DELETE = "webhook.delete"
    WEBHOOK_DISABLE = "webhook.disable"  # by the dispatcher, after failing too long
    BAN = "user.ban"  # details: reason, until
    UNBAN = "user.unban"
    IMPERSONATION_START = "user.impersonation_start"  # actor: the admin; details: session_id
    IMPERSONATED_REQUEST = "user.impersonated_request"  # each request of that session
    IMPERSONATION_STOP = "user.impersonation_stop"
    MFA_ENABLE = "user.mfa_enable"
    MFA_DISABLE = "user.mfa_disable"
    MFA_RESET = "user.mfa_reset"  # by an admin or the CLI; details: sessions ended
    MFA_FAILURE = "user.mfa_failure"  # a wrong second-factor code; details: step
    RECOVERY_CODES_NEW = "user.recovery_codes_new"
    DELETION_SCHEDULE = "user.deletion_schedule"  # details: deletion_scheduled_at
    DELETION_CANCEL = "user.deletion_cancel"  # by a login within the grace period


class AuditEventBase(SQLModel):
    # No foreign keys: the trail outlives the accounts it mentions.
    actor_id: int | None = Field(default=None, index=True)
    action: AuditAction = Field(
        sa_type=string_enum(AuditAction, name="action", length=32), index=True
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


class AuthEventKind(StrEnum):
    LOGIN_SUCCEEDED = "login_succeeded"
    LOGIN_FAILED = "login_failed"  # reason: the problem code answered
    REFRESH_FAILED = "refresh_failed"  # reason: the problem code answered
    LOGOUT = "logout"
    REGISTERED = "registered"
    RATE_LIMITED = "rate_limited"  # reason: the limit (login, register, refresh, ...)


class AuthEventBase(SQLModel):
    kind: AuthEventKind = Field(sa_type=string_enum(AuthEventKind, name="kind", length=32))
    # No foreign key: the history outlives the accounts it mentions. None where no
    # account is known (an unknown email, a refresh token that names none).
    user_id: int | None = Field(default=None)
    # The email as sent, for what failed before an account was known.
    email: str | None = Field(default=None, sa_type=String(EMAIL_MAX_CHARS))
    reason: str | None = Field(default=None, sa_type=String(64))
    ip_address: str | None = Field(default=None, sa_type=String(IP_ADDRESS_MAX_CHARS), index=True)
    user_agent: str | None = Field(default=None, sa_type=String(USER_AGENT_MAX_CHARS))


class AuthEvent(AuthEventBase, table=True):
    """One sign-in event, written shortly after it by a batching writer
    (backend/auth/events.py), not in the request's transaction."""

    __tablename__ = "auth_events"
    __table_args__ = (
        # (filter, id): a user's own history and the admin filters walk these in order.
        Index("ix_auth_events_user_id_id", "user_id", "id"),
        Index("ix_auth_events_kind_id", "kind", "id"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    # Date ranges, and the retention purge.
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class AuthEventPublic(AuthEventBase):
    id: int
    created_at: datetime
