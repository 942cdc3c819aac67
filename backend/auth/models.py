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
from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, model_validator
from sqlalchemy import JSON, BigInteger, LargeBinary, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from backend.clock import utcnow
from backend.http.parsing import INT32_MAX
from backend.models import (
    EXAMPLE_EMAIL,
    EXAMPLE_PASSWORD,
    IP_ADDRESS_MAX_CHARS,
    NAME_MAX_CHARS,
    USER_AGENT_MAX_CHARS,
    AuditEventPublic,
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


# A TOTP code (6 digits) or a recovery code (10 characters, with or without its dash);
# spaces a user copies along are dropped before comparing.
CODE_MAX_CHARS = 32


class Reauthentication(SQLModel):
    """A fresh proof: the password or, with an authenticator app on, a code from it."""

    password: str | None = Field(default=None, min_length=1, max_length=1024)
    code: str | None = Field(
        default=None,
        min_length=1,
        max_length=CODE_MAX_CHARS,
        description="A code from the authenticator app, instead of the password",
    )

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={"examples": [{"password": EXAMPLE_PASSWORD}, {"code": "123456"}]}
    )

    @model_validator(mode="after")
    def one_proof(self) -> "Reauthentication":
        if (self.password is None) == (self.code is None):
            raise ValueError("send either password or code, not both and not neither")
        return self


class Reauthenticated(SQLModel):
    authenticated_at: datetime
    # Until then the routes that ask for a recent proof accept this session's tokens.
    valid_until: datetime


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
    deletion_cancelled: bool = Field(
        default=False,
        description="This login cancelled the account's scheduled deletion",
    )


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
    # When the user last proved who they are in this session: its login, or since then
    # POST /auth/reauthenticate. The routes that could lock the owner out ask for a
    # recent one (REAUTHENTICATION_WINDOW_SECONDS), so a stolen access token is not enough.
    authenticated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)  # absolute: rotation never moves it
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_reason: SessionEndReason | None = Field(
        default=None,
        sa_type=string_enum(SessionEndReason, name="session_end_reason", length=16),
    )
    # MFA_REQUIRED asks this user for a second factor and they had none at login: the
    # session may only enrol one (backend/auth/deps.py), until its confirmation lifts it.
    restricted: bool = Field(default=False)
    user_agent: str | None = Field(default=None, sa_type=String(USER_AGENT_MAX_CHARS))
    ip_address: str | None = Field(default=None, sa_type=String(IP_ADDRESS_MAX_CHARS))
    name: str | None = Field(default=None, sa_type=String(NAME_MAX_CHARS))
    # Set for a session an admin opened to act as the user (POST /users/{id}/impersonate;
    # see sessions.start_impersonation). Such a session lasts IMPERSONATION_MINUTES at
    # most and cannot change credentials; each request checks that the admin still is
    # one. No foreign key: SQLite cannot drop one without rebuilding `sessions`, whose
    # drop would cascade to every refresh token.
    impersonator_id: int | None = Field(default=None, index=True)

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
    impersonator_id: int | None = Field(
        description="The admin who opened this session to act as you (support), or null"
    )


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
    # The impersonating admin's id, in the tokens of an impersonation session only.
    imp: int | None = pydantic.Field(default=None, ge=1, le=INT32_MAX)


# --- mailed links ---------------------------------------------------------------------
class LinkPurpose(StrEnum):
    INVITE = "invite"
    RESET = "reset"
    VERIFY = "verify"
    EMAIL_CHANGE = "email_change"  # mailed to the new address, which it carries


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
    # The account's address when it was issued, where it was mailed (an email change's
    # aside): refused once the account's address differs.
    email: str = Field(sa_type=String(EMAIL_MAX_CHARS))
    # An email change's new address: where it was mailed, and what it sets.
    new_email: str | None = Field(default=None, sa_type=String(EMAIL_MAX_CHARS))
    # An email change's: the session that asked, which its confirmation leaves signed in
    # (the others end). No foreign key: a session ended or gone meanwhile is just no
    # longer there to keep.
    session_id: str | None = Field(default=None, sa_type=String(2 * SESSION_ID_BYTES))
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


class AccountDeleted(SQLModel):
    detail: str
    deletion_scheduled_at: datetime | None = Field(
        description="ACCOUNT_DELETION=grace: when the account is removed unless its owner "
        "logs in before; null: it was deleted now"
    )


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


