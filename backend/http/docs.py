"""Swagger UI at /docs and ReDoc at /redoc, with every asset served by the app itself.

FastAPI's own pages load their JavaScript, CSS and favicon from CDNs, so they stay blank on
an air-gapped network. The assets come from the `fastapi-offline` package, which ships
swagger-ui-dist 5 and the ReDoc 2 standalone bundle (it has no other dependency than FastAPI).
"""

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

from backend.config import Settings

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = f"{DOCS_URL}/oauth2-redirect"
# Under /docs so that one proxy rule covers the documentation; no route clashes with it.
ASSETS_URL = f"{DOCS_URL}/assets"
SWAGGER_UI_PARAMETERS = {
    # The validator badge would send the schema's address to validator.swagger.io.
    "validatorUrl": None,
    # The token stays in the page's memory: in localStorage any script on the origin reads it.
    "persistAuthorization": False,
}
# Nothing on these pages may reach past the app: ReDoc's sidebar always loads its logo from
# cdn.redoc.ly, which on an air-gapped network hangs and elsewhere tells a third party.
# FastAPI's pages start Swagger UI with an inline script, both UIs set inline styles and
# ReDoc's search runs in a worker made from a blob.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src blob:; base-uri 'none'; form-action 'none'"
)


def install_docs(app: FastAPI, settings: Settings) -> None:
    """Add the documentation pages and their assets; call with docs_url=redoc_url=None."""
    openapi_url = f"{settings.API_V1_PREFIX}/openapi.json"
    title = settings.PROJECT_NAME
    app.mount(
        ASSETS_URL,
        StaticFiles(packages=[("fastapi_offline", "static")]),
        name="docs-assets",
    )

    # root_path prefixes every URL, as in FastAPI's pages, for an app served under a path.
    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _self_contained(
            get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{title} - Swagger UI",
                swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
                swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
            )
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _self_contained(
            get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{title} - ReDoc",
                redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                with_google_fonts=False,
            )
        )


def _self_contained(page: HTMLResponse) -> HTMLResponse:
    page.headers["content-security-policy"] = CONTENT_SECURITY_POLICY
    return page
