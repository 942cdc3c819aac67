"""The dashboard at /admin: served from ADMIN_DIR with a fallback to its index.html for
its screens' paths, under a Content-Security-Policy that admits its own files only; no
/admin at all without a build; a wrong ADMIN_DIR stops start-up naming it.

A fake build stands in for clients/admin/dist (the real one is driven in
test_admin_browser.py).
"""

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from backend.config import DEFAULT_ADMIN_DIR
from backend.http.admin import CONTENT_SECURITY_POLICY
from backend.main import create_app
from tests.helpers import make_settings, running

INDEX = '<!doctype html><script type="module" src="/admin/assets/index-abc123.js"></script>'
SCRIPT = "console.log('dashboard');"


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    folder = tmp_path / "dist"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text(INDEX)
    (folder / "assets" / "index-abc123.js").write_text(SCRIPT)
    (folder / "favicon.ico").write_bytes(b"\0\0\1\0")
    return folder


async def _client(tmp_path: Path, admin_dir: str | None) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        f"sqlite:///{tmp_path / 'app.db'}", AUTO_MIGRATE=True, ADMIN_DIR=admin_dir
    )
    async with running(create_app(settings)) as client:
        yield client


@pytest.fixture
async def client(tmp_path: Path, dist: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _client(tmp_path, str(dist)):
        yield client


@pytest.mark.parametrize("path", ["/admin", "/admin/", "/admin/users/3/show", "/admin/audit"])
async def test_the_dashboard_and_its_screens_answer_with_its_index(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert response.text == INDEX
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["cache-control"] == "no-cache"
    # The app's own security headers still apply.
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_assets_are_served_as_scripts_and_cached_for_good(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/admin/assets/index-abc123.js")
    assert response.status_code == 200
    assert response.text == SCRIPT
    # nosniff: a script served with another type would not run.
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert (await client.get("/admin/favicon.ico")).status_code == 200


@pytest.mark.parametrize("path", ["/admin/assets/gone-123.js", "/admin/missing.css"])
async def test_a_missing_file_is_a_404_problem_not_the_index(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_nothing_outside_the_folder_is_served(client: httpx.AsyncClient) -> None:
    # app.db sits next to dist/, one level up.
    for path in ("/admin/../app.db", "/admin/..%2fapp.db", "/admin/assets/..%2f..%2fapp.db"):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert b"SQLite" not in response.content


async def test_the_dashboard_only_reads(client: httpx.AsyncClient) -> None:
    response = await client.post("/admin/users")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"


async def test_the_api_is_untouched_by_the_mount(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    response = await client.get("/api/v1/users")
    assert response.status_code == 401
    assert "content-security-policy" not in response.headers


async def test_an_empty_admin_dir_means_no_admin_route(tmp_path: Path) -> None:
    async for client in _client(tmp_path, ""):
        for path in ("/admin", "/admin/assets/index-abc123.js"):
            response = await client.get(path)
            assert response.status_code == 404
            assert response.headers["content-type"] == "application/problem+json"


def test_unset_it_serves_the_checkouts_build_folder_built_or_not(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'app.db'}")
    assert settings.admin_dir == DEFAULT_ADMIN_DIR


async def test_a_build_made_while_the_server_runs_is_served_without_a_restart(
    client: httpx.AsyncClient, dist: Path
) -> None:
    (dist / "index.html").unlink()  # as `npm run build` empties the folder first
    for path in ("/admin", "/admin/users", "/admin/assets/index-abc123.js"):
        missing = await client.get(path)
        assert missing.status_code == 404
        assert (
            "The dashboard is not built: run `cd clients/admin && npm ci"
            in (missing.json()["detail"])
        )
    assert (await client.get("/")).headers["location"] == "/docs"
    (dist / "index.html").write_text(INDEX)
    assert (await client.get("/admin")).text == INDEX
    root = await client.get("/")
    assert (root.status_code, root.headers["location"]) == (307, "/admin")


async def test_the_root_leads_to_the_docs_without_a_dashboard_and_else_nowhere(
    tmp_path: Path,
) -> None:
    database = f"sqlite:///{tmp_path / 'app.db'}"
    for docs, expected in ((True, "/docs"), (False, None)):
        settings = make_settings(database, AUTO_MIGRATE=True, ADMIN_DIR="", DOCS_ENABLED=docs)
        async with running(create_app(settings)) as client:
            root = await client.get("/")
            assert root.headers.get("location") == expected
            assert root.status_code == (307 if expected else 404)


def test_a_folder_without_an_index_stops_start_up_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as raised:
        make_settings(f"sqlite:///{tmp_path / 'app.db'}", ADMIN_DIR=str(tmp_path / "nowhere"))
    message = str(raised.value)
    assert "ADMIN_DIR" in message
    assert "has no index.html" in message
    assert "npm run build" in message
