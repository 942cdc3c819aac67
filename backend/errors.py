"""Domain errors: what crud, auth and the rate limiter refuse, free of any framework.

Each names the HTTP status it stands for (from the standard library's list) and a
stable `code` that clients switch on, whatever the English of `detail` says; turning
one into a response is backend/http/problems.py's job.
"""

from datetime import UTC, datetime
from enum import StrEnum
from http import HTTPStatus


class ProblemCode(StrEnum):
    """Every `code` a problem+json answer carries. Codes are never renamed or reused:
    add one instead (docs/api.md lists them, and a test checks that it does)."""

    # Requests the API cannot take, whatever the caller.
    VALIDATION_FAILED = "validation_failed"  # 422: `errors` names each field
    NOT_FOUND = "not_found"  # no route matches the path
    METHOD_NOT_ALLOWED = "method_not_allowed"
    BODY_TOO_LARGE = "body_too_large"
    REQUEST_TIMEOUT = "request_timeout"  # 408: the header section or the body stalled
    CORS_REFUSED = "cors_refused"  # a preflight from an origin not in CORS_ORIGINS
    HTTP_ERROR = "http_error"  # any other status the framework answers itself
    # Who calls.
    NOT_AUTHENTICATED = "not_authenticated"
    CREDENTIALS_INVALID = "credentials_invalid"  # the one answer to a wrong email or password
    TOKEN_INVALID = "token_invalid"  # malformed, badly signed or expired
    TOKEN_WRONG_TYPE = "token_wrong_type"  # a refresh token where an access token goes
    TOKEN_REVOKED = "token_revoked"  # a password, role or account change refused it
    SESSION_EXPIRED = "session_expired"  # its lifetime or idle time ran out: log in again
    SESSION_ENDED = "session_ended"  # logged out, ended by an admin, or reused
    REFRESH_TOKEN_INVALID = "refresh_token_invalid"  # unknown or already revoked
    REFRESH_TOKEN_REUSED = "refresh_token_reused"  # the whole session is revoked
    REFRESH_TOKEN_ROTATED = "refresh_token_rotated"  # just rotated by a concurrent request
    REFRESH_COOKIE_MISSING = "refresh_cookie_missing"
    REFRESH_COOKIE_REPEATED = "refresh_cookie_repeated"  # two cookies of that name: which?
    API_KEY_INVALID = "api_key_invalid"  # unknown, expired, revoked, or its owner inactive
    API_KEY_NOT_ALLOWED = "api_key_not_allowed"  # sessions and keys need a login's token
    API_KEY_READ_ONLY = "api_key_read_only"
    ACCOUNT_CHANGED = "account_changed"  # changed while the request was on its way
    ACCOUNT_DEACTIVATED = "account_deactivated"
    BANNED = "banned"  # `banned_until` says when it ends (null: never)
    EMAIL_NOT_VERIFIED = "email_not_verified"
    ADMIN_REQUIRED = "admin_required"
    DIRECTORY_ADMINS_ONLY = "directory_admins_only"  # USERS_DIRECTORY=admins
    CSRF_HEADER_MISSING = "csrf_header_missing"
    ORIGIN_MISSING = "origin_missing"
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    METRICS_TOKEN_INVALID = "metrics_token_invalid"  # /metrics: not the METRICS_TOKEN
    SSO_REQUIRED = "sso_required"  # SSO_ONLY_DOMAINS: sign in with the provider
    IMPERSONATION_FORBIDDEN = "impersonation_forbidden"  # not while an admin acts as you
    MFA_REQUIRED = "mfa_required"  # 401 with mfa_token and methods: POST /auth/mfa/verify
    MFA_TOKEN_INVALID = "mfa_token_invalid"  # unknown, expired, used, or too many wrong codes
    MFA_CODE_INVALID = "mfa_code_invalid"  # wrong, already used, or outside the time window
    MFA_ENROLMENT_REQUIRED = "mfa_enrolment_required"  # MFA_REQUIRED: enrol a factor first
    # What the server offers.
    REGISTRATION_CLOSED = "registration_closed"
    PASSWORD_RESET_DISABLED = "password_reset_disabled"
    INVITATIONS_DISABLED = "invitations_disabled"
    EMAIL_VERIFICATION_DISABLED = "email_verification_disabled"
    PASSKEY_LOGIN_DISABLED = "passkey_login_disabled"  # PASSKEY_LOGIN=false
    EMAIL_CHANGE_DISABLED = "email_change_disabled"
    # Accounts, sessions, keys and links.
    USER_NOT_FOUND = "user_not_found"
    SESSION_NOT_FOUND = "session_not_found"
    API_KEY_NOT_FOUND = "api_key_not_found"
    WEBHOOK_NOT_FOUND = "webhook_not_found"
    EMAIL_TAKEN = "email_taken"
    EMAIL_LOOKALIKE = "email_lookalike"  # renders like another account's email
    PASSWORD_INCORRECT = "password_incorrect"  # the current password, when changing it
    LAST_ADMIN = "last_admin"  # the last active admin cannot be demoted or removed
    CANNOT_DELETE_SELF = "cannot_delete_self"
    INVITATION_ACCEPTED = "invitation_accepted"
    CURRENT_PASSWORD_REQUIRED = "current_password_required"  # one's own, by /users/me/password
    REAUTHENTICATION_REQUIRED = "reauthentication_required"  # prove it again, then retry
    CANNOT_BAN_SELF = "cannot_ban_self"
    NOT_BANNED = "not_banned"  # lifting a ban from an account that has none
    IMPERSONATION_REFUSED = "impersonation_refused"  # an admin, oneself, inactive or banned
    NOT_IMPERSONATING = "not_impersonating"  # stopping from a session of one's own
    MFA_ALREADY_ENABLED = "mfa_already_enabled"  # an authenticator app is on already
    MFA_NOT_ENABLED = "mfa_not_enabled"  # no authenticator app (or no enrolment started)
    VERSION_MISMATCH = "version_mismatch"  # 412: If-Match names another version
    STALE_RECORD = "stale_record"  # a PUT of a record changed since it was read
    LINK_INVALID = "link_invalid"  # unknown, or replaced by a newer link
    LINK_WRONG_PURPOSE = "link_wrong_purpose"
    LINK_USED = "link_used"
    LINK_EXPIRED = "link_expired"
    LINK_ADDRESS_CHANGED = "link_address_changed"  # mailed to an address the account left
    # Passkeys: the ceremonies' refusals (400 registering, 401 signing in).
    PASSKEY_NOT_FOUND = "passkey_not_found"
    PASSKEY_TAKEN = "passkey_taken"  # this credential is registered already
    PASSKEY_CHALLENGE_INVALID = "passkey_challenge_invalid"  # unknown, used, or another's
    PASSKEY_CHALLENGE_EXPIRED = "passkey_challenge_expired"
    PASSKEY_ORIGIN_MISMATCH = "passkey_origin_mismatch"  # not one of WEBAUTHN_ORIGINS
    PASSKEY_RP_ID_MISMATCH = "passkey_rp_id_mismatch"  # made for another RP_ID
    PASSKEY_USER_NOT_VERIFIED = "passkey_user_not_verified"  # no PIN or biometric check
    PASSKEY_UNKNOWN = "passkey_unknown"  # no such credential (of this user)
    PASSKEY_COUNTER_REGRESSED = "passkey_counter_regressed"  # a cloned authenticator?
    PASSKEY_INVALID = "passkey_invalid"  # malformed, or its signature or attestation fails
    # Sign-in with identity providers.
    SSO_PROVIDER_UNKNOWN = "sso_provider_unknown"
    SSO_STATE_INVALID = "sso_state_invalid"  # unknown, used, or not this browser's
    SSO_FLOW_EXPIRED = "sso_flow_expired"  # not back from the provider in SSO_FLOW_MINUTES
    SSO_DENIED = "sso_denied"  # the provider answered with an error (declined, ...)
    SSO_CODE_REJECTED = "sso_code_rejected"  # the provider refused the authorization code
    SSO_ID_TOKEN_INVALID = "sso_id_token_invalid"  # signature, issuer, audience, nonce...
    SSO_EMAIL_NOT_VERIFIED = "sso_email_not_verified"  # the provider has not verified it
    SSO_DOMAIN_NOT_ALLOWED = "sso_domain_not_allowed"  # not in SSO_ALLOWED_DOMAINS
    SSO_LINK_REQUIRED = "sso_link_required"  # log in, then link from My account
    SSO_EXCHANGE_CODE_INVALID = "sso_exchange_code_invalid"  # unknown, used or expired
    IDENTITY_NOT_FOUND = "identity_not_found"
    IDENTITY_TAKEN = "identity_taken"  # linked to another account
    LAST_SIGN_IN_METHOD = "last_sign_in_method"  # no password, and no other identity
    # Try again later (with Retry-After).
    RATE_LIMITED = "rate_limited"
    SERVER_BUSY = "server_busy"  # too many password hashes waiting
    DATABASE_UNAVAILABLE = "database_unavailable"
    DATABASE_NOT_MIGRATED = "database_not_migrated"  # run `backend migrate`
    SHUTTING_DOWN = "shutting_down"
    NOT_READY = "not_ready"  # /health/ready: a dependency does not answer
    SSO_PROVIDER_UNAVAILABLE = "sso_provider_unavailable"  # 503: it does not answer in time
    SSO_PROVIDER_ERROR = "sso_provider_error"  # 502: it answered what cannot be used
    INTERNAL_ERROR = "internal_error"  # a bug: quote the request id


