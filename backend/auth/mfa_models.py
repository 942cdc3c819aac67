"""The second-factor family: TOTP factors, recovery codes, the challenges a login with a
second factor waits in, and the bodies of the MFA routes. See backend/auth/mfa.py."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated

import pydantic
from pydantic import ConfigDict, model_validator
from sqlalchemy import String
from sqlmodel import Field, SQLModel

from backend.auth.models import CODE_MAX_CHARS, AuthenticationCredentialJSON
from backend.clock import utcnow
from backend.http.problems import Problem
from backend.models import UTCDateTime


class MfaMethod(StrEnum):
    """How a login's second step may be proven (`methods` of an mfa_required answer)."""

    TOTP = "totp"
    RECOVERY_CODE = "recovery_code"
    PASSKEY = "passkey"  # an assertion for POST /auth/mfa/passkey-options' challenge


RECOVERY_CODE_COUNT = 10
# Fernet's token of a 32-character base32 secret is 140 characters of base64url.
TOTP_SECRET_MAX_CHARS = 256
MFA_TOKEN_BYTES = 32
# secrets.token_urlsafe(32): 43 characters of base64url, no padding.
MFA_TOKEN_PATTERN = r"^[A-Za-z0-9_-]{43}$"  # noqa: S105  (a shape)


class TotpFactor(SQLModel, table=True):
    """A user's authenticator app: one per user. Pending (confirmed_at null) from the
    start of an enrolment until a code proves the app has the secret. The secret is
    stored encrypted (Fernet); last_used_step is the time step of the last code
    accepted, so that no code is accepted twice."""

    __tablename__ = "totp_factors"
    __table_args__ = {"sqlite_autoincrement": True}  # ids never reused, as every table's

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", unique=True, index=True)
    secret_encrypted: str = Field(sa_type=String(TOTP_SECRET_MAX_CHARS))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    confirmed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_used_step: int | None = Field(default=None)


class RecoveryCode(SQLModel, table=True):
    """One single-use recovery code; only a keyed hash of it is stored (mfa.py)."""

    __tablename__ = "recovery_codes"
    __table_args__ = {"sqlite_autoincrement": True}  # ids never reused, as every table's

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    code_hash: str = Field(sa_type=String(64))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class MfaChallenge(SQLModel, table=True):
    """A login that passed its password and waits for its second factor: the mfa_token
    names it (only a SHA-256 of the token is stored). Used once, until expires_at, and
    dead after MAX_CHALLENGE_FAILURES wrong codes."""

    __tablename__ = "mfa_challenges"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    token_hash: str = Field(sa_type=String(64), unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    failures: int = Field(default=0)


# --- what the MFA routes take and answer ----------------------------------------------
Code = Annotated[
    str,
    pydantic.Field(
        min_length=1,
        max_length=CODE_MAX_CHARS,
        description="A 6-digit code from the authenticator app, or a recovery code",
        examples=["123456"],
    ),
]


class MfaCode(SQLModel):
    code: Code

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={"examples": [{"code": "123456"}]}
    )


MfaToken = Annotated[
    str, pydantic.Field(pattern=MFA_TOKEN_PATTERN, description="From the mfa_required answer")
]


class MfaPasskeyOptions(SQLModel):
    """Asks for a passkey challenge for the second step of a login."""

    mfa_token: MfaToken


class MfaVerify(SQLModel):
    """The second step of a login: the mfa_token of the mfa_required answer and a proof."""

    mfa_token: MfaToken
    code: Code | None = None
    credential: AuthenticationCredentialJSON | None = Field(
        default=None,
        description="Instead of `code`: the browser's toJSON() of a passkey's assertion, "
        "for the options of POST /auth/mfa/passkey-options",
    )

    @model_validator(mode="after")
    def one_proof(self) -> "MfaVerify":
        if (self.code is None) == (self.credential is None):
            raise ValueError("send either code or credential (a passkey's assertion)")
        return self

    model_config = ConfigDict(  # type: ignore[assignment]
        json_schema_extra={
            "examples": [
                {"mfa_token": "q3Wk0wzJbR7mNf1xLpVtYc8HsAe5uGd2iOj6nKlZmXo", "code": "123456"}
            ]
        }
    )


class TotpEnrolment(SQLModel):
    secret: str = Field(description="The key to type into an app that cannot scan (base32)")
    otpauth_uri: str = Field(description="The otpauth:// URI the QR code holds")
    qr_svg: str = Field(description="The QR code of otpauth_uri, as an SVG document")


class RecoveryCodes(SQLModel):
    recovery_codes: list[str] = Field(
        description=f"{RECOVERY_CODE_COUNT} codes, shown this once: each works once, "
        "instead of an authenticator code"
    )


class MfaStatus(SQLModel):
    totp: bool = Field(description="Whether an authenticator app is on")
    recovery_codes_left: int = Field(description="Recovery codes not used yet")
    methods: list[MfaMethod] = Field(description="What a login may prove its second step with")


class LoginProblem(Problem):
    """A refused login. With code mfa_required, the password passed and the second
    step is due: POST /auth/mfa/verify with mfa_token and a code."""

    mfa_token: str | None = pydantic.Field(
        default=None, description="With mfa_required: single use, for POST /auth/mfa/verify"
    )
    expires_in: int | None = pydantic.Field(
        default=None, description="With mfa_required: seconds until mfa_token expires"
    )
    methods: list[MfaMethod] | None = pydantic.Field(
        default=None, description="With mfa_required: what the second step may prove"
    )
