"""Settings from the environment and `.env`, validated once at start-up."""

import hashlib
import json
import math
import os
import re
import secrets
import sys
from collections import Counter
from email.utils import parseaddr
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from limits import parse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backend.rules import (
    DEFAULT_PASSWORD_MIN_LENGTH,
    EXAMPLE_PASSWORDS,
    PASSWORD_MIN_LENGTH_FLOOR,
    AccountRules,
    common_passwords,
    normalise_email,
    normalise_password,
    password_email_problem,
    password_problem,
)

MIN_SECRET_KEY_BYTES = 32
PRODUCTION_BCRYPT_ROUNDS = 12
# The records one request may ask for is the MAX_PER_PAGE setting: its default is what
# react-admin's stock Export button asks for at once, and its ceiling keeps one answer
# to a few megabytes.
DEFAULT_MAX_PER_PAGE = 1000
MAX_PER_PAGE_CEILING = 10_000
HOW_TO_MAKE_A_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
# The dashboard as `npm run build` leaves it in a checkout; an installed wheel has none.
DEFAULT_ADMIN_DIR = Path(__file__).resolve().parent.parent / "clients" / "admin" / "dist"
# Where the app serves it (backend/http/admin.py); it also serves the pages mailed links open.
ADMIN_PATH = "/admin"
LOCAL_URL = "http://127.0.0.1:8000"
HOW_TO_BUILD_THE_DASHBOARD = "cd clients/admin && npm ci && npm run build"

# A weak SECRET_KEY lets anyone who holds one token crack the key offline and forge an
# admin's. A key that is set is refused, in every stage, when it is (and so is a
# METRICS_TOKEN, which a scraper sends with every request and could be guessed likewise):
# - shorter than 32 bytes: RFC 7518 3.2 wants an HS256 key of at least 256 bits;
# - or contains one of these placeholders (any case), a sign it was copied from a
#   template or typed by hand. Each is 5+ characters, so a random key contains one by
#   chance with odds under 1 in 100,000;
SECRET_KEY_PLACEHOLDERS = (
    "changeme",
    "change-me",
    "change_me",
    "changethis",
    "secret",
    "password",
    "passwd",
    "example",
    "sample",
    "placeholder",
    "default",
    "insecure",
    "dummy",
    "qwerty",
    "letmein",
)
# - or has an estimated entropy under 128 bits: its length times the Shannon entropy of
#   its own character frequencies. Random keys score close to length x log2(alphabet):
#   token_urlsafe(48) ~340 bits, token_hex(32) ~245, `openssl rand -base64 32` ~215.
#   Repeated or few distinct characters score low: 32 x "a" is 0 bits, "abab..." 1 bit a
#   character, so 64 characters of it 64 bits;
MIN_SECRET_KEY_ENTROPY_BITS = 128
# - or has more than half of its neighbouring characters equal or next to each other in
#   code point order ("abcd...", "1234...", "aabb..."), which frequencies cannot see. In
#   a random url-safe key about 5% of neighbours are, in a hex key about 18%.
MAX_SECRET_KEY_STEP_SHARE = 0.5
# Two shapes the frequencies misjudge:
# - hex (one case): 16 symbols, so at most 4 bits a character, which a sample of 32
#   characters' frequencies underrates (secrets.token_hex(16) scores about 115 bits).
#   A hex key is credited 4 bits a character when its frequencies give at least 2.5 bits
#   a character: in 200,000 token_hex(16) the lowest was 2.82, "deadbeef" repeated is 2.16.
#   A hex key of a digest's length is also refused when it is the hex digest of a common
#   password or secret (sha256("secret") scores 242 bits, and is the second guess);
HEX_KEY = re.compile(r"[0-9a-f]+|[0-9A-F]+")
HEX_BITS_PER_CHARACTER = 4
MIN_HEX_FREQUENCY_BITS = 2.5
HEX_DIGESTS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
# Secrets seen in templates and tutorials, whose digests are refused with the common
# passwords' (the placeholders above are, too).
COMMON_SECRETS = (
    "secret",
    "secretkey",
    "secret_key",
    "secret-key",
    "mysecret",
    "supersecret",
    "jwt_secret",
    "jwtsecret",
    "your-secret-key",
    "your_secret_key",
    "admin",
    "test",
)
# - words in letters alone ("correct horse battery staple ..."): frequencies see
#   English's letters, not the words; each is credited what a word drawn at random from
#   a 7,776-word diceware list is worth, log2(7776) ~ 12.9 bits.
# Each word after the first starts at a separator or a capital, so the pattern cannot
# split a word two ways (nested `+` would backtrack exponentially on a near-miss).
PASSPHRASE_KEY = re.compile(r"[A-Z]?[a-z]+(?:[ ._-]?[A-Z][a-z]+|[ ._-][a-z]+)*")
PASSPHRASE_WORD = re.compile(r"[A-Z]?[a-z]+")
BITS_PER_PASSPHRASE_WORD = math.log2(7776)


RP_ID_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")


