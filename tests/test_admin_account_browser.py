"""My account's own-data cards in Chromium, against the built dashboard on PostgreSQL,
mailing through a real SMTP server: a user changes their email (the session's proof is
made old first, so the password prompt asks and the change is sent again), confirms it
from the mailed link in another browser, exports their data as a file, and deletes the
account after its confirmation (scheduled: ACCOUNT_DELETION=grace), which an admin then
finds under Scheduled deletions. Screenshots join the others in test-artifacts/admin/.
"""

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.browser import CHROMIUM_ARGS, UI_TIMEOUT_MS, require_chromium, served_app
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, free_port
from tests.postgres import Server, _connect_url, session_database
from tests.smtp import MAIL_FROM, Mailbox, smtp_server, text_of
from tests.test_admin_browser import (  # noqa: F401  (dist: a fixture)
    dist,
    expect_notification,
    log_in,
    page_errors,
    screenshot,
)
from tests.test_admin_invite_browser import MAIL_SECONDS, links_to

EMAIL = "mary.jackson@example.com"
NEW_EMAIL = "mary.w.jackson@example.com"
PASSWORD = "Wind-Tunnel-Tests-1958"


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    with smtp_server() as mailbox:
        yield mailbox


@pytest.fixture(scope="module")
def served(
    dist: Path,  # noqa: F811
    postgres: Server,
    mailbox: Mailbox,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str]]:
    """The app's address, and its database's URL."""
    workdir = tmp_path_factory.mktemp("admin-account-server")
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
            ACCOUNT_DELETION="grace",
        ),
    ):
        yield base, database_url


@pytest.fixture(scope="module")
def chromium(served: tuple[str, str]) -> Iterator[Browser]:
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


def age_every_proof(database_url: str) -> None:
    """Make every session's last proof an hour old, as if the login were that long ago.
    In a thread of its own: Playwright's event loop runs in this one."""

    async def age() -> None:
        connection = await asyncpg.connect(_connect_url(database_url))
        try:
            await connection.execute(
                "UPDATE sessions SET authenticated_at = authenticated_at - interval '1 hour'"
            )
        finally:
            await connection.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, age()).result()


def new_page(chromium: Browser) -> Page:
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(UI_TIMEOUT_MS)
    return context.new_page()


def test_a_user_changes_their_email_exports_their_data_and_deletes_the_account(
    chromium: Browser, served: tuple[str, str], mailbox: Mailbox
) -> None:
    base, database_url = served
    with httpx.Client(base_url=f"{base}{API}") as api:
        registered = api.post(
            "/auth/register", json={"email": EMAIL, "password": PASSWORD, "name": "Mary"}
        )
        assert registered.status_code == 200, registered.text

    page = new_page(chromium)
    errors = page_errors(page)
    log_in(page, base, EMAIL, PASSWORD)
    page.get_by_role("menuitem", name="My account").click()

    # The proof is old: the change asks for the password, then goes through.
    age_every_proof(database_url)
    page.get_by_role("textbox", name="New email").fill(NEW_EMAIL)
    page.get_by_role("button", name="Change email").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Confirm it is you")
    dialog.get_by_label("Password").fill("not-the-password")
    dialog.get_by_role("button", name="Confirm").click()
    expect(dialog.get_by_role("alert")).to_contain_text("incorrect")
    dialog.get_by_label("Password").fill(PASSWORD)
    screenshot(page, "40-reauthentication-prompt")
    dialog.get_by_role("button", name="Confirm").click()
    expect_notification(page, "A link to confirm the new address is on its way")

    # The link, opened in another browser, makes the change.
    (link,) = links_to(mailbox, NEW_EMAIL, 1)
    assert link.startswith(f"{base}/admin/confirm-email#token="), link
    assert f"from {EMAIL} to {NEW_EMAIL}" in notice_to_old_address(mailbox)
    elsewhere = new_page(chromium)
    elsewhere.goto(link)
    expect(elsewhere.get_by_role("alert")).to_contain_text(f"address is now {NEW_EMAIL}")
    screenshot(elsewhere, "41-email-change-confirmed")
    elsewhere.context.close()

    # The session that asked stays signed in: its export carries the new address.
    page.reload()
    with page.expect_download() as downloading:
        page.get_by_role("button", name="Export my data").click()
    download = downloading.value
    assert download.suggested_filename.startswith("account-")
    document = json.loads(Path(download.path()).read_text())
    assert document["profile"]["email"] == NEW_EMAIL
    assert {"sessions", "api_keys", "audit_events"} <= document.keys()

    # Delete, after the confirmation: signed out, the deletion scheduled.
    page.get_by_role("button", name="Delete account").click()
    confirm = page.get_by_role("dialog")
    expect(confirm).to_contain_text("Delete your account?")
    screenshot(page, "42-delete-account-confirm")
    confirm.get_by_role("button", name="Delete my account").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()

    # An admin finds it under Scheduled deletions.
    log_in(page, base, ADMIN_EMAIL, ADMIN_PASSWORD)
    page.get_by_role("button", name="Scheduled deletions").click()
    rows = page.get_by_role("row").filter(has_text=NEW_EMAIL)
    expect(rows).to_contain_text("deletion scheduled")
    expect(page.get_by_role("row").filter(has_text=ADMIN_EMAIL)).to_have_count(0)
    screenshot(page, "43-scheduled-deletions")
    page.context.close()
    assert errors == []
    # Its owner's login keeps it.
    with httpx.Client(base_url=f"{base}{API}") as api:
        login = api.post("/auth/login", data={"username": NEW_EMAIL, "password": PASSWORD})
        assert login.json()["deletion_cancelled"] is True


def notice_to_old_address(mailbox: Mailbox) -> str:
    """The text of the notice mailed to the address being left, once it has arrived."""
    deadline = time.monotonic() + MAIL_SECONDS
    while not (mine := [m for m in mailbox.messages if m["To"] == EMAIL]):
        assert time.monotonic() < deadline, f"no notice to {EMAIL}"
        time.sleep(0.1)
    return text_of(mine[0])
