"""How a refresh token travels: in the JSON body (`bearer`, the default) or, for browser
apps, in an HttpOnly cookie that the page's JavaScript cannot read (`?transport=cookie`).

A browser attaches the cookie to every request to the auth paths, whoever's page makes
it, so a request that relies on it must show it comes from one of our own front ends:
its `Origin` is listed in CORS_ORIGINS, and it carries `X-Requested-With`, which a form
or a plain link cannot send and which another origin cannot add without a CORS
preflight that is refused. The app's own origin counts as listed: the dashboard it serves
at /admin is one of our front ends. Cookie logins and registrations are held to the same rules,
so another page cannot plant its own account's session in the user's browser either.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal, TypedDict

from fastapi import Body, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError

from backend.auth.deps import KEYS_REFUSED
from backend.auth.jwt import REFRESH, decode_token
from backend.auth.models import API_KEY_PREFIX, LoginResponse, RefreshRequest
from backend.clock import utcnow
from backend.config import Settings
from backend.errors import BadRequestError, ForbiddenError, ProblemCode, UnauthorizedError
from backend.http.deps import RuntimeDep


class Transport(StrEnum):
    BEARER = "bearer"
    COOKIE = "cookie"


REFRESH_COOKIE = "refresh_token"
CSRF_HEADER = "X-Requested-With"

TRANSPORT_DESCRIPTION = (
    "`bearer` (default): the refresh token is in the JSON body, both ways. `cookie`, for "
    "browser apps: the refresh token is set in an HttpOnly, SameSite=Strict cookie scoped "
    "to the auth paths, `refresh_token` in the response is null, and refresh and logout "
    "read the cookie instead of a body. Every cookie request must come from an `Origin` "
    f"listed in CORS_ORIGINS and carry `{CSRF_HEADER}` (any value); otherwise 403."
)


async def get_transport(
    request: Request,
    runtime: RuntimeDep,
    transport: Annotated[Transport, Query(description=TRANSPORT_DESCRIPTION)] = Transport.BEARER,
    requested_with: Annotated[
        str | None,
        Header(alias=CSRF_HEADER, description="Required, with any value, with `transport=cookie`."),
    ] = None,
    # The browser sets it; a client cannot, so it is left out of the schema.
    origin: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Transport:
    if transport is Transport.COOKIE:
        own_origin = f"{request.url.scheme}://{request.url.netloc}"
        _check_own_front_end(requested_with, origin, own_origin, runtime.settings)
    return transport


def _check_own_front_end(
    requested_with: str | None, origin: str | None, own_origin: str, settings: Settings
) -> None:
    if not requested_with:
        raise ForbiddenError(
            f"Cookie transport requires the {CSRF_HEADER} header (any value), which "
            "cross-site forms and links cannot send.",
            code=ProblemCode.CSRF_HEADER_MISSING,
        )
    if origin is None:
        raise ForbiddenError(
            "Cookie transport requires an Origin header, as browsers send.",
            code=ProblemCode.ORIGIN_MISSING,
        )
    # Listed, not matched: a wildcard in CORS_ORIGINS admits no cookie request. A browser
    # names the host it sends to in Host, so only our own pages can send a matching Origin
    # (behind a proxy that ends TLS the schemes differ: list the public origin instead).
    if origin not in settings.CORS_ORIGINS and origin != own_origin:
        raise ForbiddenError(
            f"Origin {origin} is not in CORS_ORIGINS: cookie transport is only for the "
            "front ends listed there and the app's own origin.",
            code=ProblemCode.ORIGIN_NOT_ALLOWED,
        )


TransportDep = Annotated[Transport, Depends(get_transport)]


MISSING_BODY = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
NULL_BODY = {
    "type": "model_attributes_type",
    "loc": ("body",),
    "msg": "Input should be a valid dictionary or object to extract fields from",
    "input": None,
}


async def get_presented_refresh_token(
    request: Request,
    transport: TransportDep,
    body: Annotated[
        RefreshRequest | None,
        Body(description="Required, except with `transport=cookie`, which ignores it."),
    ] = None,
) -> str:
    """The refresh token the client presents: the body's, or with cookie transport the
    cookie's."""
    if transport is Transport.COOKIE:
        if _cookies_named(request, REFRESH_COOKIE) > 1:
            # Parsers keep the first or the last; a cookie planted for a parent domain or
            # another path must not decide which session is refreshed or ended.
            raise BadRequestError(
                f"The request carries more than one {REFRESH_COOKIE} cookie.",
                code=ProblemCode.REFRESH_COOKIE_REPEATED,
            )
        token = request.cookies.get(REFRESH_COOKIE)
        if not token:
            raise UnauthorizedError(
                "No refresh token cookie: log in with transport=cookie first "
                "(and send the request with credentials).",
                code=ProblemCode.REFRESH_COOKIE_MISSING,
            )
        return token
    if body is None:
        # FastAPI's own answers when a required body is absent or JSON null, so that
        # bearer clients see no change.
        raise RequestValidationError([NULL_BODY if await request.body() else MISSING_BODY])
    if body.refresh_token.startswith(API_KEY_PREFIX):
        raise ForbiddenError(KEYS_REFUSED, code=ProblemCode.API_KEY_NOT_ALLOWED)
    return body.refresh_token


PresentedRefreshToken = Annotated[str, Depends(get_presented_refresh_token)]


def _cookies_named(request: Request, name: str) -> int:
    pairs = (pair for header in request.headers.getlist("cookie") for pair in header.split(";"))
    return sum(1 for pair in pairs if pair.split("=", 1)[0].strip() == name)


class CookieScope(TypedDict):
    path: str
    httponly: bool
    samesite: Literal["strict"]
    secure: bool


@dataclass(frozen=True)
class TokenDelivery:
    """Hands issued tokens to the client the way it asked for them."""

    transport: Transport
    response: Response
    settings: Settings

    def send(self, tokens: LoginResponse) -> LoginResponse:
        if self.transport is Transport.BEARER:
            return tokens
        assert tokens.refresh_token is not None  # issued tokens always include one
        expires_at = decode_token(tokens.refresh_token, REFRESH, self.settings).exp
        self.response.set_cookie(
            REFRESH_COOKIE,
            tokens.refresh_token,
            max_age=max(0, expires_at - int(utcnow().timestamp())),
            **self._cookie_scope(),
        )
        return tokens.model_copy(update={"refresh_token": None})

    def end(self) -> None:
        """After logout: the browser drops the cookie (a bearer client has none)."""
        if self.transport is Transport.COOKIE:
            self.response.delete_cookie(REFRESH_COOKIE, **self._cookie_scope())

    def _cookie_scope(self) -> CookieScope:
        return {
            # Only the auth routes ever see it: not the user routes, not other apps.
            "path": f"{self.settings.API_V1_PREFIX}/auth",
            "httponly": True,
            "samesite": "strict",
            # A local server speaks plain http, and browsers drop Secure cookies sent over
            # it from any host but localhost.
            "secure": self.settings.STAGE != "local",
        }


async def get_token_delivery(
    transport: TransportDep, response: Response, runtime: RuntimeDep
) -> TokenDelivery:
    return TokenDelivery(transport=transport, response=response, settings=runtime.settings)


TokenDeliveryDep = Annotated[TokenDelivery, Depends(get_token_delivery)]
