"""Passkeys in the built dashboard, in Chromium with a CDP virtual authenticator (a
platform authenticator with user verification, which answers at once): the admin adds
a passkey in My account, renames it, logs out, signs in with it alone, and removes it.
The app is served on localhost with RP_ID=localhost, the one host name a browser takes
passkeys from over plain http. Screenshots go to test-artifacts/admin/ beside the others.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from tests.browser import CHROMIUM_ARGS, UI_TIMEOUT_MS, require_chromium, served_app
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, free_port
from tests.test_admin_browser import (  # noqa: F401  (dist: a fixture)
    dist,
    expect_notification,
    log_in,
    page_errors,
    screenshot,
)


@pytest.fixture(scope="module")
def base(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    port = free_port()
    with served_app(
        tmp_path_factory.mktemp("passkeys-server"),
        port=port,
        AUTO_MIGRATE="true",
        ADMIN_DIR=str(dist),
        RP_ID="localhost",
        WEBAUTHN_ORIGINS=f"http://localhost:{port}",
        PASSKEY_LOGIN="true",
    ):
        yield f"http://localhost:{port}"


@pytest.fixture(scope="module")
def browser(base: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
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


def add_virtual_authenticator(browser: BrowserContext, page: Page) -> dict[str, Any]:
    """A platform authenticator for this page, through the DevTools protocol: it keeps
    discoverable credentials, verifies the user, and needs no touch."""
    cdp = browser.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    added = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    credentials = cdp.send("WebAuthn.getCredentials", {"authenticatorId": added["authenticatorId"]})
    return {"cdp": cdp, "id": added["authenticatorId"], "credentials": credentials["credentials"]}


def stored_credentials(authenticator: dict[str, Any]) -> list[dict[str, Any]]:
    found = authenticator["cdp"].send(
        "WebAuthn.getCredentials", {"authenticatorId": authenticator["id"]}
    )
    credentials: list[dict[str, Any]] = found["credentials"]
    return credentials


def test_a_passkey_is_added_in_my_account_and_signs_in_alone(
    browser: BrowserContext, base: str
) -> None:
    page = browser.new_page()
    errors = page_errors(page)
    authenticator = add_virtual_authenticator(browser, page)
    assert authenticator["credentials"] == []

    log_in(page, base, ADMIN_EMAIL, ADMIN_PASSWORD)
    page.get_by_role("menuitem", name="My account").click()
    expect(page.get_by_text("No passkeys.")).to_be_visible()
    page.get_by_role("textbox", name="Passkey name").fill("Office laptop")
    page.get_by_role("button", name="Add a passkey").click()
    expect_notification(page, "Passkey added")
    passkeys = page.get_by_role("table", name="Passkeys")
    expect(passkeys.get_by_role("cell", name="Office laptop")).to_be_visible()
    (credential,) = stored_credentials(authenticator)
    assert credential["isResidentCredential"] is True
    assert credential["rpId"] == "localhost"
    screenshot(page, "20-passkey-added")

    passkeys.get_by_role("button", name="Rename").click()
    page.get_by_role("dialog").get_by_role("textbox", name="New name").fill("Work laptop")
    page.get_by_role("dialog").get_by_role("button", name="Save").click()
    expect(passkeys.get_by_role("cell", name="Work laptop")).to_be_visible()

    page.get_by_role("button", name="Profile").click()
    page.get_by_role("menuitem", name="Logout").click()
    sign_in = page.get_by_role("button", name="Sign in with a passkey")
    expect(sign_in).to_be_visible()
    screenshot(page, "21-login-with-passkey")
    sign_in.click()
    expect(page.get_by_role("menuitem", name="Users")).to_be_visible()
    assert [c for c in browser.cookies() if c["name"] == "refresh_token"]
    page.get_by_role("menuitem", name="My account").click()
    expect(passkeys.get_by_role("cell", name="Work laptop")).to_be_visible()
    expect(passkeys.get_by_role("cell", name="never")).to_have_count(0)  # used just now
    screenshot(page, "22-signed-in-with-passkey")

    # With a passkey, the password alone no longer signs in: the passkey is the second step.
    page.get_by_role("button", name="Profile").click()
    page.get_by_role("menuitem", name="Logout").click()
    page.get_by_role("textbox", name="Username", exact=True).fill(ADMIN_EMAIL)
    page.get_by_role("textbox", name="Password", exact=True).fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    second_step = page.get_by_role("button", name="Use a passkey")
    expect(second_step).to_be_visible()
    screenshot(page, "23-passkey-as-second-factor")
    second_step.click()
    expect(page.get_by_role("menuitem", name="Users")).to_be_visible()
    page.get_by_role("menuitem", name="My account").click()

    passkeys.get_by_role("button", name="Remove").click()
    page.get_by_role("dialog").get_by_role("button", name="Remove").click()
    expect_notification(page, "Passkey removed")
    expect(page.get_by_text("No passkeys.")).to_be_visible()
    with httpx.Client(base_url=f"{base}{API}") as api:
        trail = api.get(
            "/audit",
            params={"action": "user.passkey_remove"},
            headers={"Authorization": "Bearer " + admin_token(api)},
        )
    assert [event["details"]["name"] for event in trail.json()] == ["Work laptop"]
    assert errors == []


def admin_token(api: httpx.Client) -> str:
    login = api.post("/auth/login", data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    token: str = login.raise_for_status().json()["access_token"]
    return token
