"""Invitations and the mailed-link pages of the built dashboard, in Chromium against the
app on PostgreSQL that mails through a real SMTP server (aiosmtpd, tests/smtp.py), with
PUBLIC_URL at the dashboard (<base>/admin), as a deployment that serves it sets it.

The admin invites a colleague from the users list and re-sends the invitation from the
user's page; the test reads both mails, and in a fresh browser the first link is refused
(revoked) while the second, after a too-short password, logs the colleague in. Then
"Forgot password?" on the login page mails a reset link, which sets a new password that
logs in (the invitation's no longer does); a verification link confirms a registered
address and, opened again, says it was used. Screenshots join the others in
test-artifacts/admin/.
"""

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.browser import CHROMIUM_ARGS, UI_TIMEOUT_MS, require_chromium, served_app
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, free_port
from tests.postgres import Server, session_database
from tests.smtp import MAIL_FROM, TOKEN, Mailbox, smtp_server, text_of
from tests.test_admin_browser import (  # noqa: F401  (dist: a fixture)
    dist,
    expect_notification,
    log_in,
    page_errors,
    screenshot,
)

INVITED_EMAIL = "katherine.johnson@example.com"
INVITED_NAME = "Katherine Johnson"
CHOSEN_PASSWORD = "Orbital-Mechanics-1962"
RESET_PASSWORD = "Trajectory-Math-1961"
REGISTERED_EMAIL = "dorothy.vaughan@example.com"
MAIL_SECONDS = 15


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    with smtp_server() as mailbox:
        yield mailbox


