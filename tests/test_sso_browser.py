"""Sign-in with an identity provider through the built dashboard in Debian's headless
Chromium: the login page's provider button, the real provider's own login and consent
pages (oidc-provider, tests/oidc), back to the dashboard logged in, and My account's
linked providers. Screenshots go to test-artifacts/sso/."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.browser import CHROMIUM_ARGS, UI_TIMEOUT_MS, require_chromium, served_app
from tests.helpers import REPO_ROOT, free_port
from tests.oidc_provider import oidc_provider
from tests.services import ADMIN_BUILD, require

DIST = REPO_ROOT / "clients" / "admin" / "dist"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "sso"
ACCOUNTS = {"ada": {"email": "ada@corp.example", "email_verified": True, "name": "Ada Corp"}}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not (DIST / "index.html").is_file():
        require(ADMIN_BUILD, f"{DIST} has no build")
    port = free_port()
    origin = f"http://localhost:{port}"
    with oidc_provider(ACCOUNTS, app=origin) as provider:
        providers = [provider.settings()]
        with served_app(
            tmp_path_factory.mktemp("sso-server"),
            port=port,
            AUTO_MIGRATE="true",
            ADMIN_DIR=str(DIST),
            OIDC_PROVIDERS=json.dumps(providers),
            SSO_ALLOWED_DOMAINS="corp.example",
        ):
            yield origin


@pytest.fixture
def page(base: str, tmp_path: Path) -> Iterator[Page]:
    chromium = require_chromium()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=tmp_path / "chromium-profile",
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            yield context.new_page()
        finally:
            context.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_sign_in_with_the_provider_from_the_login_page(base: str, page: Page) -> None:
    page.goto(f"{base}/admin/")
    button = page.get_by_role("link", name="Sign in with Corp SSO")
    expect(button).to_be_visible()
    shot(page, "1-login-page")
    button.click()
    # The provider's own pages: its login form, then its consent.
    page.locator("input[name=login]").fill("ada")
    page.locator("input[name=password]").fill("any-password")
    shot(page, "2-provider-login")
    page.locator("button[type=submit]").click()
    page.locator("button[type=submit]").click()
    # Back in the dashboard, logged in as the account the sign-in created.
    expect(page.get_by_text("ada@corp.example").first).to_be_visible()
    assert "sso_code" not in page.url
    shot(page, "3-signed-in")
    page.goto(f"{base}/admin/#/my-account")
    expect(page.get_by_test_id("identity")).to_have_text("corp: ada@corp.example")
    expect(page.get_by_role("button", name="Link Corp SSO")).to_be_visible()
    shot(page, "4-my-account")
    # Its only way to sign in: unlinking is refused, in the server's words.
    page.get_by_role("button", name="Unlink").click()
    expect(page.get_by_text("only way to sign in")).to_be_visible()
    shot(page, "5-unlink-refused")
