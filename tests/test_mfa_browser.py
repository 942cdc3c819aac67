"""The dashboard's second factor in headless Chromium, with MFA_REQUIRED=admins: the
admin's first sign-in lands on the enrolment page, enrols an authenticator app (the
code computed from the key the page shows), is shown the recovery codes once, reaches
the users list, logs out, signs in again with a code after the password, and sees its
factor on its user page."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.browser import CHROMIUM_ARGS, UI_TIMEOUT_MS, require_chromium, served_app
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, REPO_ROOT
from tests.services import ADMIN_BUILD, require

DIST = REPO_ROOT / "clients" / "admin" / "dist"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not (DIST / "index.html").is_file():
        require(ADMIN_BUILD, f"{DIST} has no build")
    workdir = tmp_path_factory.mktemp("mfa-server")
    with served_app(workdir, ADMIN_DIR=str(DIST), MFA_REQUIRED="admins") as port:
        yield f"http://localhost:{port}"


def code(secret: str, ahead: timedelta = timedelta(0)) -> str:
    return pyotp.TOTP(secret).at(datetime.now(UTC) + ahead)


def password_step(page: Page, base: str) -> None:
    page.goto(f"{base}/admin")
    page.get_by_role("textbox", name="Username", exact=True).fill(ADMIN_EMAIL)
    page.get_by_role("textbox", name="Password", exact=True).fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def test_first_sign_in_enrols_then_the_login_asks_for_the_code(base: str) -> None:
    chromium = require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            password_step(page, base)
            # Restricted: every screen but enrolment is refused, so the dashboard goes there.
            expect(page.get_by_text("Set up a second factor")).to_be_visible()
            assert page.url.endswith("/admin#/security")
            page.get_by_role("button", name="Set up an authenticator app").click()
            expect(page.get_by_label("QR code")).to_be_visible()
            secret = page.get_by_test_id("totp-secret").inner_text()
            page.get_by_role("textbox", name="Code from the app").fill(code(secret))
            page.get_by_role("button", name="Turn on").click()
            codes = page.get_by_test_id("recovery-codes").inner_text().split()
            assert len(codes) == 10
            page.get_by_role("button", name="I have stored them").click()
            expect(page.get_by_text(ADMIN_EMAIL).first).to_be_visible()  # the users list

            page.get_by_role("button", name="Profile").click()
            page.get_by_role("menuitem", name="Logout").click()
            password_step(page, base)
            # The confirmation used this step's code; the next step's is within the drift.
            field = page.get_by_role("textbox", name="Code from your authenticator app")
            field.fill(code(secret, timedelta(seconds=30)))
            page.get_by_role("button", name="Verify").click()
            expect(page.get_by_role("menuitem", name="Users")).to_be_visible()
            page.get_by_role("menuitem", name="My account").click()
            on = "Authenticator app on; 10 recovery codes left."
            expect(page.get_by_text(on)).to_be_visible()
            # An admin's view of a user's factors: the first admin is user 1.
            page.goto(f"{base}/admin#/users/1/show")
            expect(page.get_by_test_id("user-mfa")).to_have_text(on)
        finally:
            browser.close()
