"""The dashboard's Webhooks screens (clients/admin, built) in Debian's headless Chromium,
served by the app at /admin: an admin creates an endpoint pointing at a local receiver,
copies its secret from the one dialog that shows it, and reads on the endpoint's page
the delivery of a user created meanwhile, which the receiver verified. A screenshot of
each screen goes to test-artifacts/admin/."""

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.browser import CHROMIUM_ARGS, UI_TIMEOUT_MS, require_chromium, served_app
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, REPO_ROOT, USER_PASSWORD
from tests.services import ADMIN_BUILD, require
from tests.webhook_receiver import Receiver, receiver_server

DIST = REPO_ROOT / "clients" / "admin" / "dist"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "admin"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with receiver_server() as receiver:
        yield receiver


def test_an_admin_creates_an_endpoint_and_reads_its_deliveries(
    receiver: Receiver, tmp_path: Path
) -> None:
    if not (DIST / "index.html").is_file():
        require(ADMIN_BUILD, f"{DIST} has no build")
    with (
        served_app(tmp_path, ADMIN_DIR=str(DIST), WEBHOOK_POLL_SECONDS="0.2") as port,
        sync_playwright() as playwright,
    ):
        base = f"http://localhost:{port}"
        browser = playwright.chromium.launch(
            executable_path=require_chromium(), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            _drive(page, base, receiver)
        finally:
            browser.close()
    assert errors == []


def _drive(page: Page, base: str, receiver: Receiver) -> None:
    page.goto(f"{base}/admin")
    page.get_by_role("textbox", name="Username", exact=True).fill(ADMIN_EMAIL)
    page.get_by_role("textbox", name="Password", exact=True).fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("menuitem", name="Webhooks").click()
    page.get_by_role("link", name="Create").click()

    page.get_by_role("textbox", name="URL").fill("ftp://nowhere.example.com/")
    page.get_by_role("checkbox", name="user.created").check()
    page.get_by_role("button", name="Create endpoint").click()
    expect(page.get_by_text("must start with http:// or https://")).to_be_visible()

    page.get_by_role("textbox", name="URL").fill(receiver.url())
    page.get_by_role("textbox", name="Description").fill("CRM sync")
    page.get_by_role("button", name="Create endpoint").click()
    secret_field = page.get_by_role("textbox", name="Signing secret")
    expect(secret_field).to_be_visible()
    secret = secret_field.input_value()
    assert secret.startswith("whsec_")
    receiver.secrets["/hook"] = secret
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "webhook-secret.png", full_page=True)
    page.get_by_role("button", name="Done").click()
    expect(page.get_by_text("No deliveries yet.")).to_be_visible()

    with httpx.Client(base_url=f"{base}{API}") as api:
        login = api.post("/auth/login", data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        headers = {"Authorization": f"Bearer {login.raise_for_status().json()['access_token']}"}
        user = {"email": "webhook.user@example.com", "name": "Hooked", "password": USER_PASSWORD}
        api.post("/users", json=user, headers=headers).raise_for_status()
    deadline = time.monotonic() + 10
    while not receiver.answered():
        assert time.monotonic() < deadline, "no delivery reached the receiver"
        time.sleep(0.05)
    [delivery] = receiver.received
    assert delivery.verified

    page.reload()
    expect(page.get_by_role("cell", name=delivery.webhook_id)).to_be_visible()
    expect(page.get_by_role("cell", name="delivered")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "webhook-deliveries.png", full_page=True)

    page.get_by_role("menuitem", name="Webhooks").click()
    expect(page.get_by_role("cell", name=receiver.url())).to_be_visible()
    page.screenshot(path=ARTIFACTS / "webhooks.png", full_page=True)
