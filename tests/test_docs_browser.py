"""/docs and /redoc in Debian's headless Chromium with the outside network unreachable.

One live server on a SQLite file serves both pages; the API does not depend on the database
for them, so this runs once, not on both databases. Every request to a host other than the
loopback is aborted and recorded, and a proxy that does not exist catches anything that
escapes the routing, so a page that needs a CDN shows up as a failure, not a slow load.
"""

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext, Page, Route, expect, sync_playwright

from tests.browser import CHROMIUM_ARGS, UI_TIMEOUT_MS, require_chromium, served_app
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API

LOOPBACK = {"127.0.0.1", "localhost"}


@pytest.fixture(scope="module")
def chromium() -> Path:
    return require_chromium()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_app(tmp_path_factory.mktemp("docs-server")) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def outside_requests() -> list[str]:
    return []


@pytest.fixture(scope="module")
def browser(
    chromium: Path, tmp_path_factory: pytest.TempPathFactory, outside_requests: list[str]
) -> Iterator[BrowserContext]:
    def keep_to_loopback(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOOPBACK:
            route.continue_()
        else:
            outside_requests.append(url)
            route.abort("internetdisconnected")

    # Playwright's own browser download is not reachable here: drive Debian's Chromium.
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=tmp_path_factory.mktemp("chromium-profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        context.route("**/*", keep_to_loopback)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def console_errors() -> list[str]:
    return []


@pytest.fixture
def page(
    browser: BrowserContext, outside_requests: list[str], console_errors: list[str]
) -> Iterator[Page]:
    page = browser.new_page()
    uncaught: list[str] = []
    page.on("pageerror", lambda error: uncaught.append(str(error)))
    page.on(
        "console",
        lambda message: console_errors.append(message.text) if message.type == "error" else None,
    )
    yield page
    page.close()
    assert outside_requests == []
    assert uncaught == []


def test_swagger_ui_authorizes_and_tries_it_out(
    page: Page, server: str, console_errors: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    page.goto(f"{server}/docs")
    me = page.locator("#operations-users-users-me")
    expect(me).to_be_visible()
    for operation in ("auth-login", "users-list", "users-create", "users-delete", "health-live"):
        expect(page.locator(f"[id^='operations-'][id$='-{operation}']")).to_be_visible()

    page.locator(".auth-wrapper button.authorize").click()
    dialog = page.locator(".modal-ux")
    dialog.locator("#oauth_username").fill(ADMIN_EMAIL)
    dialog.locator("#oauth_password").fill(ADMIN_PASSWORD)
    dialog.locator("button.modal-btn.authorize").click()
    expect(dialog.get_by_role("heading", name="Authorized")).to_be_visible()
    dialog.locator("button.btn-done").click()
    expect(dialog).to_be_hidden()

    me.locator(".opblock-summary-control").click()
    me.locator("button.try-out__btn").click()
    me.locator("button.execute").click()
    response = me.locator(".live-responses-table .response")
    expect(response.locator(".response-col_status")).to_have_text("200")
    expect(response.locator(".response-col_description")).to_contain_text(ADMIN_EMAIL)
    expect(me.locator(".curl-command")).to_contain_text(f"{API}/users/me")
    expect(me.locator(".curl-command")).to_contain_text("Authorization: Bearer ")
    assert console_errors == []

    screenshot = tmp_path_factory.mktemp("screenshots") / "docs-after-try-it-out.png"
    page.screenshot(path=screenshot, full_page=True)
    print(f"screenshot: {screenshot}")  # shown with -s, for a person to look at


def test_redoc_renders(page: Page, server: str, console_errors: list[str]) -> None:
    page.goto(f"{server}/redoc")
    expect(page.locator("h1")).to_contain_text("Users API")
    expect(page.locator("h2", has_text="Users-Me")).to_be_visible()
    # Search runs in a worker, which the page's policy must leave room for.
    page.get_by_placeholder("Search...").fill("password")
    expect(page.locator("[data-role='search:results']")).to_contain_text("Users-Change-Password")
    # ReDoc's sidebar always asks cdn.redoc.ly for its logo; the page's policy refuses it.
    assert all("cdn.redoc.ly" in error for error in console_errors)
