"""The dashboard's API key screens, in Chromium against the built copy on PostgreSQL, with
the fixtures of test_admin_browser.py (a server, a database and a browser of this
module's own): the admin creates a key in My account (a blank name first, refused under
the field), reads its secret from the dialog, which it shows once, uses it with httpx,
revokes it after a confirmation and sees it refused; then revokes a plain user's key
from that user's page, and finds both in the audit trail. A plain user has My account's
keys and no one else's. Screenshots go to test-artifacts/admin/ beside the others.
"""

import re
from typing import Any

import httpx
from playwright.sync_api import BrowserContext, Page, expect

from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, USER_PASSWORD
from tests.test_admin_browser import (  # noqa: F401  (base, browser, dist, plain_user: fixtures)
    PLAIN_EMAIL,
    base,
    browser,
    dist,
    expect_notification,
    log_in,
    open_screen,
    page_errors,
    plain_user,
    screenshot,
)

KEY_SHAPE = re.compile(r"^uak_[A-Za-z0-9_-]{43}$")


def status_with_key(server: str, secret: str) -> int:
    with httpx.Client(base_url=f"{server}{API}") as api:
        return api.get("/users/me", headers={"Authorization": f"Bearer {secret}"}).status_code


def revoke_in_browser(page: Page, key_name: str) -> None:
    page.get_by_role("row").filter(has_text=key_name).get_by_role("button", name="Revoke").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(key_name)
    expect(dialog).to_contain_text("gets 401 from now on")


def test_keys_are_created_shown_once_used_and_revoked_in_the_dashboard(
    browser: BrowserContext,  # noqa: F811
    base: str,  # noqa: F811
    plain_user: dict[str, Any],  # noqa: F811
) -> None:
    browser.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page = browser.new_page()
    errors = page_errors(page)
    log_in(page, base, ADMIN_EMAIL, ADMIN_PASSWORD)
    page.get_by_role("menuitem", name="My account").click()
    expect(page.get_by_text("No API keys.")).to_be_visible()

    # The server's 422 shows under the field it names: a name of spaces is empty there.
    key_name = page.get_by_role("textbox", name="Key name", exact=True)
    key_name.fill("   ")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_text("must not be empty")).to_be_visible()
    screenshot(page, "14-api-key-create-refused")

    # Create: the secret is in the dialog, once.
    key_name.fill("nightly report")
    page.get_by_role("combobox", name="Scope").click()
    page.get_by_role("option", name=re.compile("^write")).click()
    page.get_by_role("spinbutton", name="Days until it expires").fill("7")
    page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("you will not see it again")
    secret = dialog.get_by_role("textbox", name="API key").input_value()
    assert KEY_SHAPE.fullmatch(secret), secret
    dialog.get_by_role("button", name="Copy").click()
    expect(dialog.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    screenshot(page, "15-api-key-created")
    # Escape would lose the secret, so it does not close the dialog: past MUI's closing
    # transition (under 0.3 s), it is still there.
    page.keyboard.press("Escape")
    page.wait_for_timeout(500)
    expect(dialog.get_by_role("textbox", name="API key")).to_have_value(secret)
    dialog.get_by_role("button", name="Done").click()
    expect(dialog).to_have_count(0)
    row = page.get_by_role("row").filter(has_text="nightly report")
    expect(row).to_contain_text(secret[:12])
    expect(row).to_contain_text("write")
    expect(row).to_contain_text("never")  # used, that is
    # Gone from the page: only the prefix remains.
    assert secret not in page.content()

    # The key works against the API, and the list says when it was last used.
    assert status_with_key(base, secret) == 200
    page.reload()
    expect(row).not_to_contain_text("never")
    screenshot(page, "16-my-api-keys")

    # Revoke, after a confirmation: the key is refused at once.
    revoke_in_browser(page, "nightly report")
    screenshot(page, "17-api-key-revoke-confirmation")
    page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    expect_notification(page, "API key revoked")
    expect(page.get_by_text("No API keys.")).to_be_visible()
    assert status_with_key(base, secret) == 401

    # An admin revokes a plain user's key, made by a script's owner through the API.
    with httpx.Client(base_url=f"{base}{API}") as api:
        made = api.post(
            "/users/me/tokens",
            json={"name": "plain script", "scope": "read"},
            headers={"Authorization": f"Bearer {plain_user['tokens'][0]}"},
        )
    plain_secret = made.raise_for_status().json()["secret"]
    assert status_with_key(base, plain_secret) == 200
    open_screen(page, base, f"/users/{plain_user['id']}/show")
    expect(page.get_by_role("link", name=PLAIN_EMAIL)).to_be_visible()
    plain_row = page.get_by_role("row").filter(has_text="plain script")
    expect(plain_row).to_contain_text("read")
    screenshot(page, "18-user-api-keys")
    revoke_in_browser(page, "plain script")
    page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    expect_notification(page, "API key revoked")
    expect(page.get_by_text("No API keys.")).to_be_visible()
    assert status_with_key(base, plain_secret) == 401

    # Both revocations are in the audit trail, by name.
    page.get_by_role("menuitem", name="Audit trail").click()
    page.get_by_role("combobox", name="Action").click()
    page.get_by_role("option", name="API key revoked").click()
    revocations = page.locator("tbody tr")
    expect(revocations).to_have_count(2)
    expect(revocations.filter(has_text="plain script")).to_contain_text(PLAIN_EMAIL)
    expect(revocations.filter(has_text="nightly report")).to_contain_text(ADMIN_EMAIL)

    # A plain user: keys in My account, none on another user's page.
    page.get_by_role("button", name="Profile").click()
    page.get_by_role("menuitem", name="Logout").click()
    log_in(page, base, PLAIN_EMAIL, USER_PASSWORD)
    page.get_by_role("menuitem", name="My account").click()
    expect(page.get_by_role("button", name="Create key")).to_be_visible()
    expect(page.get_by_text("No API keys.")).to_be_visible()
    open_screen(page, base, "/users/1/show")
    expect(page.get_by_role("link", name=ADMIN_EMAIL)).to_be_visible()
    expect(page.get_by_text("API keys")).to_have_count(0)
    page.close()
    assert errors == []
