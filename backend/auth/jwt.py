"""Our JWTs: access and refresh tokens of a login session (PyJWT, HS256 only)."""

import hashlib
import uuid
from datetime import datetime, timedelta
from functools import lru_cache

import jwt
from pydantic import ValidationError

from backend.auth.models import TokenClaims, TokenType
from backend.clock import utcnow
from backend.config import Settings
from backend.errors import ProblemCode, UnauthorizedError
from backend.models import User

JWT_ALGORITHM = "HS256"
ACCESS: TokenType = "access"
REFRESH: TokenType = "refresh"
INVALID_OR_EXPIRED = "The token is invalid or has expired."
# A client sends the same access token with every request until it expires, and its
# signature check was 7% of a GET /users/{id} (bench/README.md, Where the time goes).
# ~1 KB each; a token is re-checked in full once it drops out.
VERIFIED_TOKENS_KEPT = 1024


def hash_token_id(jti: str) -> str:
    """What the database keeps of a refresh token: the token itself is never stored."""
    return hashlib.sha256(jti.encode()).hexdigest()


def create_token(
    user: User,
    token_type: TokenType,
    settings: Settings,
    *,
    session_id: str,
    session_expires: datetime,
    impersonator_id: int | None = None,
) -> tuple[str, TokenClaims]:
    """A signed token of the user's session; it never outlives the session."""
    assert user.id is not None
    issued_at = utcnow()
    lifetime = (
        timedelta(minutes=settings.ACCESS_TOKEN_EXPIRE_MINUTES)
        if token_type == ACCESS
        else timedelta(days=settings.REFRESH_TOKEN_EXPIRE_DAYS)
    )
    payload: dict[str, str | int] = {
        "sub": str(user.id),  # RFC 7519: the subject is a string
        "type": token_type,
        "jti": uuid.uuid4().hex,
        "ver": user.token_version,
        "acc": user.account_key,
        "iat": int(issued_at.timestamp()),
        "exp": int(min(issued_at + lifetime, session_expires).timestamp()),
        "sid": session_id,
    }
    if impersonator_id is not None:
        payload["imp"] = impersonator_id
    # Read back as decode_token reads it: a token we issue is one we accept.
    claims = TokenClaims.model_validate(payload)
    return jwt.encode(payload, settings.SECRET_KEY, algorithm=JWT_ALGORITHM), claims


def decode_token(token: str, expected_type: TokenType, settings: Settings) -> TokenClaims:
    try:
        claims = _verified_claims(token, settings.SECRET_KEY)
    except (jwt.InvalidTokenError, ValidationError) as error:
        raise UnauthorizedError(INVALID_OR_EXPIRED, code=ProblemCode.TOKEN_INVALID) from error
    if claims.exp <= utcnow().timestamp():
        raise UnauthorizedError(INVALID_OR_EXPIRED, code=ProblemCode.TOKEN_INVALID)
    if claims.type != expected_type:
        raise UnauthorizedError(
            f"A token of type '{expected_type}' is required here.",
            code=ProblemCode.TOKEN_WRONG_TYPE,
        )
    return claims


# Only tokens whose signature verified are kept (an exception is never cached), so a
# flood of forged tokens costs a full check each and evicts nothing it did not pass.
# Whether the token is still honoured (expiry here, revocation in sessions.check) is
# decided on every use.
@lru_cache(maxsize=VERIFIED_TOKENS_KEPT)
def _verified_claims(token: str, secret_key: str) -> TokenClaims:
    if not token.isascii():
        # A JWT is base64url and dots; PyJWT would fail to encode a lone surrogate.
        raise jwt.DecodeError("a token is ASCII")
    payload = jwt.decode(
        token,
        secret_key,
        algorithms=[JWT_ALGORITHM],
        # Times are checked against the clock every lifetime is measured by (above), not
        # PyJWT's own.
        options={"require": ["exp", "iat", "sub", "jti"], "verify_exp": False, "verify_iat": False},
    )
    return TokenClaims.model_validate(payload)