# --- passkeys (WebAuthn) --------------------------------------------------------------
# A credential id is at most 1023 bytes (WebAuthn Level 3): 1364 characters of base64url.
CREDENTIAL_ID_MAX_CHARS = 1364
# What a browser's PublicKeyCredential.toJSON() (or @simplewebauthn/browser) sends: the
# binary fields base64url text. Bounded here so that no parser meets a huge field.
CEREMONY_FIELD_MAX_CHARS = 65_536
Base64Url = Annotated[
    str, pydantic.Field(max_length=CEREMONY_FIELD_MAX_CHARS, pattern=r"^[A-Za-z0-9_-]*={0,2}$")
]
CredentialIdText = Annotated[
    str,
    pydantic.Field(min_length=1, max_length=CREDENTIAL_ID_MAX_CHARS, pattern=r"^[A-Za-z0-9_-]+$"),
]
Transport = Annotated[str, pydantic.Field(max_length=32)]


class PasskeyPurpose(StrEnum):
    REGISTER = "register"
    AUTHENTICATE = "authenticate"


class PasskeyChallenge(SQLModel, table=True):
    """One challenge handed to a browser, used once, until expires_at. Only a SHA-256 of
    it is kept: the answer's clientDataJSON carries the challenge back, which finds it."""

    __tablename__ = "passkey_challenges"
    __table_args__ = {"sqlite_autoincrement": True}  # ids never reused, as every table's

    id: int | None = Field(default=None, primary_key=True)
    challenge_hash: str = Field(sa_type=String(64), unique=True, index=True)
    purpose: PasskeyPurpose = Field(
        sa_type=string_enum(PasskeyPurpose, name="passkey_purpose", length=16)
    )
    # Whose ceremony it is: a registration's user and session, a second factor's user;
    # None for a passwordless sign-in, which learns the user from the passkey.
    user_id: int | None = Field(
        default=None, foreign_key="users.id", ondelete="CASCADE", index=True
    )
    session_id: str | None = Field(
        default=None,
        sa_type=String(2 * SESSION_ID_BYTES),
        foreign_key="sessions.id",
        ondelete="CASCADE",
        index=True,
    )
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


class PasskeyBase(SQLModel):
    name: Name = Field(sa_type=String(NAME_MAX_CHARS))


class Passkey(PasskeyBase, table=True):
    """A WebAuthn credential of a user: its public key (COSE), never a secret."""

    __tablename__ = "passkeys"
    __table_args__ = {"sqlite_autoincrement": True}  # ids never reused, as every table's

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    credential_id: str = Field(sa_type=String(CREDENTIAL_ID_MAX_CHARS), unique=True, index=True)
    public_key: bytes = Field(sa_type=LargeBinary)
    # Unsigned 32 bits in the authenticator's data: over an INTEGER's range.
    sign_count: int = Field(default=0, sa_type=BigInteger)
    transports: list[str] = Field(default_factory=list, sa_type=JSON)
    # Whether it is synced (a passkey in a password manager) or bound to one device.
    backed_up: bool = False
    device_type: str = Field(sa_type=String(16))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class PasskeyPublic(PasskeyBase):
    id: int
    created_at: datetime
    last_used_at: datetime | None = Field(description="Its latest sign-in")
    backed_up: bool = Field(description="Synced (a password manager's), or kept on one device")
    device_type: str = Field(description="`multi_device` (synced) or `single_device`")
    transports: list[str] = Field(description="How the browser reaches it: usb, nfc, internal...")


class PasskeyRename(SQLModel):
    name: Name


class AttestationResponseJSON(BaseModel):
    model_config = ConfigDict(extra="ignore")

    clientDataJSON: Base64Url  # noqa: N815  (WebAuthn's JSON names)
    attestationObject: Base64Url  # noqa: N815
    transports: list[Transport] | None = pydantic.Field(default=None, max_length=16)


class RegistrationCredentialJSON(BaseModel):
    """A new credential as the browser's `PublicKeyCredential.toJSON()` gives it."""

    model_config = ConfigDict(extra="ignore")

    id: CredentialIdText
    rawId: CredentialIdText  # noqa: N815
    type: Literal["public-key"]
    response: AttestationResponseJSON
    authenticatorAttachment: Literal["platform", "cross-platform"] | None = None  # noqa: N815


class AssertionResponseJSON(BaseModel):
    model_config = ConfigDict(extra="ignore")

    clientDataJSON: Base64Url  # noqa: N815
    authenticatorData: Base64Url  # noqa: N815
    signature: Base64Url
    userHandle: Base64Url | None = None  # noqa: N815


class AuthenticationCredentialJSON(BaseModel):
    """An assertion as the browser's `PublicKeyCredential.toJSON()` gives it."""

    model_config = ConfigDict(extra="ignore")

    id: CredentialIdText
    rawId: CredentialIdText  # noqa: N815
    type: Literal["public-key"]
    response: AssertionResponseJSON
    authenticatorAttachment: Literal["platform", "cross-platform"] | None = None  # noqa: N815