def webauthn_problem(rp_id: str, origins: list[str], *, rp_id_name: str = "RP_ID") -> str | None:
    """Why passkeys could not work with this relying party id and these origins, or
    None: a browser refuses a ceremony whose page's host is not the RP id or under it,
    and every page but localhost's must be https."""
    if not RP_ID_PATTERN.fullmatch(rp_id) or rp_id.replace(".", "").isdigit():
        return (
            f"{rp_id_name} {rp_id!r} must be a lowercase host name like example.com (not an "
            "address; no scheme or port)"
        )
    for origin in origins:
        parts = urlsplit(origin)
        host = parts.hostname or ""
        if (
            parts.scheme not in {"https", "http"}
            or not host
            or parts.path
            or parts.query
            or parts.fragment
            or "@" in parts.netloc
        ):
            return f"WEBAUTHN_ORIGINS: {origin!r} is not an origin like https://app.example.com"
        if parts.scheme == "http" and host != "localhost" and not host.endswith(".localhost"):
            return f"WEBAUTHN_ORIGINS: {origin!r} must be https:// (only localhost may use http)"
        if host != rp_id and not host.endswith(f".{rp_id}"):
            return (
                f"WEBAUTHN_ORIGINS: {origin!r} is not on {rp_id_name} {rp_id!r} or a "
                "subdomain of it, so browsers would refuse its passkeys"
            )
    return None


def secret_key_weakness(key: str) -> str | None:
    """Why this SECRET_KEY (or METRICS_TOKEN) is too weak, or None if it is not."""
    size = len(key.encode())
    if size < MIN_SECRET_KEY_BYTES:
        return f"is {size} bytes; it must be at least {MIN_SECRET_KEY_BYTES}"
    lowered = key.lower()
    for placeholder in SECRET_KEY_PLACEHOLDERS:
        if placeholder in lowered:
            return f"contains the placeholder {placeholder!r}"
    counts = Counter(key).values()
    bits = sum(count * math.log2(len(key) / count) for count in counts)
    if HEX_KEY.fullmatch(key):
        if len(key) in HEX_DIGESTS and _is_digest_of_common_secret(key):
            return f"is the {HEX_DIGESTS[len(key)]} hex digest of a common password or secret"
        if bits >= MIN_HEX_FREQUENCY_BITS * len(key):
            bits = HEX_BITS_PER_CHARACTER * len(key)
    if bits < MIN_SECRET_KEY_ENTROPY_BITS:
        return (
            f"has about {bits:.0f} bits of entropy (repeated or few distinct characters); "
            f"it needs {MIN_SECRET_KEY_ENTROPY_BITS}"
        )
    steps = sum(abs(ord(a) - ord(b)) <= 1 for a, b in pairwise(key))
    if steps > MAX_SECRET_KEY_STEP_SHARE * (len(key) - 1):
        return "is mostly runs of repeated or consecutive characters"
    if PASSPHRASE_KEY.fullmatch(key):
        words = len(PASSPHRASE_WORD.findall(key))
        bits = words * BITS_PER_PASSPHRASE_WORD
        if bits < MIN_SECRET_KEY_ENTROPY_BITS:
            return (
                f"is words ({words}), about {bits:.0f} bits if drawn at random; it needs "
                f"{MIN_SECRET_KEY_ENTROPY_BITS}"
            )
    return None


def _is_digest_of_common_secret(key: str) -> bool:
    """Hashes each candidate once, only for a hex key of a digest's length, at start-up:
    about 0.2 s for the 111,711 common passwords (sha512: 0.3 s)."""
    algorithm = HEX_DIGESTS[len(key)]
    key = key.lower()
    secrets_ = [*EXAMPLE_PASSWORDS, *SECRET_KEY_PLACEHOLDERS, *COMMON_SECRETS]
    # `echo secret | sha256sum` hashes the line with its newline.
    texts = [text + end for text in secrets_ for end in ("", "\n")]
    return any(
        hashlib.new(algorithm, text.encode()).hexdigest() == key
        for text in (*texts, *common_passwords())
    )


GITHUB_PRESET = "github"
# A letter first: /users/me/identities/{slug} (link) and /users/me/identities/{id}
# (unlink) must never match the same path.
SSO_SLUG = r"^[a-z][a-z0-9-]{0,31}$"
OIDC_DEFAULT_SCOPES = ("openid", "email", "profile")
GITHUB_DEFAULT_SCOPES = ("read:user", "user:email")


