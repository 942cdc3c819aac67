"""The built dashboard (clients/admin) in Debian's headless Chromium, served by the app at
/admin on PostgreSQL, as deployed: an admin logs in, creates a user, finds it with the
search box, renames it, meets the If-Match conflict from a second tab, deactivates it,
reads and filters the audit trail, ends another user's sessions, opens My account,
deletes the user and logs out; a plain user sees no admin screen. Refusals show the
server's words: a 429 its wait, a 422 under the field it names. A screenshot of each
screen goes to test-artifacts/admin/.

The page and the API share an origin (localhost, where Chromium keeps the Secure cookie
over plain http), which CORS_ORIGINS does not list: the app's own dashboard needs no
setting.
"""

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Locator, Page, expect, sync_playwright

from tests.browser import CHROMIUM_ARGS, UI_TIMEOUT_MS, require_chromium, served_app
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, REPO_ROOT, USER_PASSWORD
from tests.postgres import Server, session_database
from tests.services import ADMIN_BUILD, require

DIST = REPO_ROOT / "clients" / "admin" / "dist"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "admin"
NEW_EMAIL = "grace.hopper@example.com"
PLAIN_EMAIL = "plain.user@example.com"


@pytest.fixture(scope="module")
def dist() -> Path:
    if not (DIST / "index.html").is_file():
        require(ADMIN_BUILD, f"{DIST} has no build")
    return DIST


