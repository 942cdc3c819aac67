"""Sign-in with identity providers (backend/auth/sso.py): the trip to the provider and
back, the one-time code's exchange, and the identities of My account and of an admin's
user page."""

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Cookie, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse, RedirectResponse

from backend.auth import sso
from backend.auth.deps import AdminUser, LoginClient, NotImpersonating, SessionUser
from backend.auth.mfa_models import LoginProblem
from backend.auth.models import (
    AuthorizationUrl,
    IdentityPublic,
    LoginResponse,
    SsoExchange,
    SsoProviderPublic,
)
from backend.auth.transport import TokenDeliveryDep
from backend.config import SSO_SLUG, Settings
from backend.errors import FieldInvalidError
from backend.http.deps import DbSession, RuntimeDep, UserId
from backend.http.parsing import INT32_MAX
from backend.http.problems import problem_responses

STATE_COOKIE = "sso_state"
RETURN_TO_MAX_CHARS = 2048
ReturnTo = Annotated[
    str | None,
    Query(
        max_length=RETURN_TO_MAX_CHARS,
        description="Where the browser lands after the provider: a path of this server, or "
        "a URL on an origin of CORS_ORIGINS or PUBLIC_URL. Default: PUBLIC_URL. A sign-in "
        "lands with `?sso_code=...` to trade at POST /auth/sso/exchange, a link with "
        "`?sso_linked=<provider>`.",
    ),
]
IdentityId = Annotated[int, Path(ge=1, le=INT32_MAX, description="A linked identity's id")]

router = APIRouter(tags=["sso"], responses=problem_responses(400, 404, 422, 502, 503))


def _redirect_uri(request: Request, settings: Settings, slug: str) -> str:
    """The callback URL to register with each provider."""
    url = str(request.url_for("sso-callback", provider=slug))
    if settings.SSO_REDIRECT_ORIGIN is None:
        return url
    parts = urlsplit(url)
    return settings.SSO_REDIRECT_ORIGIN + parts.path


def _return_to(value: str | None, request: Request, settings: Settings) -> str:
    if value is None:
        return settings.public_url
    parts = urlsplit(value)
    if not parts.scheme and not parts.netloc:
        if value.startswith("/") and not value.startswith("//") and "\\" not in value:
            return value
    else:
        origin = f"{parts.scheme}://{parts.netloc}"
        public = urlsplit(settings.public_url)
        allowed = {*settings.CORS_ORIGINS, f"{public.scheme}://{public.netloc}"}
        allowed.add(f"{request.url.scheme}://{request.url.netloc}")
        if origin in allowed and "\\" not in value:
            return value
    raise FieldInvalidError(
        "return_to",
        "must be a path of this server, or a URL on an origin of CORS_ORIGINS or PUBLIC_URL",
        field_code="return_to_not_allowed",
    )


def _set_state_cookie(response: Response, state: str, settings: Settings) -> None:
    # Lax, not Strict: it must come back with the provider's redirect, a navigation from
    # another site. Only the sign-in paths see it.
    response.set_cookie(
        STATE_COOKIE,
        state,
        max_age=settings.SSO_FLOW_MINUTES * 60,
        path=f"{settings.API_V1_PREFIX}/auth/sso",
        httponly=True,
        samesite="lax",
        secure=settings.STAGE != "local",
    )


@router.get("/auth/sso/providers", name="sso-providers", response_model=list[SsoProviderPublic])
async def list_providers(request: Request, runtime: RuntimeDep) -> list[SsoProviderPublic]:
    """The providers a sign-in page offers, in the order of OIDC_PROVIDERS."""
    return [
        SsoProviderPublic(
            slug=provider.slug,
            name=provider.name,
            authorize_url=request.url_for("sso-authorize", provider=provider.slug).path,
        )
        for provider in runtime.settings.OIDC_PROVIDERS
    ]


@router.get(
    "/auth/sso/{provider}/authorize",
    name="sso-authorize",
    status_code=status.HTTP_302_FOUND,
    response_class=RedirectResponse,
    responses={200: {"model": AuthorizationUrl, "description": "With `format=json`"}},
)
async def authorize(
    provider: str,
    request: Request,
    db: DbSession,
    runtime: RuntimeDep,
    return_to: ReturnTo = None,
    format: Annotated[
        str | None,
        Query(pattern="^json$", description="`json`: the URL in a JSON body, for SPAs"),
    ] = None,
) -> Response:
    """Start a sign-in: a redirect to the provider (or, with `format=json`, its URL), and
    a cookie that binds the sign-in to this browser for SSO_FLOW_MINUTES."""
    settings = runtime.settings
    started = await sso.begin(
        db,
        providers=runtime.sso,
        settings=settings,
        slug=provider,
        redirect_uri=_redirect_uri(request, settings, provider),
        return_to=_return_to(return_to, request, settings),
    )
    response: Response
    if format == "json":
        body = AuthorizationUrl(authorization_url=started.authorization_url)
        response = JSONResponse(body.model_dump())
    else:
        response = RedirectResponse(started.authorization_url, status_code=status.HTTP_302_FOUND)
    _set_state_cookie(response, started.state, settings)
    return response