class PasskeyCreate(SQLModel):
    credential: RegistrationCredentialJSON
    name: Name | None = Field(default=None, description='Default: "Passkey"')


class PasskeySignIn(SQLModel):
    credential: AuthenticationCredentialJSON


class PasskeyLoginStatus(SQLModel):
    enabled: bool = Field(description="PASSKEY_LOGIN: whether /auth/passkey/* sign people in")


# --- sign-in with identity providers --------------------------------------------------
PROVIDER_SLUG_MAX_CHARS = 32
SUBJECT_MAX_CHARS = 255


class IdentityBase(SQLModel):
    provider: str = Field(
        sa_type=String(PROVIDER_SLUG_MAX_CHARS), description="The provider's slug"
    )
    email: str = Field(
        sa_type=String(EMAIL_MAX_CHARS), description="The provider's email for it when linked"
    )
    linked_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(
        default=None, sa_type=UTCDateTime, description="Its latest sign-in; null if never"
    )


class Identity(IdentityBase, table=True):
    """An account at an identity provider that signs a user in: the provider's `sub`
    (GitHub's numeric id), never its email, which the provider may hand to someone else."""

    __tablename__ = "identities"
    __table_args__ = (
        UniqueConstraint("provider", "subject", name="uq_identities_provider_subject"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    subject: str = Field(sa_type=String(SUBJECT_MAX_CHARS))


class IdentityPublic(IdentityBase):
    id: int
    subject: str


class SsoMode(StrEnum):
    LOGIN = "login"
    LINK = "link"  # POST /users/me/identities/{provider}: for the user who started it


SSO_SECRET_BYTES = 32


def new_sso_secret() -> str:
    return secrets.token_urlsafe(SSO_SECRET_BYTES)


class SsoFlow(SQLModel, table=True):
    """One trip to a provider and back, server-side: what the callback checks (the state,
    its browser's cookie, the PKCE verifier, the nonce), used once; then the one-time code
    the front end trades for a session. Secrets are stored as hashes."""

    __tablename__ = "sso_flows"

    id: str = Field(primary_key=True, sa_type=String(64))  # sha256 of the state
    provider: str = Field(sa_type=String(PROVIDER_SLUG_MAX_CHARS))
    mode: SsoMode = Field(sa_type=string_enum(SsoMode, name="sso_mode", length=8))
    # The linking user (mode link); after a sign-in, the user the code logs in.
    user_id: int | None = Field(default=None, foreign_key="users.id", ondelete="CASCADE")
    code_verifier: str = Field(sa_type=String(128))
    nonce: str = Field(sa_type=String(64))
    return_to: str = Field(sa_type=String(2048))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    code_hash: str | None = Field(default=None, sa_type=String(64), unique=True)
    code_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    exchanged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class SsoProviderPublic(SQLModel):
    slug: str
    name: str = Field(description="What its sign-in button says")
    authorize_url: str = Field(description="Where the sign-in button goes (GET, a redirect)")


class AuthorizationUrl(SQLModel):
    authorization_url: str = Field(description="Send the browser here, to the provider")


class SsoExchange(SQLModel):
    code: str = Field(
        min_length=1, max_length=128, description="The `sso_code` the callback redirected with"
    )


# --- one's own data, exported ---------------------------------------------------------
EXPORT_FORMAT = "account-export/1"


class SessionExport(SQLModel):
    """A session as its owner may keep it: where and when, never a token."""

    id: str
    name: str | None
    created_at: datetime
    last_used_at: datetime
    authenticated_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_reason: SessionEndReason | None
    user_agent: str | None
    ip_address: str | None


class ApiKeyExport(ApiKeyPublic):
    """A key as its owner may keep it: its prefix, never its secret or the secret's hash."""

    revoked_at: datetime | None
    revoked_reason: ApiKeyEndReason | None


class AccountExport(SQLModel):
    """Everything the server keeps about one account, as one JSON document. Each kind of
    record is a key of its own, so that a kind added later is one key more and readers
    of the earlier ones are unaffected."""

    format: str = Field(default=EXPORT_FORMAT, description="What this document is, and its version")
    exported_at: datetime
    profile: UserPublic
    sessions: list[SessionExport] = Field(
        description="Every session the server still holds, ended ones included"
    )
    api_keys: list[ApiKeyExport] = Field(description="Every key, revoked ones included")
    audit_events: list[AuditEventPublic] = Field(
        description="The events about the account (its target) and by it (its actor), "
        "oldest first; an event about another account keeps its details out"
    )
