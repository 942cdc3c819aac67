"""Sign-in with identity providers, against a real OpenID Connect provider (panva's
oidc-provider, started once for the module) and a stand-in of GitHub's endpoints: the
whole flow through HTTP, as a browser follows it, on SQLite and on PostgreSQL."""

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update
from typer.testing import CliRunner

from backend.auth.models import SsoFlow
from backend.cli import app as cli
from backend.clock import Clock
from backend.config import Settings, get_settings
from backend.main import create_app
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    CHECKED,
    USER_PASSWORD,
    bearer,
    free_port,
    login,
    make_settings,
)
from tests.oidc_provider import (
    APP,
    GitHubStandIn,
    GitHubUser,
    OidcProvider,
    forget_providers,
    github_stand_in,
    new_keys,
    oidc_provider,
    sso_code,
    through_provider,
)
from tests.test_mfa import STEP, code_at, enrol

ACCOUNTS: dict[str, dict[str, Any]] = {
    "ada": {"email": "ada@corp.example", "email_verified": True, "name": "Ada Corp"},
    "root": {
        "email": "root@corp.example",
        "email_verified": True,
        "name": "Root",
        "groups": ["staff", "it-admins"],
    },
    "bob": {"email": "bob@corp.example", "email_verified": False, "name": "Bob"},
    "finn": {"email": "finn@corp.example", "name": "Finn"},  # no email_verified at all
    "gus": {"email": "gus@corp.example", "email_verified": True, "name": "Gus\u0007"},
    "eve": {"email": "eve@elsewhere.example", "email_verified": True, "name": "Eve"},
    "carl": {"email": "carl@partner.example", "email_verified": True, "name": "Carl"},
    "dora": {"email": "dora@partner.example", "email_verified": False, "name": "Dora"},
}
SSO_ONLY = "sso-only.example"
# For what the database does not change (the provider's side, the routes' checks): once.
ON_SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def oidc() -> Iterator[OidcProvider]:
    with oidc_provider(ACCOUNTS, slugs=("corp", "mapped")) as provider:
        yield provider


@pytest.fixture(scope="module")
def github() -> Iterator[GitHubStandIn]:
    with github_stand_in() as stand_in:
        yield stand_in


@pytest.fixture
def settings(database_url: str, oidc: OidcProvider, github: GitHubStandIn) -> Settings:
    mapped = oidc.settings(
        "mapped",
        roles_claim="groups",
        roles={"it-admins": "admin", "staff": "user"},
        trust_email=True,
    )
    return make_settings(
        database_url,
        OIDC_PROVIDERS=[oidc.settings(), mapped, github.settings()],
        SSO_ALLOWED_DOMAINS=["corp.example", SSO_ONLY],
        SSO_ONLY_DOMAINS=[SSO_ONLY],
    )


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A browser: the app at https://testserver, the providers over the network, cookies
    kept for each."""
    async with httpx.AsyncClient(
        base_url=APP,
        mounts={f"{APP}": httpx.ASGITransport(app=app)},
        event_hooks=CHECKED,
        timeout=10,
    ) as client:
        yield client


async def start(browser: httpx.AsyncClient, slug: str = "corp", **params: str) -> httpx.Response:
    forget_providers(browser)
    return await browser.get(
        f"{API}/auth/sso/{slug}/authorize", params={"return_to": "/landing", **params}
    )


async def sign_in(browser: httpx.AsyncClient, account: str, slug: str = "corp") -> httpx.Response:
    """The whole trip: start, the provider's pages, back at the callback."""
    return await through_provider(browser, await start(browser, slug), account)


async def exchange(browser: httpx.AsyncClient, code: str) -> httpx.Response:
    return await browser.post(f"{API}/auth/sso/exchange", json={"code": code})


async def signed_in(browser: httpx.AsyncClient, account: str, slug: str = "corp") -> dict[str, Any]:
    response = await exchange(browser, sso_code(await sign_in(browser, account, slug)))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def code_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["code"]