class DomainError(Exception):
    """An expected failure, answered with `status_code`, `detail` and `code`, and the
    problem's extension members, if any (RFC 9457, 3.2)."""

    status_code = HTTPStatus.BAD_REQUEST

    def __init__(
        self, detail: str, *, code: ProblemCode, extensions: dict[str, object] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.extensions = extensions or {}


class BadRequestError(DomainError):
    status_code = HTTPStatus.BAD_REQUEST


class NotFoundError(DomainError):
    status_code = HTTPStatus.NOT_FOUND


class ConflictError(DomainError):
    status_code = HTTPStatus.CONFLICT


class FieldInvalidError(DomainError):
    """A field its request's own validation cannot judge: it needs the account it is for
    (a password against the stored email). Answered as a 422 like any other field's."""

    status_code = HTTPStatus.UNPROCESSABLE_ENTITY

    def __init__(self, field: str, message: str, *, field_code: str) -> None:
        super().__init__(f"Invalid input: {field}.", code=ProblemCode.VALIDATION_FAILED)
        self.field = field
        self.message = message
        self.field_code = field_code


class UserGoneError(NotFoundError):
    def __init__(self) -> None:
        super().__init__("The user was deleted meanwhile.", code=ProblemCode.USER_NOT_FOUND)


class PreconditionFailedError(DomainError):
    status_code = HTTPStatus.PRECONDITION_FAILED

    def __init__(self) -> None:
        super().__init__(
            "The user changed since the version you sent: fetch it again and retry.",
            code=ProblemCode.VERSION_MISMATCH,
        )


class EmailTakenError(ConflictError):
    def __init__(self) -> None:
        super().__init__("A user with this email already exists.", code=ProblemCode.EMAIL_TAKEN)


class EmailLookalikeError(EmailTakenError):
    """Taken in effect: another account's email renders the same (Unicode TR39)."""

    def __init__(self) -> None:
        ConflictError.__init__(
            self,
            "A user with an email that looks the same (other letters that render alike) "
            "already exists.",
            code=ProblemCode.EMAIL_LOOKALIKE,
        )


class UnauthorizedError(DomainError):
    """No valid credentials; answered with a Bearer challenge."""

    status_code = HTTPStatus.UNAUTHORIZED


class ForbiddenError(DomainError):
    status_code = HTTPStatus.FORBIDDEN


class BannedError(ForbiddenError):
    """The account is banned: until `until`, or for good when None."""

    def __init__(self, until: datetime | None) -> None:
        when = f"until {_instant(until)}" if until is not None else "with no end date"
        # banned_until always there, null for a permanent ban, so a client need not guess.
        super().__init__(
            f"This account is banned {when}.",
            code=ProblemCode.BANNED,
            extensions={"banned_until": _instant(until) if until is not None else None},
        )
        self.until = until


def _instant(moment: datetime) -> str:
    """As the API writes every time: ISO 8601 in UTC, with Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class RetryLaterError(DomainError):
    """A refusal that passes: the client may retry after `retry_after_seconds`."""

    def __init__(self, detail: str, *, code: ProblemCode, retry_after_seconds: int) -> None:
        super().__init__(detail, code=code)
        self.retry_after_seconds = retry_after_seconds


class BadGatewayError(DomainError):
    """Another server this one relies on (an identity provider) answered badly."""

    status_code = HTTPStatus.BAD_GATEWAY


class ServiceUnavailableError(RetryLaterError):
    status_code = HTTPStatus.SERVICE_UNAVAILABLE


class TooManyRequestsError(RetryLaterError):
    status_code = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(
        self, detail: str, *, code: ProblemCode, retry_after_seconds: int, limit: str
    ) -> None:
        super().__init__(detail, code=code, retry_after_seconds=retry_after_seconds)
        self.limit = limit  # which one: login, register, refresh, ...