class SsoProviderSettings(BaseModel):
    """One sign-in provider of OIDC_PROVIDERS: an OpenID Connect provider found from its
    issuer's discovery document, or GitHub's plain OAuth 2.0 (`preset: "github"`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slug: str = Field(pattern=SSO_SLUG)  # in the paths: /auth/sso/{slug}/...
    name: str = Field(min_length=1, max_length=64)  # what the sign-in button says
    preset: Literal["oidc", "github"] = "oidc"
    issuer: str | None = None  # OpenID Connect: the discovery document's issuer
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    scopes: tuple[str, ...] | None = None  # default: openid email profile (GitHub: its own)
    # A claim naming the user's groups or roles (a string or a list), and which of its
    # values makes a just-in-time account an admin or a user; first match wins, admin first.
    roles_claim: str | None = None
    roles: dict[str, Literal["admin", "user"]] = {}
    # Take the provider's emails as verified when it says nothing of it (Entra ID sends
    # no email_verified); an explicit false still refuses. Only for a provider whose
    # directory your organisation runs.
    trust_email: bool = False
    # GitHub's endpoints; tests point them at a local stand-in.
    authorize_url: str = "https://github.com/login/oauth/authorize"
    token_url: str = "https://github.com/login/oauth/access_token"  # noqa: S105
    api_url: str = "https://api.github.com"

    @model_validator(mode="after")
    def check_preset(self) -> "SsoProviderSettings":
        if self.preset == "oidc":
            if not self.issuer or not self.issuer.startswith(("https://", "http://")):
                raise ValueError(f"{self.slug}: an OpenID Connect provider needs an issuer URL")
        elif self.issuer is not None:
            raise ValueError(f"{self.slug}: the github preset takes no issuer")
        return self

    @property
    def scope(self) -> str:
        if self.scopes is not None:
            return " ".join(self.scopes)
        return " ".join(
            GITHUB_DEFAULT_SCOPES if self.preset == GITHUB_PRESET else OIDC_DEFAULT_SCOPES
        )


def _split_domains(value: object) -> object:
    if isinstance(value, str):
        return [domain.strip().lower() for domain in value.split(",") if domain.strip()]
    return value


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
    # without a refresh (see backend/auth/sessions.py).
    SESSION_MAX_DAYS: int = Field(default=30, ge=1)
    SESSION_IDLE_DAYS: int = Field(default=14, ge=1)
    # How recent a login or POST /auth/reauthenticate must be for the routes that ask
    # for one (OWASP ASVS 3.7.1). Five minutes: enough to finish one task in a form.
    REAUTHENTICATION_WINDOW_SECONDS: int = Field(default=300, ge=30, le=3600)
    # How long an admin's impersonation session lasts, absolutely (a refresh never
    # extends it). At most an hour: support looks at a problem, it does not live there.
    IMPERSONATION_MINUTES: int = Field(default=60, ge=1, le=60)
    # Who must have a second factor: nobody, admins, or everyone. Without one, a login
    # gets a session that can only enrol one (docs/mfa.md).
    MFA_REQUIRED: Literal["off", "admins", "all"] = "off"
    # Sign-ins through an identity provider (OIDC_PROVIDERS) skip the second factor and
    # MFA_REQUIRED's restriction: for a company provider that enforces its own.
    MFA_EXEMPT_SSO: bool = False
    # What the TOTP secrets are encrypted with (through HKDF): this, or SECRET_KEY when
    # unset. The old values, comma-separated, still decrypt (rotation: docs/mfa.md).
    MFA_ENCRYPTION_KEY: SecretStr | None = None
    MFA_ENCRYPTION_KEYS_OLD: Annotated[list[SecretStr], NoDecode] = []
    # Sign-in events older than this are deleted by `backend purge`.
    AUTH_EVENTS_RETENTION_DAYS: int = Field(default=90, ge=1, le=36500)
    # NoDecode: a plain comma list, not the JSON pydantic-settings expects for lists.
    CORS_ORIGINS: Annotated[list[str], NoDecode] = []

    # Both checked against the account settings below, before the app applies them.
    FIRST_ADMIN_EMAIL: str | None = None
    FIRST_ADMIN_PASSWORD: str | None = None
    # In characters (code points). NIST SP 800-63B's floor is 8; ASVS 2.1.1 asks for 12.
    PASSWORD_MIN_LENGTH: int = Field(
        default=DEFAULT_PASSWORD_MIN_LENGTH, ge=PASSWORD_MIN_LENGTH_FLOOR, le=64
    )
    # Non-ASCII emails (Unicode local parts and domain names). Off, every letter is ASCII
    # and cannot come from another script; on, look-alikes are still refused (TR39).
    ALLOW_INTERNATIONAL_EMAILS: bool = False
    REGISTRATION_ENABLED: bool = True
    # Who may read other accounts: any signed-in user (the seed's contract), or admins
    # only, a plain user then seeing just their own (internal deployments).
    USERS_DIRECTORY: Literal["all", "admins"] = "all"
    # The most records one list request returns, in every dialect (page sizes, ranges,
    # id lists).
    MAX_PER_PAGE: int = Field(default=DEFAULT_MAX_PER_PAGE, ge=1, le=MAX_PER_PAGE_CEILING)
    RATE_LIMIT_ENABLED: bool = True
    # limits notation, "N/second|minute|hour|day": see the README for why these values.
    RATE_LIMIT_LOGIN: str = "10/minute"
    RATE_LIMIT_LOGIN_PER_IP: str = "60/minute"
    RATE_LIMIT_REGISTER: str = "20/hour"
    RATE_LIMIT_REFRESH: str = "60/minute"
    RATE_LIMIT_LOGIN_PER_ACCOUNT: str = "100/hour"  # failed logins, from every address
    # Requests that send mail to an address given by the caller (forgotten password,
    # another verification link): per client address, and per email address as sent.
    RATE_LIMIT_MAIL_PER_IP: str = "20/hour"
    RATE_LIMIT_MAIL_PER_EMAIL: str = "5/hour"
    RATE_LIMIT_API_KEY: str = "600/minute"  # requests per API key, from every address
    # Wrong second-factor codes per account, from every address. 10/hour leaves a guesser
    # of 6-digit codes (3 valid of a million with the drift) a chance of 1 in 1,400 a day.
    RATE_LIMIT_MFA_PER_ACCOUNT: str = "10/hour"
    REDIS_URL: str | None = None
    # Where rate-limit counters live: `redis` needs REDIS_URL (the default when it is
    # set); `memory` keeps them per process, which production with several workers
    # takes only spelled out (`backend serve` refuses it otherwise).
    RATE_LIMIT_STORAGE: Literal["memory", "redis"] | None = None
    # Proxies whose X-Forwarded-For is believed (addresses or CIDR networks).
    TRUSTED_PROXIES: Annotated[list[IPvAnyNetwork], NoDecode] = []
    MAX_BODY_BYTES: int = Field(default=1024 * 1024, ge=1024)
    REFRESH_REUSE_GRACE_SECONDS: int = Field(default=10, ge=0)
    # How long a worker may answer a token's check from memory (PostgreSQL only; 0: never).
    # A backstop: changes reach every worker's cache at once (see backend/auth/authcache.py).
    AUTH_CACHE_SECONDS: float = Field(default=5.0, ge=0)
    # The auth cache's listener holds one connection for LISTEN, which a pooler in
    # transaction mode cannot carry: a direct URL to PostgreSQL for it (else no cache).
    AUTH_CACHE_LISTEN_URL: str | None = None
    AUTO_MIGRATE: bool | None = None
    # One file, one writer at a time, one host: production takes it only when asked.
    ALLOW_SQLITE_IN_PRODUCTION: bool = False
    # /docs, /redoc and the OpenAPI document: on in local and test, off otherwise.
    DOCS_ENABLED: bool | None = None
    # `backend serve`: on SIGTERM, how long in-flight requests may take to finish.
    SHUTDOWN_GRACE_SECONDS: int = Field(default=20, ge=1)
    # A client that holds a connection without finishing its request is closed, so that
    # idle sockets cannot pile up (backend/http/connections.py). A real client writes its
    # header section at once, so 10 s is many round trips even on a poor mobile link.
    HEADER_READ_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0, le=300)
    # The longest pause between two pieces of a body: Apache's mod_reqtimeout default.
    BODY_READ_TIMEOUT_SECONDS: float = Field(default=20.0, gt=0, le=300)

    BCRYPT_ROUNDS: int = Field(default=12, ge=4, le=31)
    HASH_CONCURRENCY: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 1) // 2), ge=1)
    HASH_QUEUE_LIMIT: int = Field(default=32, ge=0)
    # Admit a password hash only if, at the measured hash rate, it finishes within this.
    LOGIN_MAX_WAIT_SECONDS: float = Field(default=2.0, gt=0)

    DB_POOL_SIZE: int = Field(default=10, ge=1)
    DB_MAX_OVERFLOW: int = Field(default=10, ge=0)
    DB_POOL_RECYCLE_SECONDS: int = Field(default=1800, ge=-1)
    # Off: a round trip before every checkout (8% of a read's time). A connection that a
    # restart dropped fails its next statement instead, SQLAlchemy then discards the
    # whole pool, and that one request gets 503 (tests/test_outage.py).
    DB_POOL_PRE_PING: bool = False
    # DATABASE_URL leads to a pooler in transaction mode (PgBouncer, a cloud's pooler):
    # each transaction may run on another server connection, so nothing may outlive one
    # (prepared statements, settings sent at connect, LISTEN). See docs/deployment.md.
    DB_TRANSACTION_POOLER: bool = False
    # All a request may wait for PostgreSQL, summed over the pool, connecting and its
    # statements, before it gets 503: below a client's usual 10 s timeout. Without it
    # the three limits below would add up.
    DB_REQUEST_BUDGET_SECONDS: float = Field(default=3.0, gt=0)
    # Each defaults to the budget and is capped at it: see the *_timeout_seconds properties.
    DB_POOL_TIMEOUT_SECONDS: float | None = Field(default=None, gt=0)
    DB_CONNECT_TIMEOUT_SECONDS: float | None = Field(default=None, gt=0)
    DB_STATEMENT_TIMEOUT_SECONDS: float | None = Field(default=None, ge=0)  # 0: no limit
    DB_ECHO: bool = False

    # Mail (backend/mail.py). Without SMTP_HOST nothing is sent: in local and test each
    # message is logged with its link; in staging and production the features that send
    # mail are off unless asked for, and asking for one without SMTP_HOST stops start-up.
    SMTP_HOST: str | None = None
    SMTP_PORT: int = Field(default=587, ge=1, le=65535)
    SMTP_USERNAME: str | None = None
    SMTP_PASSWORD: SecretStr | None = None
    # starttls: upgrade a plain connection (port 587); implicit: TLS from the first byte
    # (port 465); none: plain text, for a relay on the same host or network only.
    SMTP_TLS: Literal["none", "starttls", "implicit"] = "starttls"
    # All one message may take, connecting included: a dead or slow server costs a
    # background task this long, never a request.
    SMTP_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0, le=120)
    # The bytes mail waiting for a sender may hold (and 1,000 mails at most), while the
    # server is slow or down: past it, new mail is dropped. A waiting mail holds its
    # recipient, name and link: about 0.5 kB, 1.2 kB with the longest non-ASCII address
    # and name.
    MAIL_QUEUE_MAX_BYTES: int = Field(default=1_000_000, ge=16_384)
    MAIL_FROM: str | None = None
    # Where the links in mail point: the front end that shows the forms.
    PUBLIC_URL: str | None = None
    # None: on where mail can go (SMTP_HOST set, or logged in local and test).
    INVITATIONS_ENABLED: bool | None = None
    PASSWORD_RESET_ENABLED: bool | None = None
    EMAIL_CHANGE_ENABLED: bool | None = None  # POST /users/me/email, which mails a link
    EMAIL_VERIFICATION: Literal["off", "optional", "required"] = "off"
    INVITE_EXPIRE_HOURS: int = Field(default=72, ge=1, le=24 * 30)
    RESET_EXPIRE_MINUTES: int = Field(default=30, ge=5, le=24 * 60)
    VERIFY_EXPIRE_HOURS: int = Field(default=48, ge=1, le=24 * 30)
    EMAIL_CHANGE_EXPIRE_HOURS: int = Field(default=24, ge=1, le=24 * 7)
    # DELETE /users/me: remove the account at once, or schedule it for `backend purge`
    # after the grace days, during which a login keeps it.
    ACCOUNT_DELETION: Literal["immediate", "grace"] = "immediate"
    ACCOUNT_DELETION_GRACE_DAYS: int = Field(default=30, ge=1, le=365)

    # Webhooks (backend/webhooks/). Receivers at loopback, private or link-local
    # addresses: None allows them in local and test only, where receivers run on the
    # same machine; elsewhere an admin's URL must not reach the server's own network.
    WEBHOOK_ALLOW_PRIVATE_ADDRESSES: bool | None = None
    # All one attempt may take, connecting included.
    WEBHOOK_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0, le=60)
    # Seconds before each retry of a failed delivery (Standard Webhooks' schedule: 5 s,
    # 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), each varied by up to a fifth either way.
    WEBHOOK_RETRY_SCHEDULE: str = "5,300,1800,7200,18000,36000,36000"
    # An endpoint whose deliveries have failed, without a success, for this long is
    # disabled (audited) until an admin enables it again.
    WEBHOOK_DISABLE_AFTER_HOURS: float = Field(default=120, gt=0)
    # How often each worker looks for deliveries due (staged by another worker or
    # process, or retries); a commit in the same worker wakes it at once.
    WEBHOOK_POLL_SECONDS: float = Field(default=5.0, gt=0, le=300)

    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # json (one object per line, for collectors) or text; default: text in local only.
    LOG_FORMAT: Literal["json", "text"] | None = None
    METRICS_ENABLED: bool = False
    # Set, /metrics answers only `Authorization: Bearer <METRICS_TOKEN>`; production
    # with metrics on needs it.
    METRICS_TOKEN: SecretStr | None = None
    # The built dashboard, served at /admin: unset, the checkout's clients/admin/dist when
    # it has been built (else no /admin); empty, never served.
    ADMIN_DIR: str | None = None

    # Passkeys (backend/auth/passkeys.py). The relying party is the site a passkey is
    # bound to: the browser refuses it on any other. Unset, RP_ID is PUBLIC_URL's host
    # and the origins PUBLIC_URL's origin (see the webauthn_* properties).
    RP_ID: str | None = None
    RP_NAME: str | None = None  # shown by the authenticator; default PROJECT_NAME
    WEBAUTHN_ORIGINS: Annotated[list[str], NoDecode] = []
    # Signing in with a passkey alone, no password (discoverable credentials).
    PASSKEY_LOGIN: bool = False
    # Sign-in with identity providers (backend/auth/sso.py; docs/sso.md). A JSON list of
    # providers; SSO_ALLOWED_DOMAINS: whose first sign-in creates an account;
    # SSO_ONLY_DOMAINS: who may not use a password at all.
    OIDC_PROVIDERS: Annotated[list[SsoProviderSettings], NoDecode] = []
    SSO_ALLOWED_DOMAINS: Annotated[list[str], NoDecode] = []
    SSO_ONLY_DOMAINS: Annotated[list[str], NoDecode] = []
    SSO_DEFAULT_ROLE: Literal["admin", "user"] = "user"
    # A sign-in must come back from the provider within this (a person types a password,
    # maybe a second factor).
    SSO_FLOW_MINUTES: int = Field(default=10, ge=1, le=60)
    # Each call to a provider (discovery, keys, token, user): a slow one is a 503.
    SSO_HTTP_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0, le=60)
    # The API's public origin, for the callback URL registered with each provider; unset,
    # the origin the request came to.
    SSO_REDIRECT_ORIGIN: str | None = None

    @field_validator("SSO_ALLOWED_DOMAINS", "SSO_ONLY_DOMAINS", mode="before")
    @classmethod
    def split_domains(cls, value: object) -> object:
        return _split_domains(value)

    @field_validator("OIDC_PROVIDERS", mode="before")
    @classmethod
    def parse_providers(cls, value: object) -> object:
        if isinstance(value, str):  # as given to the constructor; the environment's is parsed
            try:
                return json.loads(value) if value.strip() else []
            except json.JSONDecodeError as error:
                raise ValueError(f"is not JSON: {error}") from error
        return value

    @field_validator("OIDC_PROVIDERS")
    @classmethod
    def check_unique_slugs(cls, value: list[SsoProviderSettings]) -> list[SsoProviderSettings]:
        slugs = [provider.slug for provider in value]
        repeated = sorted({slug for slug in slugs if slugs.count(slug) > 1})
        if repeated:
            raise ValueError(f"provider slugs must be unique; repeated: {', '.join(repeated)}")
        return value

    @field_validator("SSO_REDIRECT_ORIGIN")
    @classmethod
    def check_redirect_origin(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("https://", "http://")) or value.rstrip("/").count("/") > 2:
            raise ValueError("must be an origin like https://api.example.com, without a path")
        return value.rstrip("/")

    def sso_provider(self, slug: str) -> SsoProviderSettings | None:
        return next((p for p in self.OIDC_PROVIDERS if p.slug == slug), None)

    def sso_only(self, email: str) -> bool:
        """Whether this email's domain signs in through a provider only."""
        return email.rpartition("@")[2].lower() in self.SSO_ONLY_DOMAINS

    @field_validator("CORS_ORIGINS", mode="before")
    @classmethod
    def split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("WEBAUTHN_ORIGINS", mode="before")
    @classmethod
    def split_webauthn_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("RP_ID", "RP_NAME")
    @classmethod
    def blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("WEBHOOK_RETRY_SCHEDULE")
    @classmethod
    def check_schedule(cls, value: str) -> str:
        try:
            delays = [float(part) for part in value.split(",") if part.strip()]
        except ValueError:
            delays = [-1.0]
        if any(not math.isfinite(delay) or delay <= 0 for delay in delays):
            raise ValueError(
                f"{value!r} is not a comma list of positive numbers of seconds, like 5,300"
            )
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
        "RATE_LIMIT_MAIL_PER_IP",
        "RATE_LIMIT_MAIL_PER_EMAIL",
        "RATE_LIMIT_API_KEY",
        "RATE_LIMIT_MFA_PER_ACCOUNT",
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
        if self.SECRET_KEY:
            weakness = secret_key_weakness(self.SECRET_KEY)
            if weakness:
                raise ValueError(
                    f"SECRET_KEY is too weak: it {weakness}. Generate one with: {HOW_TO_MAKE_A_KEY}"
                )
        elif self.STAGE != "local":
            raise ValueError(
                f"SECRET_KEY must be set when STAGE={self.STAGE} (at least "
                f"{MIN_SECRET_KEY_BYTES} random bytes). Generate one with: {HOW_TO_MAKE_A_KEY}"
            )
        else:
            self.SECRET_KEY = secrets.token_urlsafe(48)
            self._secret_key_generated = True
        if self.AUTO_MIGRATE is None:
            self.AUTO_MIGRATE = self.is_sqlite or self.STAGE == "local"
        if self.DOCS_ENABLED is None:
            self.DOCS_ENABLED = self.STAGE in ("local", "test")
        if self.STAGE == "production" and self.is_sqlite and not self.ALLOW_SQLITE_IN_PRODUCTION:
            raise ValueError(
                "DATABASE_URL is SQLite with STAGE=production: use PostgreSQL, or set "
                "ALLOW_SQLITE_IN_PRODUCTION=true for one small instance on one host"
            )
        if self.RATE_LIMIT_STORAGE == "redis" and not self.REDIS_URL:
            raise ValueError("RATE_LIMIT_STORAGE=redis needs REDIS_URL")
        if self.RATE_LIMIT_STORAGE == "memory" and self.REDIS_URL:
            raise ValueError(
                "RATE_LIMIT_STORAGE=memory and REDIS_URL are both set: unset one (Redis "
                "holds nothing but the rate-limit counters)"
            )
        if self.METRICS_TOKEN is not None:
            weakness = secret_key_weakness(self.METRICS_TOKEN.get_secret_value())
            if weakness:
                raise ValueError(
                    f"METRICS_TOKEN is too weak: it {weakness}. Generate one with: "
                    f"{HOW_TO_MAKE_A_KEY}"
                )
        elif self.STAGE == "production" and self.METRICS_ENABLED:
            raise ValueError(
                "METRICS_ENABLED=true needs METRICS_TOKEN when STAGE=production: metrics "
                "name every route and count failed logins. Generate one with: "
                f"{HOW_TO_MAKE_A_KEY}"
            )
        if self.STAGE == "production" and self.BCRYPT_ROUNDS < PRODUCTION_BCRYPT_ROUNDS:
            raise ValueError(
                f"BCRYPT_ROUNDS must be at least {PRODUCTION_BCRYPT_ROUNDS} when "
                f"STAGE=production (it is {self.BCRYPT_ROUNDS}): lower costs are for tests"
            )
        return self

    @field_validator("ADMIN_DIR")
    @classmethod
    def check_admin_dir(cls, value: str | None) -> str | None:
        if value and not (Path(value) / "index.html").is_file():
            raise ValueError(
                f"{value} has no index.html: build the dashboard ({HOW_TO_BUILD_THE_DASHBOARD}) "
                "or leave ADMIN_DIR unset"
            )
        return value

    @property
    def admin_dir(self) -> Path | None:
        """The folder of the dashboard to serve at /admin, or None for no /admin. Unset,
        a checkout's build folder, built or not yet (/admin then says how to build it)."""
        if self.ADMIN_DIR is not None:
            return Path(self.ADMIN_DIR).resolve() if self.ADMIN_DIR else None
        return DEFAULT_ADMIN_DIR if DEFAULT_ADMIN_DIR.parent.is_dir() else None

    @model_validator(mode="after")
    def check_first_admin(self) -> "Settings":
        if self.FIRST_ADMIN_EMAIL is not None:
            try:
                self.FIRST_ADMIN_EMAIL = normalise_email(
                    self.FIRST_ADMIN_EMAIL, allow_international=self.ALLOW_INTERNATIONAL_EMAILS
                )
            except ValueError as error:
                raise ValueError(f"FIRST_ADMIN_EMAIL: {error}") from error
        if self.FIRST_ADMIN_PASSWORD is not None:
            password = normalise_password(self.FIRST_ADMIN_PASSWORD)
            problem = password_problem(password, min_length=self.PASSWORD_MIN_LENGTH)
            if problem is None and self.FIRST_ADMIN_EMAIL is not None:
                problem = password_email_problem(password, self.FIRST_ADMIN_EMAIL)
            if problem:
                raise ValueError(f"FIRST_ADMIN_PASSWORD: {problem.message}")
            self.FIRST_ADMIN_PASSWORD = password
        return self

    @field_validator("METRICS_TOKEN", "MFA_ENCRYPTION_KEY", mode="before")
    @classmethod
    def empty_token_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("MFA_ENCRYPTION_KEY")
    @classmethod
    def check_mfa_encryption_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            weakness = secret_key_weakness(value.get_secret_value())
            if weakness:
                raise ValueError(
                    f"is too weak: it {weakness}. Generate one with: {HOW_TO_MAKE_A_KEY}"
                )
        return value

    @field_validator("MFA_ENCRYPTION_KEYS_OLD", mode="before")
    @classmethod
    def split_old_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("SMTP_HOST", "SMTP_USERNAME", "MAIL_FROM", "PUBLIC_URL")
    @classmethod
    def empty_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("PUBLIC_URL")
    @classmethod
    def check_public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("https://", "http://")) or "?" in value or "#" in value:
            raise ValueError("must be an http:// or https:// URL without a query or fragment")
        return value.rstrip("/")

    @field_validator("MAIL_FROM")
    @classmethod
    def check_mail_from(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _, address = parseaddr(value)
        if "@" not in address or any(char in value for char in "\r\n"):
            raise ValueError(f"{value!r} is not an address like 'Users API <noreply@example.com>'")
        return value

    @model_validator(mode="after")
    def check_mail(self) -> "Settings":
        if self.SMTP_HOST:
            missing = [name for name in ("MAIL_FROM", "PUBLIC_URL") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"SMTP_HOST is set, so {' and '.join(missing)} must be too")
        if self.SMTP_PASSWORD is not None and self.SMTP_USERNAME is None:
            raise ValueError("SMTP_PASSWORD is set without SMTP_USERNAME")
        can_mail = self.SMTP_HOST is not None or self.STAGE in {"local", "test"}
        if self.INVITATIONS_ENABLED is None:
            self.INVITATIONS_ENABLED = can_mail
        if self.PASSWORD_RESET_ENABLED is None:
            self.PASSWORD_RESET_ENABLED = can_mail
        if self.EMAIL_CHANGE_ENABLED is None:
            self.EMAIL_CHANGE_ENABLED = can_mail
        if not can_mail and self.mail_features:
            raise ValueError(
                f"{', '.join(self.mail_features)} send mail, and STAGE={self.STAGE} needs "
                "SMTP_HOST (with MAIL_FROM and PUBLIC_URL) to send it; set them, or turn "
                "those features off"
            )
        return self

    @model_validator(mode="after")
    def check_webauthn(self) -> "Settings":
        # Checked when passkeys are configured or sign people in. Derived alone, from a
        # PUBLIC_URL that only serves mailed links (an address, plain http), they are
        # left be: passkeys are then refused by browsers, not by start-up.
        configured = self.RP_ID or self.WEBAUTHN_ORIGINS or self.PASSKEY_LOGIN
        problem = webauthn_problem(
            self.webauthn_rp_id,
            self.webauthn_origins,
            rp_id_name="RP_ID" if self.RP_ID else "RP_ID (unset: the host of PUBLIC_URL)",
        )
        if configured and problem is not None:
            raise ValueError(problem)
        return self

    @property
    def webauthn_rp_id(self) -> str:
        """The relying party id passkeys are bound to: RP_ID, else the host of the
        front end (PUBLIC_URL, or the local address)."""
        return self.RP_ID or (urlsplit(self.public_url).hostname or "")

    @property
    def webauthn_origins(self) -> list[str]:
        """The origins a passkey ceremony may come from: WEBAUTHN_ORIGINS, else the
        front end's origin."""
        if self.WEBAUTHN_ORIGINS:
            return self.WEBAUTHN_ORIGINS
        parts = urlsplit(self.public_url)
        return [f"{parts.scheme}://{parts.netloc}"]

    @property
    def webauthn_rp_name(self) -> str:
        return self.RP_NAME or self.PROJECT_NAME

    @property
    def webhook_retry_schedule(self) -> list[float]:
        """The seconds before each retry; empty: no retry."""
        return [float(part) for part in self.WEBHOOK_RETRY_SCHEDULE.split(",") if part.strip()]

    @property
    def webhook_allow_private_addresses(self) -> bool:
        if self.WEBHOOK_ALLOW_PRIVATE_ADDRESSES is None:
            return self.STAGE in {"local", "test"}
        return self.WEBHOOK_ALLOW_PRIVATE_ADDRESSES

    @property
    def mail_features(self) -> list[str]:
        """The settings that turn on a feature that sends mail, as they are named."""
        features = []
        if self.INVITATIONS_ENABLED:
            features.append("INVITATIONS_ENABLED=true")
        if self.PASSWORD_RESET_ENABLED:
            features.append("PASSWORD_RESET_ENABLED=true")
        if self.EMAIL_CHANGE_ENABLED:
            features.append("EMAIL_CHANGE_ENABLED=true")
        if self.EMAIL_VERIFICATION != "off":
            features.append(f"EMAIL_VERIFICATION={self.EMAIL_VERIFICATION}")
        return features

    @property
    def public_url(self) -> str:
        """The links' base: PUBLIC_URL, required with SMTP; locally, where `backend serve`
        serves the dashboard, whose pages open the links, when there is one to serve."""
        if self.PUBLIC_URL:
            return self.PUBLIC_URL
        return f"{LOCAL_URL}{ADMIN_PATH}" if self.admin_dir is not None else LOCAL_URL

    @property
    def account_rules(self) -> AccountRules:
        return AccountRules(
            password_min_length=self.PASSWORD_MIN_LENGTH,
            allow_international_emails=self.ALLOW_INTERNATIONAL_EMAILS,
        )

    _secret_key_generated: bool = PrivateAttr(default=False)

    @property
    def secret_key_generated(self) -> bool:
        """Whether SECRET_KEY is a random one made for this process (STAGE=local only)."""
        return self._secret_key_generated

    def workers_problem(self, workers: int) -> str | None:
        """Why `backend serve --workers N` cannot run with these settings, in one line."""
        if workers <= 1:
            return None
        if self.is_sqlite:
            return "--workers: several workers need PostgreSQL, not SQLite"
        if self.secret_key_generated:
            return (
                "SECRET_KEY: several workers need one set: each would make its own and "
                f"refuse the others' tokens. Generate one with: {HOW_TO_MAKE_A_KEY}"
            )
        if self.STAGE == "production" and self.RATE_LIMIT_STORAGE is None and not self.REDIS_URL:
            return (
                "REDIS_URL: several workers in production share no rate limits without it "
                "(each would count alone); set it, or RATE_LIMIT_STORAGE=memory to accept that"
            )
        return None

    @property
    def log_format(self) -> str:
        return self.LOG_FORMAT or ("text" if self.STAGE == "local" else "json")

    # A limit above the budget could never fire; one set to the old default (5 s) would
    # read as if it still applied. So each is capped at the budget.
    @property
    def pool_timeout_seconds(self) -> float:
        return self._within_budget(self.DB_POOL_TIMEOUT_SECONDS)

    @property
    def connect_timeout_seconds(self) -> float:
        return self._within_budget(self.DB_CONNECT_TIMEOUT_SECONDS)

    @property
    def statement_timeout_seconds(self) -> float:
        """0: PostgreSQL cancels no statement; the budget still ends the request's wait."""
        if self.DB_STATEMENT_TIMEOUT_SECONDS == 0:
            return 0
        return self._within_budget(self.DB_STATEMENT_TIMEOUT_SECONDS)

    @property
    def request_database_budget_seconds(self) -> float | None:
        """None on SQLite: a local file does not freeze, and a cancelled aiosqlite call
        would go on in its thread."""
        return None if self.is_sqlite else self.DB_REQUEST_BUDGET_SECONDS

    def _within_budget(self, limit: float | None) -> float:
        budget = self.DB_REQUEST_BUDGET_SECONDS
        return budget if limit is None else min(limit, budget)

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