@pytest.fixture(scope="module")
def base(dist: Path, postgres: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("admin-server")
    with (
        session_database(postgres) as database_url,
        served_app(
            workdir, DATABASE_URL=database_url, AUTO_MIGRATE="true", ADMIN_DIR=str(dist)
        ) as port,
    ):
        yield f"http://localhost:{port}"


@pytest.fixture(scope="module")
def browser(
    base: str, plain_user: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrowserContext]:
    # After the server and its data: Playwright's sync API keeps an event loop running in
    # this thread, where making the database (asyncio.run) would then fail.
    chromium = require_chromium()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=tmp_path_factory.mktemp("chromium-profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def plain_user(base: str) -> Iterator[dict[str, Any]]:
    """A plain user made through the API, logged in twice there: sessions to end."""
    with httpx.Client(base_url=f"{base}{API}") as api:
        admin = api.post("/auth/login", data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        headers = {"Authorization": f"Bearer {admin.raise_for_status().json()['access_token']}"}
        user = {"email": PLAIN_EMAIL, "name": "Plain User", "password": USER_PASSWORD}
        created = api.post("/users", json=user, headers=headers).raise_for_status().json()
        tokens = []
        for _ in range(2):
            login = api.post(
                "/auth/login", data={"username": PLAIN_EMAIL, "password": USER_PASSWORD}
            )
            tokens.append(login.raise_for_status().json()["access_token"])
        yield {"id": str(created["id"]), "tokens": tokens}


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def page_errors(page: Page) -> list[str]:
    """What the page reports going wrong, as it happens: React reports a crashed screen on
    the console. Refused requests are expected in these tests, so they are left out."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            errors.append(message.text)
            if message.type == "error" and not message.text.startswith("Failed to load resource")
            else None
        ),
    )
    return errors


def log_in(page: Page, base: str, email: str, password: str) -> None:
    page.goto(f"{base}/admin")
    page.get_by_role("textbox", name="Username", exact=True).fill(email)
    page.get_by_role("textbox", name="Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("menuitem", name="Users")).to_be_visible()


def open_screen(page: Page, base: str, route: str) -> None:
    page.goto(f"{base}/admin#{route}")


def expect_notification(page: Page, text: str) -> None:
    expect(page.get_by_role("alert").filter(has_text=text)).to_be_visible()


def name_field(page: Page) -> Locator:
    return page.get_by_role("textbox", name="Name", exact=True)


def save_name(page: Page, name: str) -> None:
    name_field(page).fill(name)
    page.get_by_role("button", name="Save").click()


def test_an_admin_manages_a_user_and_a_plain_user_sees_no_admin_screen(
    browser: BrowserContext, base: str, plain_user: dict[str, Any]
) -> None:
    page = browser.new_page()
    errors = page_errors(page)
    page.goto(f"{base}/admin")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    screenshot(page, "01-login")
    _a_429_shows_its_retry_after(page, base)
    log_in(page, base, ADMIN_EMAIL, ADMIN_PASSWORD)
    expect(page.get_by_role("cell", name=PLAIN_EMAIL)).to_be_visible()
    screenshot(page, "02-users")

    # Create
    page.get_by_role("link", name="Create").click()
    page.get_by_role("textbox", name="Email", exact=True).fill(NEW_EMAIL)
    name_field(page).fill("Grace")
    # The server's 422 shows under the field it names.
    page.get_by_role("textbox", name="Password", exact=True).fill("too-short")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("must be at least 12 characters long")).to_be_visible()
    screenshot(page, "03-user-create-refused")
    page.get_by_role("textbox", name="Password", exact=True).fill("Compilers-Rule-1952")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(re.compile(r"#/users/\d+/show$"))
    user_id = re.search(r"#/users/(\d+)/show$", page.url).group(1)  # type: ignore[union-attr]
    expect(page.get_by_role("link", name=NEW_EMAIL)).to_be_visible()
    screenshot(page, "04-user-show")

    # Search
    open_screen(page, base, "/users")
    page.get_by_placeholder("Search email or name").fill("hopper")
    expect(page.get_by_role("cell", name=PLAIN_EMAIL)).to_have_count(0)
    expect(page.get_by_role("cell", name=NEW_EMAIL)).to_be_visible()
    expect(page.locator("tbody tr")).to_have_count(1)
    screenshot(page, "05-users-search")

    # Rename
    page.get_by_role("cell", name="Grace", exact=True).click()  # not the email: a mailto link
    page.get_by_role("link", name="Edit").click()
    save_name(page, "Grace Hopper")
    page.wait_for_url(re.compile(rf"#/users/{user_id}/show$"))
    expect(page.get_by_text("Grace Hopper", exact=True)).to_be_visible()

    # A concurrent edit: both tabs read the same version, the second to save is refused.
    open_screen(page, base, f"/users/{user_id}")
    expect(name_field(page)).to_have_value("Grace Hopper")
    other = browser.new_page()
    open_screen(other, base, f"/users/{user_id}")
    expect(name_field(other)).to_have_value("Grace Hopper")
    save_name(other, "Grace B. Hopper")
    other.wait_for_url(re.compile(rf"#/users/{user_id}/show$"))
    screenshot(other, "06-user-renamed-in-another-tab")
    other.close()
    save_name(page, "Rear Admiral Hopper")
    expect_notification(page, "The user changed since the version you sent")
    # The form keeps what was typed, unsaved.
    expect(name_field(page)).to_have_value("Rear Admiral Hopper")
    screenshot(page, "07-edit-conflict")

    # Deactivate, from a fresh read.
    page.reload()
    expect(name_field(page)).to_have_value("Grace B. Hopper")
    page.get_by_role("switch", name="Active").uncheck()
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(re.compile(rf"#/users/{user_id}/show$"))
    screenshot(page, "08-user-deactivated")

    # The audit trail of that user
    page.get_by_role("menuitem", name="Audit trail").click()
    page.get_by_role("spinbutton", name="Target id").fill(user_id)
    for action in ("created", "updated", "deactivated"):
        expect(page.get_by_role("cell", name=action, exact=True).first).to_be_visible()
    expect(page.locator("tbody tr")).to_have_count(4)  # created, renamed twice, deactivated
    screenshot(page, "09-audit")
    page.get_by_role("combobox", name="Action").click()
    page.get_by_role("option", name="deactivated").click()
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody tr").first).to_contain_text(NEW_EMAIL)
    today = datetime.now(UTC).date()
    page.get_by_label("From (UTC)").fill(today.isoformat())
    expect(page).to_have_url(re.compile("created_at_gte"))
    expect(page.locator("tbody tr")).to_have_count(1)
    page.get_by_label("Before (UTC)").fill(today.isoformat())
    expect(page.get_by_text("No Audit trail found using the current filters.")).to_be_visible()

    # End one of the plain user's sessions (it logged in twice through the API), then all.
    open_screen(page, base, f"/users/{plain_user['id']}/show")
    sessions = page.locator("tbody tr")
    expect(sessions).to_have_count(2)
    expect(sessions.first).to_contain_text("python-httpx")
    screenshot(page, "10-user-sessions")
    sessions.first.get_by_role("button", name="End").click()
    expect_notification(page, "Session ended")
    expect(sessions).to_have_count(1)
    # Newest first: the second login's token is the one that stopped working.
    assert plain_user_status(base, plain_user["tokens"]) == [200, 401]
    page.get_by_role("button", name="End all sessions").click()
    expect_notification(page, "Every session of this user ended")
    expect(page.get_by_text("No live sessions.")).to_be_visible()
    assert plain_user_status(base, plain_user["tokens"]) == [401, 401]

    # My account
    page.get_by_role("menuitem", name="My account").click()
    expect(page.get_by_role("button", name="Change password")).to_be_visible()
    # This browser's session (both tabs share its cookie) and the fixture's API login.
    my_sessions = page.locator(".MuiCard-root").filter(has_text="My sessions").locator("tbody tr")
    expect(my_sessions).to_have_count(2)
    expect(my_sessions.filter(has_text="HeadlessChrome")).to_have_count(1)
    screenshot(page, "11-my-account")
    page.get_by_role("textbox", name="Name", exact=True).fill("Ada Admin")
    page.get_by_role("button", name="Save name").click()
    expect_notification(page, "Name saved")
    expect(page.get_by_role("button", name="Profile")).to_contain_text("Ada Admin")
    page.get_by_role("textbox", name="Current password", exact=True).fill(ADMIN_PASSWORD)
    page.get_by_role("textbox", name="New password", exact=True).fill("Admin-Password-2")
    page.get_by_role("button", name="Change password").click()
    expect_notification(page, "Password changed")
    # Every other session ended; this one goes on with the new cookie, a reload included.
    page.reload()
    expect(page.get_by_role("button", name="Change password")).to_be_visible()
    expect(my_sessions).to_have_count(1)

    # Delete, after a confirmation.
    open_screen(page, base, f"/users/{user_id}")
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("dialog")).to_contain_text(NEW_EMAIL)
    screenshot(page, "12-delete-confirmation")
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url(re.compile(r"#/users$"))
    expect_notification(page, "Element deleted")
    expect(page.get_by_role("cell", name=NEW_EMAIL)).to_have_count(0)

    # Log out: back to the login page, and a reload does not bring the session back.
    page.get_by_role("button", name="Profile").click()
    page.get_by_role("menuitem", name="Logout").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert not [c for c in browser.cookies() if c["name"] == "refresh_token"]
    page.reload()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()

    # A plain user reads users, and nothing else.
    log_in(page, base, PLAIN_EMAIL, USER_PASSWORD)
    expect(page.get_by_role("cell", name=ADMIN_EMAIL)).to_be_visible()
    expect(page.get_by_role("menuitem", name="Audit trail")).to_have_count(0)
    expect(page.get_by_role("link", name="Create")).to_have_count(0)
    screenshot(page, "13-plain-user")
    for route in ("/audit", "/users/1", "/users/create"):
        open_screen(page, base, route)
        expect(page.get_by_role("button", name="Save")).to_have_count(0)
        expect(page.get_by_role("cell", name="deactivated")).to_have_count(0)
    open_screen(page, base, "/users/1/show")
    expect(page.get_by_role("link", name=ADMIN_EMAIL)).to_be_visible()
    expect(page.get_by_role("link", name="Edit")).to_have_count(0)
    expect(page.get_by_text("End all sessions")).to_have_count(0)
    page.close()
    assert errors == []


def plain_user_status(base: str, tokens: list[str]) -> list[int]:
    with httpx.Client(base_url=f"{base}{API}") as api:
        return [
            api.get("/users/me", headers={"Authorization": f"Bearer {token}"}).status_code
            for token in tokens
        ]


def _a_429_shows_its_retry_after(page: Page, base: str) -> None:
    """Ten failed logins to one email use up its per-minute limit (RATE_LIMIT_LOGIN); the
    eleventh, from the login page, shows the problem's detail and the wait."""
    nobody = {"username": "nobody@example.com", "password": "Not-The-Password-1"}
    with httpx.Client(base_url=f"{base}{API}") as api:
        for _ in range(10):
            assert api.post("/auth/login", data=nobody).status_code == 401
    page.get_by_role("textbox", name="Username", exact=True).fill(nobody["username"])
    page.get_by_role("textbox", name="Password", exact=True).fill(nobody["password"])
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert").filter(has_text="Too many requests")
    expect(alert).to_have_text(re.compile(r"Retry in \d+ s\.$"))  # said once, not twice
    screenshot(page, "01-login-too-many-attempts")