async def audit(client: httpx.AsyncClient, action: str) -> list[dict[str, Any]]:
    admin = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
    response = await client.get(f"{API}/audit", params={"action": action}, headers=admin)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()
    return events


@ON_SQLITE
async def test_providers_are_listed_for_the_sign_in_page(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{API}/auth/sso/providers")
    assert response.status_code == 200
    assert [(p["slug"], p["name"]) for p in response.json()] == [
        ("corp", "Corp SSO"),
        ("mapped", "Corp SSO"),
        ("github", "GitHub"),
    ]
    assert response.json()[0]["authorize_url"] == f"{API}/auth/sso/corp/authorize"


async def test_first_sign_in_creates_the_account_just_in_time(
    browser: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    started = await start(browser)
    assert started.status_code == 302
    location = parse_qs(urlsplit(started.headers["location"]).query)
    assert location["code_challenge_method"] == ["S256"]
    assert {"state", "nonce", "code_challenge"} <= location.keys()
    assert "sso_state=" in started.headers["set-cookie"]
    assert "HttpOnly" in started.headers["set-cookie"]

    back = await through_provider(browser, started, "ada")
    assert back.status_code == 303
    assert back.headers["location"].startswith("/landing?sso_code=")
    tokens = (await exchange(browser, sso_code(back))).json()
    assert tokens["user"]["email"] == "ada@corp.example"
    assert tokens["user"]["name"] == "Ada Corp"
    assert tokens["user"]["role"] == "user"
    assert tokens["user"]["is_verified"] is True
    me = await client.get(f"{API}/users/me", headers=bearer(tokens["access_token"]))
    assert me.json()["email"] == "ada@corp.example"
    identities = await client.get(
        f"{API}/users/me/identities", headers=bearer(tokens["access_token"])
    )
    [identity] = identities.json()
    assert (identity["provider"], identity["subject"]) == ("corp", "ada")
    assert identity["last_used_at"] is not None
    [created] = [e for e in await audit(client, "user.create") if "sso" in e["details"]]
    assert created["details"] == {"email": "ada@corp.example", "role": "user", "sso": "corp"}

    # The second sign-in finds the identity: the same account.
    again = await signed_in(browser, "ada")
    assert again["user"]["id"] == tokens["user"]["id"]


async def test_the_one_time_code_works_once(browser: httpx.AsyncClient) -> None:
    code = sso_code(await sign_in(browser, "ada"))
    assert (await exchange(browser, code)).status_code == 200
    assert code_of(await exchange(browser, code)) == (400, "sso_exchange_code_invalid")
    assert code_of(await exchange(browser, "forged")) == (400, "sso_exchange_code_invalid")


@ON_SQLITE
async def test_the_one_time_code_expires(browser: httpx.AsyncClient, clock: Clock) -> None:
    code = sso_code(await sign_in(browser, "ada"))
    clock.offset += timedelta(seconds=61)
    assert code_of(await exchange(browser, code)) == (400, "sso_exchange_code_invalid")


@ON_SQLITE
async def test_cookie_transport_for_the_dashboard(browser: httpx.AsyncClient) -> None:
    code = sso_code(await sign_in(browser, "ada"))
    response = await browser.post(
        f"{API}/auth/sso/exchange",
        params={"transport": "cookie"},
        json={"code": code},
        headers={"Origin": APP, "X-Requested-With": "fetch"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["refresh_token"] is None
    assert "refresh_token=" in response.headers["set-cookie"]


@ON_SQLITE
async def test_a_name_our_rules_refuse_is_replaced_by_the_email_s_local_part(
    browser: httpx.AsyncClient,
) -> None:
    assert (await signed_in(browser, "gus"))["user"]["name"] == "gus"


@ON_SQLITE
async def test_a_role_is_mapped_from_a_groups_claim(browser: httpx.AsyncClient) -> None:
    assert (await signed_in(browser, "root", "mapped"))["user"]["role"] == "admin"
    assert (await signed_in(browser, "ada", "mapped"))["user"]["role"] == "user"


@ON_SQLITE
async def test_a_trusted_provider_s_emails_count_as_verified(
    browser: httpx.AsyncClient,
) -> None:
    # Finn's provider says nothing of his address; "mapped" is trusted to have checked it.
    assert code_of(await sign_in(browser, "finn")) == (403, "sso_email_not_verified")
    assert (await signed_in(browser, "finn", "mapped"))["user"]["email"] == "finn@corp.example"
    # An explicit false is believed from any provider.
    assert code_of(await sign_in(browser, "bob", "mapped")) == (403, "sso_email_not_verified")


async def test_a_domain_not_allowed_gets_no_account(
    browser: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    refused = await sign_in(browser, "eve")
    assert code_of(refused) == (403, "sso_domain_not_allowed")
    [event] = await audit(client, "user.sso_refuse")
    assert event["details"]["code"] == "sso_domain_not_allowed"
    assert event["details"]["email"] == "eve@elsewhere.example"


async def test_an_email_the_provider_has_not_verified_signs_nobody_in(
    browser: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    assert code_of(await sign_in(browser, "bob")) == (403, "sso_email_not_verified")
    await register_at(client, "dora@partner.example")
    assert code_of(await sign_in(browser, "dora")) == (403, "sso_email_not_verified")


async def register_at(client: httpx.AsyncClient, email: str) -> dict[str, Any]:
    response = await client.post(
        f"{API}/auth/register", json={"email": email, "name": "Local", "password": USER_PASSWORD}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def verify(app: FastAPI, email: str) -> None:
    from backend.models import User  # the row, as a mailed link's use would leave it

    async with app.state.runtime.sessionmaker() as db:
        await db.exec(update(User).where(User.email == email).values(is_verified=True))  # type: ignore[arg-type]
        await db.commit()


async def test_an_existing_account_is_linked_only_when_both_sides_verified(
    app: FastAPI, browser: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    local = await register_at(client, "carl@partner.example")
    # The local address is not verified: the owner must log in and link.
    assert code_of(await sign_in(browser, "carl")) == (409, "sso_link_required")
    await verify(app, "carl@partner.example")
    tokens = await signed_in(browser, "carl")
    assert tokens["user"]["id"] == local["user"]["id"]
    [event] = await audit(client, "user.identity_link")
    assert event["details"] == {
        "provider": "corp",
        "subject": "carl",
        "email": "carl@partner.example",
        "automatic": True,
    }


async def test_link_and_unlink_from_my_account(
    browser: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    # Dora's address is not verified at the provider: she links it herself, logged in.
    local = await register_at(client, "dora@partner.example")
    headers = bearer(local["access_token"])
    started = await browser.post(
        f"{API}/users/me/identities/corp", params={"return_to": "/account"}, headers=headers
    )
    assert started.status_code == 200, started.text
    forget_providers(browser)
    response = await browser.get(started.json()["authorization_url"])
    back = await through_provider(browser, response, "dora")
    assert back.status_code == 303
    assert back.headers["location"] == "/account?sso_linked=corp"
    [identity] = (await client.get(f"{API}/users/me/identities", headers=headers)).json()
    assert identity["subject"] == "dora"
    tokens = await signed_in(browser, "dora")
    assert tokens["user"]["id"] == local["user"]["id"]

    # Someone else's identity cannot be linked to a second account.
    other = await register_at(client, "other@partner.example")
    started = await browser.post(
        f"{API}/users/me/identities/corp",
        params={"return_to": "/account"},
        headers=bearer(other["access_token"]),
    )
    forget_providers(browser)
    taken = await through_provider(
        browser, await browser.get(started.json()["authorization_url"]), "dora"
    )
    assert code_of(taken) == (409, "identity_taken")

    unlinked = await client.delete(f"{API}/users/me/identities/{identity['id']}", headers=headers)
    assert unlinked.status_code == 204
    assert (await client.get(f"{API}/users/me/identities", headers=headers)).json() == []
    gone = await client.delete(f"{API}/users/me/identities/{identity['id']}", headers=headers)
    assert code_of(gone) == (404, "identity_not_found")
    assert len(await audit(client, "user.identity_unlink")) == 1


async def test_the_last_way_to_sign_in_cannot_be_unlinked(
    browser: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    tokens = await signed_in(browser, "ada")  # just in time: no password
    headers = bearer(tokens["access_token"])
    [identity] = (await client.get(f"{API}/users/me/identities", headers=headers)).json()
    refused = await client.delete(f"{API}/users/me/identities/{identity['id']}", headers=headers)
    assert code_of(refused) == (409, "last_sign_in_method")
    # Nor by an admin.
    admin = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
    user_id = tokens["user"]["id"]
    by_admin = await client.delete(
        f"{API}/users/{user_id}/identities/{identity['id']}", headers=admin
    )
    assert code_of(by_admin) == (409, "last_sign_in_method")
    listed = await client.get(f"{API}/users/{user_id}/identities", headers=admin)
    assert [i["provider"] for i in listed.json()] == ["corp"]


async def test_an_admin_unlinks_an_identity(
    app: FastAPI, browser: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    local = await register_at(client, "carl@partner.example")
    await verify(app, "carl@partner.example")
    await signed_in(browser, "carl")
    admin = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
    user_id = local["user"]["id"]
    [identity] = (await client.get(f"{API}/users/{user_id}/identities", headers=admin)).json()
    response = await client.delete(
        f"{API}/users/{user_id}/identities/{identity['id']}", headers=admin
    )
    assert response.status_code == 204
    [event] = await audit(client, "user.identity_unlink")
    assert event["target_id"] == user_id
    assert event["actor_id"] != user_id


async def test_sso_only_domains_refuse_passwords(client: httpx.AsyncClient) -> None:
    email = f"someone@{SSO_ONLY}"
    body = {"email": email, "name": "Someone", "password": USER_PASSWORD}
    assert code_of(await client.post(f"{API}/auth/register", json=body)) == (403, "sso_required")
    login_form = {"username": email, "password": USER_PASSWORD}
    assert code_of(await client.post(f"{API}/auth/login", data=login_form)) == (
        403,
        "sso_required",
    )
    forgot = await client.post(f"{API}/auth/password/forgot", json={"email": email})
    assert code_of(forgot) == (403, "sso_required")


async def test_a_deactivated_user_is_refused_at_the_callback(
    browser: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    user_id = (await signed_in(browser, "ada"))["user"]["id"]
    admin = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
    patched = await client.patch(f"{API}/users/{user_id}", json={"is_active": False}, headers=admin)
    assert patched.status_code == 200
    assert code_of(await sign_in(browser, "ada")) == (403, "account_deactivated")
    [event] = await audit(client, "user.sso_refuse")
    assert event["target_id"] == user_id


async def test_a_replayed_state_is_refused(browser: httpx.AsyncClient) -> None:
    started = await start(browser)
    back = await through_provider(browser, started, "ada")
    assert back.status_code == 303
    # The same callback again: its trip was used.
    callback = back.request.url
    assert code_of(await browser.get(callback)) == (400, "sso_state_invalid")


async def test_a_forged_state_or_another_browser_is_refused(
    app: FastAPI, browser: httpx.AsyncClient
) -> None:
    started = await start(browser)
    state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
    callback = f"{API}/auth/sso/corp/callback"
    forged = await browser.get(callback, params={"state": "forged", "code": "x"})
    assert code_of(forged) == (400, "sso_state_invalid")
    # The right state from a browser without the cookie (an attacker's link).
    async with httpx.AsyncClient(
        base_url=APP, mounts={APP: httpx.ASGITransport(app=app)}, event_hooks=CHECKED
    ) as other:
        stranger = await other.get(callback, params={"state": state, "code": "x"})
    assert code_of(stranger) == (400, "sso_state_invalid")


@ON_SQLITE
async def test_an_expired_flow_is_refused(browser: httpx.AsyncClient, clock: Clock) -> None:
    started = await start(browser)
    clock.offset += timedelta(minutes=11)
    assert code_of(await through_provider(browser, started, "ada")) == (400, "sso_flow_expired")


@ON_SQLITE
async def test_a_wrong_nonce_is_refused(app: FastAPI, browser: httpx.AsyncClient) -> None:
    started = await start(browser)
    # The trip's record now expects another nonce than the provider put in the ID token.
    async with app.state.runtime.sessionmaker() as db:
        await db.exec(update(SsoFlow).values(nonce="another-nonce"))
        await db.commit()
    refused = await through_provider(browser, started, "ada")
    assert code_of(refused) == (502, "sso_id_token_invalid")
    assert "nonce" in refused.json()["detail"]


async def test_a_code_the_provider_refuses(app: FastAPI, browser: httpx.AsyncClient) -> None:
    back = await sign_in(browser, "ada")
    assert back.status_code == 303
    # The trip made usable again: the provider refuses its code a second time.
    async with app.state.runtime.sessionmaker() as db:
        await db.exec(update(SsoFlow).values(used_at=None))
        await db.commit()
    browser.cookies.set("sso_state", parse_qs(back.request.url.query.decode())["state"][0])
    again = await browser.get(back.request.url)
    assert code_of(again) == (400, "sso_code_rejected")


@ON_SQLITE
async def test_the_providers_key_rotation_and_a_token_signed_by_another_key(
    browser: httpx.AsyncClient, oidc: OidcProvider
) -> None:
    original = oidc.keys
    try:
        await signed_in(browser, "ada")  # the app now holds the key k1
        oidc.restart(new_keys("k2"))  # a rotation: a key id the app has not seen
        await signed_in(browser, "ada")
        # A token signed by another key under a key id the app knows.
        oidc.restart(new_keys("k2"))
        refused = await sign_in(browser, "ada")
        assert code_of(refused) == (502, "sso_id_token_invalid")
    finally:
        oidc.restart(original)


@ON_SQLITE
async def test_a_provider_that_is_down_is_a_503(database_url: str) -> None:
    dead = {
        "slug": "dead",
        "name": "Dead",
        "issuer": f"http://127.0.0.1:{free_port()}",
        "client_id": "x",
        "client_secret": "y",
    }
    app = create_app(make_settings(database_url, OIDC_PROVIDERS=[dead]))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=APP, event_hooks=CHECKED
        ) as client,
    ):
        response = await client.get(f"{API}/auth/sso/dead/authorize")
        assert code_of(response) == (503, "sso_provider_unavailable")
        assert response.headers["retry-after"] == "30"


@ON_SQLITE
async def test_a_provider_that_answers_badly_is_a_502(
    database_url: str, github: GitHubStandIn
) -> None:
    # The GitHub stand-in has no discovery document: 404 at its well-known address.
    wrong = {
        "slug": "wrong",
        "name": "Wrong",
        "issuer": github.url,
        "client_id": "x",
        "client_secret": "y",
    }
    app = create_app(make_settings(database_url, OIDC_PROVIDERS=[wrong]))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=APP, event_hooks=CHECKED
        ) as client,
    ):
        response = await client.get(f"{API}/auth/sso/wrong/authorize")
        assert code_of(response) == (502, "sso_provider_error")


@ON_SQLITE
async def test_an_unknown_provider_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{API}/auth/sso/nope/authorize")
    assert code_of(response) == (404, "sso_provider_unknown")


@ON_SQLITE
async def test_return_to_must_be_ours(client: httpx.AsyncClient) -> None:
    response = await client.get(
        f"{API}/auth/sso/corp/authorize", params={"return_to": "https://evil.example/x"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["code"] == "return_to_not_allowed"


async def test_github_preset_against_a_stand_in(
    browser: httpx.AsyncClient, github: GitHubStandIn
) -> None:
    github.next_user = GitHubUser(
        id=4242,
        login="octo",
        name="Octo Cat",
        emails=[
            {"email": "octo@users.example", "primary": False, "verified": True},
            {"email": "octo@corp.example", "primary": True, "verified": True},
        ],
    )
    started = await start(browser, "github")
    assert parse_qs(urlsplit(started.headers["location"]).query)["code_challenge_method"] == [
        "S256"
    ]
    back = await through_provider(browser, started, "octo")
    tokens = (await exchange(browser, sso_code(back))).json()
    assert (tokens["user"]["email"], tokens["user"]["name"]) == ("octo@corp.example", "Octo Cat")
    # An unverified primary email creates nothing.
    github.next_user = GitHubUser(
        id=4343,
        login="kitten",
        name=None,
        emails=[{"email": "kitten@corp.example", "primary": True, "verified": False}],
    )
    refused = await sign_in(browser, "kitten", "github")
    assert code_of(refused) == (403, "sso_email_not_verified")


async def test_the_cli_lists_a_users_identities(
    browser: httpx.AsyncClient,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await signed_in(browser, "ada")
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        result = await anyio.to_thread.run_sync(
            CliRunner().invoke, cli, ["users", "identities", "ada@corp.example"]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split() == ["ID", "PROVIDER", "SUBJECT", "EMAIL", "LINKED", "LAST", "USED"]
    assert row.split()[1:4] == ["corp", "ada", "ada@corp.example"]


async def test_the_users_list_shows_and_filters_how_users_sign_in(
    browser: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    jit = (await signed_in(browser, "ada"))["user"]["id"]
    local = await register_at(client, "local@partner.example")
    admin = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
    listed = await client.get(f"{API}/users", params={"sort": "id"}, headers=admin)
    methods = {user["email"]: user["sign_in_methods"] for user in listed.json()}
    assert methods == {
        ADMIN_EMAIL: ["password"],
        "ada@corp.example": ["corp"],
        "local@partner.example": ["password"],
    }
    by_corp = await client.get(
        f"{API}/users", params={"sign_in": "corp", "per_page": 1}, headers=admin
    )
    assert [user["id"] for user in by_corp.json()] == [jit]
    assert "sign_in=corp" in by_corp.headers["link"]
    by_password = await client.get(f"{API}/users", params={"sign_in": "password"}, headers=admin)
    assert jit not in [user["id"] for user in by_password.json()]
    unknown = await client.get(f"{API}/users", params={"sign_in": "nope"}, headers=admin)
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["code"] == "sign_in_unknown"
    # Not for plain users: neither the methods nor the filter.
    plain = bearer(local["access_token"])
    assert {
        u["sign_in_methods"] for u in (await client.get(f"{API}/users", headers=plain)).json()
    } == {None}
    refused = await client.get(f"{API}/users", params={"sign_in": "corp"}, headers=plain)
    assert code_of(refused) == (403, "admin_required")


async def test_an_account_with_a_second_factor_is_asked_for_it_unless_exempt(
    app: FastAPI, browser: httpx.AsyncClient, client: httpx.AsyncClient, clock: Clock
) -> None:
    tokens = await signed_in(browser, "ada")
    headers = bearer(tokens["access_token"])
    secret, _ = await enrol(client, headers)
    clock.offset += STEP  # the enrolment used this step's code
    asked = await exchange(browser, sso_code(await sign_in(browser, "ada")))
    assert code_of(asked) == (401, "mfa_required")
    verified = await client.post(
        f"{API}/auth/mfa/verify",
        json={"mfa_token": asked.json()["mfa_token"], "code": code_at(secret)},
    )
    assert verified.status_code == 200, verified.text
    assert verified.json()["user"]["id"] == tokens["user"]["id"]
    app.state.runtime.settings.MFA_EXEMPT_SSO = True
    exempt = await exchange(browser, sso_code(await sign_in(browser, "ada")))
    assert exempt.status_code == 200, exempt.text