@pytest.fixture(scope="module")
def base(
    dist: Path,  # noqa: F811
    postgres: Server,
    mailbox: Mailbox,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("admin-invite-server")
    port = free_port()
    # localhost, where Chromium keeps the Secure refresh cookie over plain http.
    base = f"http://localhost:{port}"
    with (
        session_database(postgres) as database_url,
        served_app(
            workdir,
            port=port,
            DATABASE_URL=database_url,
            AUTO_MIGRATE="true",
            ADMIN_DIR=str(dist),
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(mailbox.port),
            SMTP_TLS="none",
            MAIL_FROM=MAIL_FROM,
            PUBLIC_URL=f"{base}/admin",
            INVITATIONS_ENABLED="true",
            PASSWORD_RESET_ENABLED="true",
            EMAIL_VERIFICATION="optional",
        ),
    ):
        yield base


@pytest.fixture(scope="module")
def chromium(base: str) -> Iterator[Browser]:
    # After the server: Playwright's sync API keeps an event loop running in this thread.
    executable = require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            yield browser
        finally:
            browser.close()


def fresh_page(chromium: Browser) -> tuple[BrowserContext, Page]:
    """A browser context of its own: no cookie, no storage, as on another person's machine."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    return context, context.new_page()


def links_to(mailbox: Mailbox, address: str, count: int) -> list[str]:
    """The links of the first `count` mails to this address, waiting for them to arrive
    (the app sends after its response)."""
    deadline = time.monotonic() + MAIL_SECONDS
    while True:
        mine = [message for message in mailbox.messages if message["To"] == address]
        if len(mine) >= count:
            break
        assert time.monotonic() < deadline, f"{len(mine)} of {count} mails to {address}"
        time.sleep(0.1)
    links = []
    for message in mine[:count]:
        text = text_of(message)
        url = next(word for word in text.split() if TOKEN.search(word))
        links.append(url)
    return links


def choose_password(page: Page, password: str, button: str) -> None:
    page.get_by_role("textbox", name="New password", exact=True).fill(password)
    page.get_by_role("textbox", name="Repeat the password", exact=True).fill(password)
    page.get_by_role("button", name=button).click()


def expect_logged_in_as(page: Page, base: str, name: str) -> None:
    expect(page.get_by_role("menuitem", name="Users")).to_be_visible()
    # The dashboard's own address: the used token has left the address bar.
    assert page.url.startswith(f"{base}/admin/#/"), page.url
    assert "token" not in page.url, page.url
    expect(page.get_by_role("button", name="Profile")).to_contain_text(name)


def login_status(base: str, email: str, password: str) -> int:
    with httpx.Client(base_url=f"{base}{API}") as api:
        login = api.post("/auth/login", data={"username": email, "password": password})
        return login.status_code


def test_an_invited_colleague_sets_a_password_then_resets_it_by_mail(
    chromium: Browser, base: str, mailbox: Mailbox
) -> None:
    # The admin invites a colleague from the users list.
    admin_context, page = fresh_page(chromium)
    errors = page_errors(page)
    log_in(page, base, ADMIN_EMAIL, ADMIN_PASSWORD)
    page.get_by_role("link", name="Invite").click()
    page.get_by_role("textbox", name="Email", exact=True).fill(INVITED_EMAIL)
    page.get_by_role("textbox", name="Name", exact=True).fill(INVITED_NAME)
    page.get_by_role("combobox", name="Role").click()
    page.get_by_role("option", name="Admin").click()
    screenshot(page, "19-invite")
    page.get_by_role("button", name="Send invitation").click()
    expect_notification(page, f"Invitation mailed to {INVITED_EMAIL}")
    page.wait_for_url(f"{base}/admin#/users/*/show")
    expect(page.get_by_text("invited", exact=True)).to_be_visible()

    # The same address again: the API's 409, under the field.
    page.goto(f"{base}/admin#/invite")
    page.get_by_role("textbox", name="Email", exact=True).fill(INVITED_EMAIL)
    page.get_by_role("textbox", name="Name", exact=True).fill(INVITED_NAME)
    page.get_by_role("button", name="Send invitation").click()
    expect(page.locator("form").get_by_text("already")).to_be_visible()

    # It is listed among the pending invitations; the admin is not.
    page.goto(f"{base}/admin#/users")
    page.get_by_role("button", name="Pending invitations").click()
    expect(page.get_by_role("cell", name=INVITED_EMAIL)).to_be_visible()
    expect(page.get_by_role("cell", name=ADMIN_EMAIL)).to_have_count(0)
    screenshot(page, "20-pending-invitations")

    # Re-sent from the user's page: a second mail, and the first link stops working.
    page.get_by_role("cell", name=INVITED_NAME, exact=True).click()
    page.get_by_role("button", name="Re-send invitation").click()
    expect_notification(page, "the previous link no longer works")
    screenshot(page, "21-invitation-re-sent")
    first, second = links_to(mailbox, INVITED_EMAIL, 2)
    assert first.startswith(f"{base}/admin/accept-invite#token="), first

    # The colleague, in a browser of their own: the revoked link is refused.
    invited_context, invited = fresh_page(chromium)
    errors += page_errors(invited)
    invited.goto(first)
    choose_password(invited, CHOSEN_PASSWORD, "Set my password")
    expect(invited.get_by_role("alert")).to_contain_text("This link is not valid")
    screenshot(invited, "22-accept-invite-revoked-link")
    invited.goto(second)
    expect(invited.get_by_role("heading", name="Accept your invitation")).to_be_visible()
    # Two different passwords, then a too-short one: each refused under its field.
    invited.get_by_role("textbox", name="New password", exact=True).fill(CHOSEN_PASSWORD)
    invited.get_by_role("textbox", name="Repeat the password", exact=True).fill("Something-Else-12")
    invited.get_by_role("button", name="Set my password").click()
    expect(invited.get_by_text("The two passwords differ")).to_be_visible()
    choose_password(invited, "too-short", "Set my password")
    expect(invited.get_by_text("must be at least 12 characters long")).to_be_visible()
    screenshot(invited, "23-accept-invite")
    choose_password(invited, CHOSEN_PASSWORD, "Set my password")
    expect_logged_in_as(invited, base, INVITED_NAME)
    screenshot(invited, "24-invitation-accepted")
    # Logged in by the cookie the answer set: a reload keeps the session.
    invited.reload()
    expect_logged_in_as(invited, base, INVITED_NAME)
    invited_context.close()

    # Accepted: the admin's page no longer offers to re-send.
    page.reload()
    expect(page.get_by_text("active", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Re-send invitation")).to_have_count(0)
    admin_context.close()

    # Forgot password?, from the login page of a fresh browser.
    context, forgetful = fresh_page(chromium)
    errors += page_errors(forgetful)
    forgetful.goto(f"{base}/admin")
    forgetful.get_by_role("link", name="Forgot password?").click()
    forgetful.get_by_role("textbox", name="Email").fill(INVITED_EMAIL)
    forgetful.get_by_role("button", name="Mail me a link").click()
    expect(forgetful.get_by_role("alert")).to_contain_text("a link is on its way")
    screenshot(forgetful, "25-forgot-password")
    (reset_link,) = links_to(mailbox, INVITED_EMAIL, 3)[2:]
    assert reset_link.startswith(f"{base}/admin/reset-password#token="), reset_link
    forgetful.goto(reset_link)
    expect(forgetful.get_by_role("heading", name="Choose a new password")).to_be_visible()
    screenshot(forgetful, "26-reset-password")
    choose_password(forgetful, RESET_PASSWORD, "Change my password")
    expect_logged_in_as(forgetful, base, INVITED_NAME)

    # Log out, and in again with the new password; the chosen one no longer works.
    forgetful.get_by_role("button", name="Profile").click()
    forgetful.get_by_role("menuitem", name="Logout").click()
    expect(forgetful.get_by_role("button", name="Sign in")).to_be_visible()
    log_in(forgetful, base, INVITED_EMAIL, RESET_PASSWORD)
    assert login_status(base, INVITED_EMAIL, CHOSEN_PASSWORD) == 401

    # The reset link works once.
    forgetful.goto(reset_link)
    choose_password(forgetful, "Yet-Another-Pass-77", "Change my password")
    expect(forgetful.get_by_role("alert")).to_contain_text("already been used")
    context.close()
    assert errors == []


def test_a_verification_link_confirms_the_address_once(
    chromium: Browser, base: str, mailbox: Mailbox
) -> None:
    with httpx.Client(base_url=f"{base}{API}") as api:
        registered = api.post(
            "/auth/register",
            json={"email": REGISTERED_EMAIL, "password": CHOSEN_PASSWORD, "name": "Dorothy"},
        )
        assert registered.status_code == 200, registered.text
    (link,) = links_to(mailbox, REGISTERED_EMAIL, 1)
    assert link.startswith(f"{base}/admin/verify-email#token="), link
    context, page = fresh_page(chromium)
    errors = page_errors(page)
    page.goto(link)
    verified = f"Your address {REGISTERED_EMAIL} is verified"
    expect(page.get_by_role("alert")).to_contain_text(verified)
    screenshot(page, "27-email-verified")
    page.reload()
    expect(page.get_by_role("alert")).to_contain_text("already been used")
    # Without its token, the page says what is missing.
    page.goto(f"{base}/admin/verify-email")
    expect(page.get_by_role("alert")).to_contain_text("needs the whole link")
    context.close()
    assert errors == []
