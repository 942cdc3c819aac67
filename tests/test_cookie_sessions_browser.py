"""Cookie sessions in Debian's headless Chromium: a front end on its own origin logs in
with cookie transport, survives a reload, refreshes silently and logs out; a page on an
origin not in CORS_ORIGINS cannot refresh or log the user out; no script ever sees the
refresh token.

Every origin is on `localhost`, on different ports: a different origin, but the same site,
so the SameSite=Strict cookie reaches the API from every page here, the foreign one
included. That leaves the Origin check and the required header to keep the foreign page
out, which is what this proves. (127.0.0.1 and localhost would be different sites.)

The pages live under the cookie's own path, /api/v1/auth/, where document.cookie would
list the token were it not HttpOnly.
"""

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, sync_playwright

from tests.browser import CHROMIUM_ARGS, UI_TIMEOUT_MS, require_chromium, served_app
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, free_port

PAGE_PATH = f"{API}/auth/app.html"
# The front end's own, readable cookie: document.cookie works, and shows only this.
PAGE_COOKIE = "theme=dark"
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>cookie sessions</title>
<script>
  document.cookie = "%(page_cookie)s; path=/";
  const API = "%(api)s";

  async function call(method, path, {json, token, csrfHeader = true} = {}) {
    const headers = {};
    if (csrfHeader) headers["X-Requested-With"] = "fetch";
    if (token) headers["Authorization"] = "Bearer " + token;
    if (json !== undefined) headers["Content-Type"] = "application/json";
    const body = json === undefined ? undefined : JSON.stringify(json);
    try {
      const response = await fetch(API + path, {method, headers, body, credentials: "include"});
      const text = await response.text();
      return {status: response.status, body: text ? JSON.parse(text) : null};
    } catch (error) {
      return {status: null, error: String(error)};
    }
  }

  // The classic cross-site request forgery: a form posted with whatever cookies apply.
  function postForm(path) {
    const form = document.createElement("form");
    form.method = "POST";
    form.action = API + path;
    document.body.append(form);
    form.submit();
  }
</script>
"""


class _PageServer(ThreadingHTTPServer):
    page: bytes


class _PageHandler(BaseHTTPRequestHandler):
    server: _PageServer

    def do_GET(self) -> None:
        if self.path != PAGE_PATH:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.server.page)))
        self.end_headers()
        self.wfile.write(self.server.page)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # pytest shows the test's own output; a line per page load is noise


def serve_page(port: int, api: str) -> Iterator[str]:
    server = _PageServer(("127.0.0.1", port), _PageHandler)
    server.page = (PAGE % {"api": api, "page_cookie": PAGE_COOKIE}).encode()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{port}{PAGE_PATH}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"api": free_port(), "front_end": free_port(), "foreign": free_port()}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int]) -> Iterator[str]:
    front_end = f"http://localhost:{ports['front_end']}"
    workdir = tmp_path_factory.mktemp("cookie-server")
    # STAGE=test: the cookie is Secure, as in production; browsers take it from localhost.
    with served_app(workdir, CORS_ORIGINS=front_end, STAGE="test") as port:
        yield f"http://localhost:{port}{API}"


@pytest.fixture(scope="module")
def front_end(api: str, ports: dict[str, int]) -> Iterator[str]:
    yield from serve_page(ports["front_end"], api)


@pytest.fixture(scope="module")
def foreign(api: str, ports: dict[str, int]) -> Iterator[str]:
    yield from serve_page(ports["foreign"], api)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    chromium = require_chromium()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=tmp_path_factory.mktemp("chromium-profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


def open_page(browser: BrowserContext, url: str) -> Page:
    page = browser.new_page()
    page.goto(url)
    return page


def call(page: Page, method: str, path: str, **options: Any) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(
        "([method, path, options]) => call(method, path, options)", [method, path, options]
    )
    return result


def refresh_cookie(browser: BrowserContext) -> dict[str, Any] | None:
    """The refresh token cookie as the browser holds it, HttpOnly or not."""
    found = [dict(cookie) for cookie in browser.cookies() if cookie["name"] == "refresh_token"]
    assert len(found) <= 1, found
    return found[0] if found else None


def assert_script_cannot_see_the_token(page: Page) -> None:
    assert page.evaluate("document.cookie") == PAGE_COOKIE


def test_a_front_end_logs_in_reloads_refreshes_silently_and_logs_out(
    browser: BrowserContext, front_end: str, foreign: str
) -> None:
    page = open_page(browser, front_end)
    credentials = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    logged_in = call(page, "POST", "/auth/login?transport=cookie", json=credentials)
    assert logged_in["status"] == 200, logged_in
    assert logged_in["body"]["refresh_token"] is None
    cookie = refresh_cookie(browser)
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["secure"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == f"{API}/auth"
    assert cookie["domain"] == "localhost"
    assert_script_cannot_see_the_token(page)

    # A reload forgets every token the page held; the cookie brings the session back.
    page.reload()
    assert page.evaluate("typeof call") == "function"
    assert_script_cannot_see_the_token(page)
    refreshed = call(page, "POST", "/auth/refresh?transport=cookie")
    assert refreshed["status"] == 200, refreshed
    assert refreshed["body"]["refresh_token"] is None
    access_token = refreshed["body"]["access_token"]
    assert access_token != logged_in["body"]["access_token"]
    rotated = refresh_cookie(browser)
    assert rotated is not None
    assert rotated["value"] != cookie["value"]
    me = call(page, "GET", "/users/me", token=access_token)
    assert me["status"] == 200, me
    assert me["body"]["email"] == ADMIN_EMAIL
    assert_script_cannot_see_the_token(page)

    _foreign_page_cannot_use_the_session(browser, foreign)
    assert refresh_cookie(browser) == rotated  # neither rotated nor ended by it

    logged_out = call(page, "POST", "/auth/logout?transport=cookie")
    assert logged_out["status"] == 204, logged_out
    assert refresh_cookie(browser) is None
    after = call(page, "POST", "/auth/refresh?transport=cookie")
    assert after["status"] == 401, after
    assert_script_cannot_see_the_token(page)
    page.close()


def _foreign_page_cannot_use_the_session(browser: BrowserContext, foreign: str) -> None:
    page = open_page(browser, foreign)
    assert_script_cannot_see_the_token(page)
    # With the header, the browser asks first (a preflight), is refused, and never sends.
    for action in ("refresh", "logout"):
        refused = call(page, "POST", f"/auth/{action}?transport=cookie")
        assert refused["status"] is None, refused
        assert "Failed to fetch" in refused["error"]
    page.close()

    # A form needs no preflight, and being same-site it carries the cookie, but it cannot
    # send the header: the API refuses it. A page per form: posting navigates it away.
    for action in ("refresh", "logout"):
        page = open_page(browser, foreign)
        path = f"/auth/{action}?transport=cookie"
        target = re.compile(re.escape(path) + "$")
        with page.expect_response(target) as answer:
            page.evaluate("(path) => postForm(path)", path)
        # Closing a page in mid-navigation can hang Playwright: let it land first.
        page.wait_for_url(target)
        assert answer.value.status == 403
        sent = answer.value.request.all_headers()
        assert "refresh_token=" in sent.get("cookie", ""), sent
        page.close()
