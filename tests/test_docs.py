"""/docs and /redoc load every asset from the app itself, so they work air-gapped.

No database is touched: these pages and assets need none, so one SQLite settings object
(without the lifespan) serves, instead of the two-database `client` fixture.
"""

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from backend.main import create_app
from tests.helpers import API, make_settings

# Any JavaScript MIME type passes nosniff; which one depends on the machine's mime.types.
JAVASCRIPT = {"text/javascript", "application/javascript"}
# The HTML attributes and Swagger's `url:` option through which a page loads anything.
LOADED_URL = re.compile(r"""(?:src|href)="([^"]*)"|spec-url="([^"]*)"|url: '([^']*)'""")


@pytest.fixture
async def docs_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'unused.db'}"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def loaded_urls(html: str) -> list[str]:
    return [next(url for url in match.groups() if url) for match in LOADED_URL.finditer(html)]


def media_type(response: httpx.Response) -> str:
    return response.headers["content-type"].split(";")[0].strip()


@pytest.mark.parametrize(
    ("page", "assets"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
        ("/redoc", {"redoc.standalone.js", "favicon.png"}),
    ],
)
async def test_docs_pages_load_only_local_assets(
    docs_client: httpx.AsyncClient, page: str, assets: set[str]
) -> None:
    response = await docs_client.get(page)
    assert response.status_code == 200
    assert media_type(response) == "text/html"
    # The policy keeps whatever the UIs' scripts ask for at home too.
    policy = response.headers["content-security-policy"]
    assert policy.startswith("default-src 'self';")
    assert "http" not in policy
    assert "*" not in policy
    html = response.text
    for outside in ("http://", "https://", "//cdn", "jsdelivr", "unpkg", "googleapis"):
        assert outside not in html
    urls = loaded_urls(html)
    assert f"{API}/openapi.json" in urls
    assert {url.removeprefix("/docs/assets/") for url in urls} == {*assets, f"{API}/openapi.json"}
    for url in urls:
        assert (await docs_client.get(url)).status_code == 200, url


async def test_docs_assets_have_content_types_that_pass_nosniff(
    docs_client: httpx.AsyncClient,
) -> None:
    expected = {
        "swagger-ui-bundle.js": JAVASCRIPT,
        "redoc.standalone.js": JAVASCRIPT,
        "swagger-ui.css": {"text/css"},
        "favicon.png": {"image/png"},
    }
    for name, types in expected.items():
        response = await docs_client.get(f"/docs/assets/{name}")
        assert response.status_code == 200
        assert response.headers["x-content-type-options"] == "nosniff"
        assert media_type(response) in types, name
        assert response.headers["etag"]  # browsers revalidate instead of downloading again
    assert (await docs_client.get("/docs/assets/missing.js")).status_code == 404


async def test_swagger_ui_settings(docs_client: httpx.AsyncClient) -> None:
    html = (await docs_client.get("/docs/")).text  # the trailing slash is routed too
    assert "oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect'" in html
    assert '"validatorUrl": null' in html
    assert '"persistAuthorization": false' in html
    redirect = await docs_client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200
    assert "swaggerUIRedirectOauth2" in redirect.text


async def test_docs_urls_follow_the_root_path(tmp_path: Path) -> None:
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'unused.db'}"))
    transport = httpx.ASGITransport(app=app, root_path="/users-api")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        swagger = (await client.get("/docs")).text
        redoc = (await client.get("/redoc")).text
    assert f"url: '/users-api{API}/openapi.json'" in swagger
    assert 'src="/users-api/docs/assets/swagger-ui-bundle.js"' in swagger
    assert "'/users-api/docs/oauth2-redirect'" in swagger
    assert f'spec-url="/users-api{API}/openapi.json"' in redoc
    assert 'src="/users-api/docs/assets/redoc.standalone.js"' in redoc


async def test_docs_routes_stay_out_of_the_schema(docs_client: httpx.AsyncClient) -> None:
    schema = (await docs_client.get(f"{API}/openapi.json")).json()
    assert not [path for path in schema["paths"] if path.startswith(("/docs", "/redoc"))]


async def test_staging_and_production_serve_no_docs_unless_asked(tmp_path: Path) -> None:
    """DOCS_ENABLED is off outside local and test: no pages, no OpenAPI document."""
    database = f"sqlite:///{tmp_path / 'unused.db'}"
    paths = ["/docs", "/redoc", f"{API}/openapi.json", "/docs/assets/swagger-ui.css"]
    for enabled, expected in ((None, 404), (True, 200)):
        app = create_app(make_settings(database, STAGE="staging", DOCS_ENABLED=enabled))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert [(await client.get(path)).status_code for path in paths] == [expected] * 4
