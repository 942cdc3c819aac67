"""Identity providers' protocols, no database: OpenID Connect (the discovery document,
the authorization code with PKCE, the ID token checked against the provider's keys) and
GitHub's plain OAuth 2.0, as a preset.

authlib builds the authorization URL (state, nonce, the S256 PKCE challenge) and trades
the code for tokens over httpx2; its JOSE library, joserfc, checks the ID token's
signature against the provider's JWKS, and authlib's CodeIDToken its claims (iss, aud,
exp, iat, nonce, azp, at_hash). A provider that does not answer in time is a 503
(SSO_PROVIDER_UNAVAILABLE), one that answers what cannot be used a 502
(SSO_PROVIDER_ERROR), never a 500.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from backend.clock import utcnow
from backend.config import GITHUB_PRESET, Settings, SsoProviderSettings
from backend.errors import BadGatewayError, BadRequestError, ProblemCode, ServiceUnavailableError

# The discovery document is fetched again after this long; keys whenever an ID token
# names a key id the cached set lacks (a rotation).
DISCOVERY_SECONDS = 3600
RETRY_AFTER_SECONDS = 30
# Asymmetric only: an HS256 ID token would be signed with the client secret we hold too.
ID_TOKEN_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
GITHUB_API_VERSION = "2022-11-28"


@dataclass(frozen=True)
class ProviderIdentity:
    """Who the provider says signed in."""

    subject: str
    email: str | None
    email_verified: bool
    name: str | None
    claims: dict[str, Any]


def unavailable(name: str, error: Exception) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        f"The sign-in provider {name} does not answer ({type(error).__name__}); try again later.",
        code=ProblemCode.SSO_PROVIDER_UNAVAILABLE,
        retry_after_seconds=RETRY_AFTER_SECONDS,
    )


def bad_answer(name: str, what: str) -> BadGatewayError:
    return BadGatewayError(
        f"The sign-in provider {name} answered what cannot be used: {what}.",
        code=ProblemCode.SSO_PROVIDER_ERROR,
    )


def invalid_id_token(name: str, why: str) -> BadGatewayError:
    return BadGatewayError(
        f"The ID token from {name} is not valid: {why}.", code=ProblemCode.SSO_ID_TOKEN_INVALID
    )


@contextmanager
def _calling(provider: SsoProviderSettings) -> Iterator[None]:
    """HTTP failures of a call to the provider as the problems they stand for."""
    try:
        yield
    except (httpx2.TimeoutException, httpx2.TransportError) as error:
        raise unavailable(provider.name, error) from error
    except httpx2.HTTPStatusError as error:
        status = error.response.status_code
        if status in {502, 503, 504}:
            raise unavailable(provider.name, error) from error
        raise bad_answer(provider.name, f"HTTP {status} from {error.request.url}") from error
    except ValueError as error:  # not JSON, or not the JSON expected
        raise bad_answer(provider.name, str(error)) from error


def _json_object(response: httpx2.Response) -> dict[str, Any]:
    response.raise_for_status()
    body = response.json()
    if not isinstance(body, dict):
        raise ValueError(f"{response.request.url} answered JSON that is not an object")
    return body


class Providers:
    """The configured providers, with each one's discovery document and keys as fetched
    (per process: fetched when first needed)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._metadata: dict[str, tuple[float, dict[str, Any]]] = {}
        self._keys: dict[str, KeySet] = {}

    def _client(self, provider: SsoProviderSettings, **kwargs: Any) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=provider.client_id,
            client_secret=provider.client_secret.get_secret_value(),
            scope=provider.scope,
            code_challenge_method="S256",
            timeout=self._settings.SSO_HTTP_TIMEOUT_SECONDS,
            **kwargs,
        )

    async def _get_json(
        self, provider: SsoProviderSettings, url: str, **kwargs: Any
    ) -> dict[str, Any]:
        with _calling(provider):
            async with httpx2.AsyncClient(timeout=self._settings.SSO_HTTP_TIMEOUT_SECONDS) as http:
                return _json_object(await http.get(url, **kwargs))

    async def metadata(self, provider: SsoProviderSettings) -> dict[str, Any]:
        """The provider's discovery document (OpenID Connect Discovery 1.0, 4)."""
        cached = self._metadata.get(provider.slug)
        if cached is not None and time.monotonic() - cached[0] < DISCOVERY_SECONDS:
            return cached[1]
        assert provider.issuer is not None
        url = provider.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(provider, url)
        # 4.3: the issuer it names is the one configured, exactly.
        if document.get("issuer") != provider.issuer:
            raise bad_answer(
                provider.name,
                f"its discovery document names the issuer "
                f"{document.get('issuer')!r}, not {provider.issuer!r}",
            )
        for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(document.get(field), str):
                raise bad_answer(provider.name, f"its discovery document has no {field}")
        self._metadata[provider.slug] = (time.monotonic(), document)
        return document

    async def _key_set(self, provider: SsoProviderSettings, *, refresh: bool) -> KeySet:
        keys = self._keys.get(provider.slug)
        if keys is None or refresh:
            metadata = await self.metadata(provider)
            document = await self._get_json(provider, metadata["jwks_uri"])
            try:
                keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
            except (JoseError, ValueError, TypeError, KeyError) as error:
                raise bad_answer(provider.name, f"its JWKS cannot be read ({error})") from error
            self._keys[provider.slug] = keys
        return keys

    async def authorization_url(
        self,
        provider: SsoProviderSettings,
        *,
        redirect_uri: str,
        state: str,
        nonce: str,
        code_verifier: str,
    ) -> str:
        if provider.preset == GITHUB_PRESET:
            endpoint = provider.authorize_url
            extra: dict[str, str] = {}
        else:
            endpoint = (await self.metadata(provider))["authorization_endpoint"]
            extra = {"nonce": nonce}
        async with self._client(provider, redirect_uri=redirect_uri) as client:
            url, _ = client.create_authorization_url(
                endpoint, state=state, code_verifier=code_verifier, **extra
            )
        return str(url)

    async def identity(
        self,
        provider: SsoProviderSettings,
        *,
        code: str,
        redirect_uri: str,
        code_verifier: str,
        nonce: str,
    ) -> ProviderIdentity:
        """Trade the authorization code for tokens and say who signed in."""
        if provider.preset == GITHUB_PRESET:
            token = await self._fetch_token(
                provider, provider.token_url, code, redirect_uri, code_verifier
            )
            return await self._github_identity(provider, token)
        metadata = await self.metadata(provider)
        token = await self._fetch_token(
            provider, metadata["token_endpoint"], code, redirect_uri, code_verifier
        )
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise invalid_id_token(provider.name, "the token response has none")
        claims = await self._check_id_token(provider, id_token, token, nonce)
        if not claims.get("email") and isinstance(metadata.get("userinfo_endpoint"), str):
            claims = {**(await self._userinfo(provider, metadata, token)), **claims}
        return ProviderIdentity(
            subject=str(claims["sub"]),
            email=_text(claims.get("email")),
            # Only a JSON true; none at all (Entra ID sends none) only from a provider
            # trusted to have checked its addresses (trust_email).
            email_verified=claims.get("email_verified") is True
            or (provider.trust_email and "email_verified" not in claims),
            name=_text(claims.get("name")),
            claims=claims,
        )

    async def _fetch_token(
        self,
        provider: SsoProviderSettings,
        endpoint: str,
        code: str,
        redirect_uri: str,
        code_verifier: str,
    ) -> dict[str, Any]:
        with _calling(provider):
            async with self._client(provider, redirect_uri=redirect_uri) as client:
                try:
                    token = await client.fetch_token(
                        endpoint,
                        code=code,
                        code_verifier=code_verifier,
                        headers={"Accept": "application/json"},  # GitHub's default is a form
                    )
                except OAuthError as error:
                    # Used, expired, or not this flow's (GitHub: bad_verification_code).
                    if error.error in {"invalid_grant", "bad_verification_code"}:
                        raise BadRequestError(
                            f"{provider.name} refused the sign-in's authorization code "
                            f"({error.description or error.error}): sign in again.",
                            code=ProblemCode.SSO_CODE_REJECTED,
                        ) from error
                    raise bad_answer(
                        provider.name, f"the token endpoint said {error.error}"
                    ) from error
        if not isinstance(token.get("access_token"), str):
            raise bad_answer(provider.name, "the token response has no access_token")
        return dict(token)

    async def _check_id_token(
        self, provider: SsoProviderSettings, id_token: str, token: dict[str, Any], nonce: str
    ) -> dict[str, Any]:
        metadata = await self.metadata(provider)
        offered = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = sorted(ID_TOKEN_ALGORITHMS.intersection(offered))
        keys = await self._key_set(provider, refresh=False)
        try:
            try:
                decoded = jwt.decode(id_token, keys, algorithms=algorithms)
            except InvalidKeyIdError:  # signed with a key published since: a rotation
                keys = await self._key_set(provider, refresh=True)
                decoded = jwt.decode(id_token, keys, algorithms=algorithms)
            claims = CodeIDToken(
                decoded.claims,
                decoded.header,
                options={
                    "iss": {"essential": True, "value": provider.issuer},
                    "aud": {"essential": True, "value": provider.client_id},
                },
                params={
                    "nonce": nonce,
                    "client_id": provider.client_id,
                    "access_token": token["access_token"],
                },
            )
            claims.validate(now=int(utcnow().timestamp()), leeway=60)
        except (JoseError, ValueError) as error:
            raise invalid_id_token(provider.name, f"{type(error).__name__}: {error}") from error
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise invalid_id_token(provider.name, "it has no subject")
        return dict(claims)

    async def _userinfo(
        self, provider: SsoProviderSettings, metadata: dict[str, Any], token: dict[str, Any]
    ) -> dict[str, Any]:
        info = await self._get_json(
            provider,
            metadata["userinfo_endpoint"],
            headers={"Authorization": f"Bearer {token['access_token']}"},
        )
        return {key: value for key, value in info.items() if key != "sub"}

    async def _github_identity(
        self, provider: SsoProviderSettings, token: dict[str, Any]
    ) -> ProviderIdentity:
        headers = {
            "Authorization": f"Bearer {token['access_token']}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": GITHUB_API_VERSION,
        }
        api = provider.api_url.rstrip("/")
        user = await self._get_json(provider, f"{api}/user", headers=headers)
        emails = await self._get_json_list(provider, f"{api}/user/emails", headers=headers)
        if not isinstance(user.get("id"), int):
            raise bad_answer(provider.name, "/user has no numeric id")
        primary = next(
            (e for e in emails if isinstance(e, dict) and e.get("primary") is True), None
        )
        return ProviderIdentity(
            subject=str(user["id"]),
            email=_text(primary.get("email")) if primary else None,
            email_verified=bool(primary and primary.get("verified") is True),
            name=_text(user.get("name")) or _text(user.get("login")),
            claims=user,
        )

    async def _get_json_list(
        self, provider: SsoProviderSettings, url: str, **kwargs: Any
    ) -> list[Any]:
        with _calling(provider):
            async with httpx2.AsyncClient(timeout=self._settings.SSO_HTTP_TIMEOUT_SECONDS) as http:
                response = await http.get(url, **kwargs)
                response.raise_for_status()
                body = response.json()
        if not isinstance(body, list):
            raise bad_answer(provider.name, f"{url} is not a JSON list")
        return body


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
