"""The sign-in history in the dashboard, in Chromium against the built copy on
PostgreSQL, with the fixtures of test_admin_browser.py (a server, a database and a
browser of this module's own): an admin finds a plain user's failed login on the
Sign-in history screen, filtered by kind; the plain user sees their own recent sign-ins,
and only theirs, in My account. Screenshots go to test-artifacts/admin/ beside the
others."""

from typing import Any

import httpx
from playwright.sync_api import BrowserContext, expect

from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, USER_PASSWORD
from tests.test_admin_browser import (  # noqa: F401  (base, browser, dist, plain_user: fixtures)
    PLAIN_EMAIL,
    base,
    browser,
    dist,
    log_in,
    page_errors,
    plain_user,
    screenshot,
)


def test_admins_and_users_read_the_sign_in_history(
    browser: BrowserContext,  # noqa: F811
    base: str,  # noqa: F811
    plain_user: dict[str, Any],  # noqa: F811
) -> None:
    with httpx.Client(base_url=f"{base}{API}") as api:
        wrong = {"username": PLAIN_EMAIL, "password": "Not-The-Password-1"}
        assert api.post("/auth/login", data=wrong).status_code == 401

    page = browser.new_page()
    errors = page_errors(page)
    log_in(page, base, ADMIN_EMAIL, ADMIN_PASSWORD)
    page.get_by_role("menuitem", name="Sign-in history").click()
    rows = page.locator("tbody tr")
    # The plain user's two logins and failed one, the admin's (the fixture's and this).
    expect(rows).to_have_count(5)
    expect(rows.first).to_contain_text("logged in")
    expect(rows.first).to_contain_text(ADMIN_EMAIL)
    page.get_by_role("combobox", name="Kind").click()
    page.get_by_role("option", name="login failed").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(PLAIN_EMAIL)
    expect(rows.first).to_contain_text("credentials_invalid")
    screenshot(page, "30-sign-in-history")

    page.get_by_role("button", name="Profile").click()
    page.get_by_role("menuitem", name="Logout").click()
    log_in(page, base, PLAIN_EMAIL, USER_PASSWORD)
    expect(page.get_by_role("menuitem", name="Sign-in history")).to_have_count(0)
    page.get_by_role("menuitem", name="My account").click()
    card = page.locator(".MuiCard-root").filter(has_text="Recent sign-ins")
    mine = card.locator("tbody tr")
    # This login, the failed one, the fixture's two; no logout was of this user's.
    expect(mine).to_have_count(4)
    expect(mine.first).to_contain_text("logged in")
    expect(mine.filter(has_text="login failed")).to_have_count(1)
    screenshot(page, "31-my-recent-sign-ins")
    page.close()
    assert errors == []
