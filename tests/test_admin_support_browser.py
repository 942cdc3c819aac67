"""The dashboard's support tools in Chromium, against the built copy on PostgreSQL, with a
server and database of this module's own and the browser of test_admin_browser.py: an
admin bans a plain user from their page (a blank reason refused under the field first),
finds them with the list's Banned filter and badge, lifts the ban; then impersonates
them, is asked for the password because the login is no longer recent, sees the
"Viewing as" banner and the plain user's screens, and Stop returns to the admin's own
session. Screenshots go to test-artifacts/admin/ beside the others.
"""

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from playwright.sync_api import BrowserContext, expect

from tests.browser import served_app
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, USER_PASSWORD
from tests.postgres import Server, session_database
from tests.test_admin_browser import (  # noqa: F401  (browser, dist, plain_user: fixtures)
    PLAIN_EMAIL,
    browser,
    dist,
    expect_notification,
    log_in,
    open_screen,
    page_errors,
    plain_user,
    screenshot,
)


@pytest.fixture(scope="module")
def database_url(postgres: Server) -> Iterator[str]:
    with session_database(postgres) as url:
        yield url


@pytest.fixture(scope="module")
def base(dist: Path, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    workdir = tmp_path_factory.mktemp("admin-support-server")
    with served_app(
        workdir, DATABASE_URL=database_url, AUTO_MIGRATE="true", ADMIN_DIR=str(dist)
    ) as port:
        yield f"http://localhost:{port}"


def age_admin_logins(database_url: str) -> None:
    """Make the admin's sessions' last proof an hour old, as if they had logged in then:
    the served app's clock cannot be moved from here. In a thread: Playwright's loop
    runs in this one."""

    async def age() -> None:
        connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
        try:
            await connection.execute(
                "UPDATE sessions SET authenticated_at = now() - interval '1 hour' "
                "WHERE user_id = (SELECT id FROM users WHERE email = $1)",
                ADMIN_EMAIL,
            )
        finally:
            await connection.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, age()).result()


def login_status(base: str) -> tuple[int, str]:
    with httpx.Client(base_url=f"{base}{API}") as api:
        response = api.post(
            "/auth/login", data={"username": PLAIN_EMAIL, "password": USER_PASSWORD}
        )
        return response.status_code, response.json().get("code", "")


def audit_actions(base: str, user_id: str) -> list[str]:
    with httpx.Client(base_url=f"{base}{API}") as api:
        admin = api.post("/auth/login", data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        headers = {"Authorization": f"Bearer {admin.raise_for_status().json()['access_token']}"}
        events = api.get(
            "/audit",
            params={"target_id": user_id, "per_page": "100", "sort": "id"},
            headers=headers,
        )
        return [event["action"] for event in events.raise_for_status().json()]


def test_an_admin_bans_and_impersonates_in_the_dashboard(
    browser: BrowserContext,  # noqa: F811
    base: str,
    database_url: str,
    plain_user: dict[str, Any],  # noqa: F811
) -> None:
    page = browser.new_page()
    errors = page_errors(page)
    log_in(page, base, ADMIN_EMAIL, ADMIN_PASSWORD)
    user_page = f"/users/{plain_user['id']}/show"
    open_screen(page, base, user_page)
    expect(page.get_by_text("Not banned")).to_be_visible()

    # Ban: the server's 422 shows under the field it names, then the ban is made.
    page.get_by_role("button", name="Ban", exact=True).click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("button", name="Ban user").click()
    expect(dialog.get_by_text("must not be empty")).to_be_visible()
    dialog.get_by_role("textbox", name="Reason").fill("Spam in the forums")
    dialog.get_by_label("Until (optional)").fill("2099-01-31T12:00")
    screenshot(page, "20-ban-dialog")
    dialog.get_by_role("button", name="Ban user").click()
    expect_notification(page, "User banned")
    status = page.get_by_role("status").filter(has_text="Banned until")
    expect(status).to_contain_text("Spam in the forums")
    expect(status).to_contain_text("2099")
    assert login_status(base) == (403, "banned")
    screenshot(page, "21-user-banned")

    # The list's filter and badge.
    open_screen(page, base, f"/users?filter={quote(json.dumps({'banned': True}))}")
    row = page.get_by_role("row").filter(has_text=PLAIN_EMAIL)
    expect(row).to_contain_text("banned")
    expect(page.get_by_role("row")).to_have_count(2)  # the header and the banned user
    screenshot(page, "22-users-banned-filter")

    # Lift it.
    open_screen(page, base, user_page)
    page.get_by_role("button", name="Lift ban").click()
    expect_notification(page, "Ban lifted")
    expect(page.get_by_text("Not banned")).to_be_visible()
    assert login_status(base)[0] == 200

    # Impersonate: the login is an hour old now, so the server asks for the password.
    age_admin_logins(database_url)
    page.get_by_role("button", name="Impersonate").click()
    prompt = page.get_by_role("dialog")
    expect(prompt).to_contain_text("Confirm it is you")
    prompt.get_by_label("Your password").fill(ADMIN_PASSWORD)
    screenshot(page, "23-impersonate-password")
    prompt.get_by_role("button", name="Confirm").click()
    banner = page.get_by_role("banner").filter(has_text="Viewing as")
    expect(banner).to_contain_text(PLAIN_EMAIL)
    # The plain user's screens: no audit trail.
    expect(page.get_by_role("menuitem", name="Users")).to_be_visible()
    expect(page.get_by_role("menuitem", name="Audit trail")).to_have_count(0)
    screenshot(page, "24-impersonating")

    banner.get_by_role("button", name="Stop").click()
    expect(page.get_by_text("Viewing as")).to_have_count(0)
    expect(page.get_by_role("menuitem", name="Audit trail")).to_be_visible()
    expect(page.get_by_text("Not banned")).to_be_visible()  # back on the user's page
    screenshot(page, "25-impersonation-stopped")

    actions = audit_actions(base, plain_user["id"])
    assert actions.count("user.ban") == 1, actions
    assert actions.count("user.unban") == 1, actions
    started = actions.index("user.impersonation_start")
    # The screens' requests as the user, then the stop (its own request is recorded
    # after its response, so after the stop's event).
    assert "user.impersonated_request" in actions[started:], actions
    assert "user.impersonation_stop" in actions[started:], actions
    assert errors == []