@router.get(
    "/auth/sso/{provider}/callback",
    name="sso-callback",
    status_code=status.HTTP_303_SEE_OTHER,
    response_class=RedirectResponse,
    responses=problem_responses(403, 409),
)
async def callback(
    provider: str,
    request: Request,
    db: DbSession,
    runtime: RuntimeDep,
    state: Annotated[str | None, Query(max_length=256)] = None,
    code: Annotated[str | None, Query(max_length=4096)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
    sso_state: Annotated[str | None, Cookie(include_in_schema=False)] = None,
) -> Response:
    """Where the provider sends the browser back: the ID token is checked, and the browser
    goes on to `return_to` with a one-time `sso_code` (a sign-in) or `sso_linked`."""
    settings = runtime.settings
    finished = await sso.finish(
        db,
        providers=runtime.sso,
        settings=settings,
        slug=provider,
        state=state,
        browser_state=sso_state,
        code=code,
        error=error,
        redirect_uri=_redirect_uri(request, settings, provider),
    )
    query = f"sso_code={finished.code}" if finished.code else f"sso_linked={provider}"
    separator = "&" if "?" in finished.return_to else "?"
    response = RedirectResponse(
        f"{finished.return_to}{separator}{query}", status_code=status.HTTP_303_SEE_OTHER
    )
    response.delete_cookie(STATE_COOKIE, path=f"{settings.API_V1_PREFIX}/auth/sso")
    return response


@router.post(
    "/auth/sso/exchange",
    name="sso-exchange",
    response_model=LoginResponse,
    responses={
        **problem_responses(403),
        401: {"model": LoginProblem, "description": "mfa_required (see MFA_EXEMPT_SSO)"},
    },
)
async def exchange(
    body: SsoExchange,
    db: DbSession,
    runtime: RuntimeDep,
    client: LoginClient,
    delivery: TokenDeliveryDep,
) -> LoginResponse:
    """Trade a sign-in's one-time code (once, within a minute) for a login session, like
    POST /auth/login's answer; `transport=cookie` for the dashboard."""
    tokens = await sso.exchange(db, code=body.code, settings=runtime.settings, client=client)
    return delivery.send(tokens)


@router.get(
    "/users/me/identities",
    name="sso-identities-mine",
    response_model=list[IdentityPublic],
    responses=problem_responses(401, 403),
)
async def list_my_identities(user: SessionUser, db: DbSession) -> object:
    """The providers linked to my account."""
    assert user.id is not None
    return await sso.list_identities(db, user_id=user.id)


# One path template for link (a provider's slug) and unlink (an identity's id), so that
# every path under it allows both methods and each handler judges its own value: two
# templates there crossed (a slug route answered 405 for an id's path, and the other way).
@router.post(
    "/users/me/identities/{identity}",
    name="sso-identities-link",
    dependencies=[NotImpersonating],
    response_model=AuthorizationUrl,
    responses=problem_responses(401, 403),
)
async def link_identity(
    identity: Annotated[
        str, Path(pattern=SSO_SLUG, max_length=32, description="The provider's slug")
    ],
    request: Request,
    user: SessionUser,
    db: DbSession,
    runtime: RuntimeDep,
    return_to: ReturnTo = None,
) -> Response:
    """Start linking a provider to my account: send the browser to `authorization_url`
    (this answer sets the cookie that binds the trip to it: call with credentials)."""
    provider = identity
    settings = runtime.settings
    started = await sso.begin(
        db,
        providers=runtime.sso,
        settings=settings,
        slug=provider,
        redirect_uri=_redirect_uri(request, settings, provider),
        return_to=_return_to(return_to, request, settings),
        user_id=user.id,
    )
    response = JSONResponse(
        AuthorizationUrl(authorization_url=started.authorization_url).model_dump()
    )
    _set_state_cookie(response, started.state, settings)
    return response


@router.delete(
    "/users/me/identities/{identity}",
    name="sso-identities-unlink-mine",
    dependencies=[NotImpersonating],
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 409),
)
async def unlink_my_identity(identity: IdentityId, user: SessionUser, db: DbSession) -> None:
    """Unlink a provider from my account; never the last way to sign in (409)."""
    assert user.id is not None
    await sso.unlink(db, user_id=user.id, identity_id=identity, actor_id=user.id)


@router.get(
    "/users/{user_id:digits}/identities",
    name="sso-identities-list",
    response_model=list[IdentityPublic],
    responses=problem_responses(401, 403),
)
async def list_identities(user_id: UserId, admin: AdminUser, db: DbSession) -> object:
    """A user's linked providers (admin only)."""
    return await sso.list_identities(db, user_id=user_id)


@router.delete(
    "/users/{user_id:digits}/identities/{identity_id:digits}",
    name="sso-identities-unlink",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 409),
)
async def unlink_identity(
    user_id: UserId, identity_id: IdentityId, admin: AdminUser, db: DbSession
) -> None:
    """Unlink a provider from a user (admin only, audited); never their last way to sign
    in (409)."""
    assert admin.id is not None
    await sso.unlink(db, user_id=user_id, identity_id=identity_id, actor_id=admin.id)
