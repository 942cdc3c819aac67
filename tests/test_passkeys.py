"""Passkeys, black-box through HTTP with a software authenticator (tests/authenticator.py):
adding, listing, renaming and removing them, signing in with one alone, and each way a
ceremony is refused, with its code."""

from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import SQLModel

from backend.clock import Clock
from backend.config import Settings, load_settings
from backend.main import create_app
from tests.authenticator import Authenticator, b64
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    USER_PASSWORD,
    RegisterUser,
    bearer,
    login,
    make_settings,
    running,
)

RP_ID = "example.com"
ORIGIN = "https://app.example.com"
PASSKEYS = f"{API}/users/me/passkeys"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, RP_ID=RP_ID, WEBAUTHN_ORIGINS=ORIGIN, PASSKEY_LOGIN=True)


@pytest.fixture
def authenticator() -> Authenticator:
    return Authenticator(rp_id=RP_ID, origin=ORIGIN)


async def add_passkey(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    authenticator: Authenticator,
    name: str | None = None,
    **answer: Any,
) -> httpx.Response:
    options = await client.post(f"{PASSKEYS}/options", headers=headers)
    assert options.status_code == 200, options.text
    body: dict[str, Any] = {"credential": authenticator.create(options.json(), **answer)}
    if name is not None:
        body["name"] = name
    return await client.post(PASSKEYS, json=body, headers=headers)


async def sign_in_options(client: httpx.AsyncClient) -> dict[str, Any]:
    options = await client.post(f"{API}/auth/passkey/options")
    assert options.status_code == 200, options.text
    body: dict[str, Any] = options.json()
    return body


async def sign_in(
    client: httpx.AsyncClient, authenticator: Authenticator, **answer: Any
) -> httpx.Response:
    credential = authenticator.get(await sign_in_options(client), **answer)
    return await client.post(f"{API}/auth/passkey/verify", json={"credential": credential})


def problem(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["code"]


async def test_add_list_rename_and_remove_a_passkey(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    admin_headers: dict[str, str],
    authenticator: Authenticator,
) -> None:
    options = (await client.post(f"{PASSKEYS}/options", headers=user_headers)).json()
    assert options["rp"] == {"id": RP_ID, "name": "Users API"}
    assert options["user"]["name"] == "user@example.com"
    assert options["authenticatorSelection"]["residentKey"] == "required"
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert options["excludeCredentials"] == []

    added = await add_passkey(client, user_headers, authenticator, name="Laptop")
    assert added.status_code == 201, added.text
    passkey = added.json()
    assert passkey["name"] == "Laptop"
    assert passkey["transports"] == ["hybrid", "internal"]
    assert passkey["device_type"] == "multi_device"
    assert passkey["backed_up"] is True
    assert passkey["last_used_at"] is None
    second = await add_passkey(client, user_headers, authenticator)
    assert second.json()["name"] == "Passkey"

    # The next options exclude both, so a browser does not make a third on the same device.
    options = (await client.post(f"{PASSKEYS}/options", headers=user_headers)).json()
    assert [item["id"] for item in options["excludeCredentials"]] == [
        b64(credential.credential_id) for credential in authenticator.credentials
    ]
    listed = (await client.get(PASSKEYS, headers=user_headers)).json()
    assert [item["name"] for item in listed] == ["Laptop", "Passkey"]

    url = f"{PASSKEYS}/{passkey['id']}"
    renamed = await client.patch(url, json={"name": "Work laptop"}, headers=user_headers)
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "Work laptop"
    blank = await client.patch(url, json={"name": " "}, headers=user_headers)
    assert blank.status_code == 422

    me = (await client.get(f"{API}/users/me", headers=user_headers)).json()
    seen_by_admin = await client.get(f"{API}/users/{me['id']}/passkeys", headers=admin_headers)
    assert [item["name"] for item in seen_by_admin.json()] == ["Work laptop", "Passkey"]
    not_admin = await client.get(f"{API}/users/{me['id']}/passkeys", headers=user_headers)
    assert problem(not_admin) == (403, "admin_required")

    assert (await client.delete(url, headers=user_headers)).status_code == 204
    assert problem(await client.delete(url, headers=user_headers)) == (404, "passkey_not_found")
    assert problem(await client.patch(url, json={"name": "x"}, headers=user_headers)) == (
        404,
        "passkey_not_found",
    )
    assert len((await client.get(PASSKEYS, headers=user_headers)).json()) == 1

    trail = await client.get(f"{API}/audit", params={"target_id": me["id"]}, headers=admin_headers)
    actions = [(event["action"], event["details"]) for event in trail.json()]
    assert ("user.passkey_add", {"passkey_id": passkey["id"], "name": "Laptop"}) in actions
    assert ("user.passkey_remove", {"passkey_id": passkey["id"], "name": "Work laptop"}) in actions


async def test_removing_a_passkey_asks_for_a_recent_proof(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    authenticator: Authenticator,
    clock: Clock,
) -> None:
    passkey = (await add_passkey(client, user_headers, authenticator)).json()
    url = f"{PASSKEYS}/{passkey['id']}"
    clock.offset += timedelta(seconds=301)  # past REAUTHENTICATION_WINDOW_SECONDS
    stale = await client.delete(url, headers=user_headers)
    assert problem(stale) == (403, "reauthentication_required")
    assert len((await client.get(PASSKEYS, headers=user_headers)).json()) == 1
    proof = await client.post(
        f"{API}/auth/reauthenticate", json={"password": USER_PASSWORD}, headers=user_headers
    )
    assert proof.status_code == 200, proof.text
    assert (await client.delete(url, headers=user_headers)).status_code == 204


async def test_someone_elses_passkey_cannot_be_renamed_or_removed(
    client: httpx.AsyncClient,
    register: RegisterUser,
    user_headers: dict[str, str],
    authenticator: Authenticator,
) -> None:
    passkey = (await add_passkey(client, user_headers, authenticator)).json()
    other = bearer((await register(email="other@example.com"))["access_token"])
    url = f"{PASSKEYS}/{passkey['id']}"
    assert problem(await client.delete(url, headers=other)) == (404, "passkey_not_found")
    assert problem(await client.patch(url, json={"name": "x"}, headers=other)) == (
        404,
        "passkey_not_found",
    )
    assert (await client.get(PASSKEYS, headers=other)).json() == []


async def test_api_keys_cannot_manage_passkeys(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    made = await client.post(
        f"{API}/users/me/tokens", json={"name": "script", "scope": "write"}, headers=user_headers
    )
    key = bearer(made.json()["secret"])
    assert problem(await client.get(PASSKEYS, headers=key)) == (403, "api_key_not_allowed")
    refused = await client.post(f"{PASSKEYS}/options", headers=key)
    assert problem(refused) == (403, "api_key_not_allowed")


async def test_sign_in_with_a_passkey_alone(
    client: httpx.AsyncClient,
    register: RegisterUser,
    authenticator: Authenticator,
) -> None:
    user_headers = bearer((await register())["access_token"])
    await add_passkey(client, user_headers, authenticator)
    assert (await client.get(f"{API}/auth/passkey")).json() == {"enabled": True}

    options = await sign_in_options(client)
    assert options["rpId"] == RP_ID
    assert options["allowCredentials"] == []
    assert options["userVerification"] == "required"
    signed_in = await client.post(
        f"{API}/auth/passkey/verify", json={"credential": authenticator.get(options)}
    )
    assert signed_in.status_code == 200, signed_in.text
    tokens = signed_in.json()
    assert tokens["user"]["email"] == "user@example.com"
    assert tokens["refresh_token"]
    me = await client.get(f"{API}/users/me", headers=bearer(tokens["access_token"]))
    assert me.json()["email"] == "user@example.com"
    (listed,) = (await client.get(PASSKEYS, headers=user_headers)).json()
    assert listed["last_used_at"] is not None

    # Again, the counter moving on; and a cookie session, like /auth/login's.
    credential = authenticator.get(await sign_in_options(client))
    cookie = await client.post(
        f"{API}/auth/passkey/verify",
        params={"transport": "cookie"},
        json={"credential": credential},
        headers={"Origin": "https://dashboard.example.com", "X-Requested-With": "fetch"},
    )
    assert cookie.status_code == 200, cookie.text
    assert cookie.json()["refresh_token"] is None
    assert "refresh_token" in cookie.cookies


async def test_a_passkey_is_a_second_factor_after_the_password(
    client: httpx.AsyncClient, register: RegisterUser, authenticator: Authenticator
) -> None:
    await add_passkey(client, bearer((await register())["access_token"]), authenticator)
    form = {"username": "user@example.com", "password": USER_PASSWORD}
    asked = await client.post(f"{API}/auth/login", data=form)
    assert problem(asked) == (401, "mfa_required")
    assert asked.json()["methods"] == ["passkey"]
    token = asked.json()["mfa_token"]

    options = await client.post(f"{API}/auth/mfa/passkey-options", json={"mfa_token": token})
    assert options.status_code == 200, options.text
    assert len(options.json()["allowCredentials"]) == 1
    stranger = Authenticator(rp_id=RP_ID, origin=ORIGIN)  # a passkey of nobody here
    refused = await client.post(
        f"{API}/auth/mfa/verify",
        json={"mfa_token": token, "credential": _unregistered_answer(stranger, options.json())},
    )
    assert problem(refused) == (401, "passkey_unknown")
    both = await client.post(
        f"{API}/auth/mfa/verify",
        json={
            "mfa_token": token,
            "code": "123456",
            "credential": authenticator.get(options.json()),
        },
    )
    assert both.status_code == 422

    options = await client.post(f"{API}/auth/mfa/passkey-options", json={"mfa_token": token})
    answer = authenticator.get(options.json())
    verified = await client.post(
        f"{API}/auth/mfa/verify", json={"mfa_token": token, "credential": answer}
    )
    assert verified.status_code == 200, verified.text
    me = await client.get(f"{API}/users/me", headers=bearer(verified.json()["access_token"]))
    assert me.json()["email"] == "user@example.com"
    again = await client.post(
        f"{API}/auth/mfa/verify", json={"mfa_token": token, "credential": answer}
    )
    assert problem(again) == (401, "mfa_token_invalid")


async def test_a_passkey_is_the_factor_mfa_required_asks_for(
    database_url: str, authenticator: Authenticator
) -> None:
    """Under MFA_REQUIRED a session without a factor may add a passkey, which lifts the
    restriction of that session."""
    settings = make_settings(
        database_url, RP_ID=RP_ID, WEBAUTHN_ORIGINS=ORIGIN, MFA_REQUIRED="admins"
    )
    app = create_app(settings)
    async with running(app) as client:
        headers = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
        assert problem(await client.get(f"{API}/users", headers=headers)) == (
            403,
            "mfa_enrolment_required",
        )
        added = await add_passkey(client, headers, authenticator)
        assert added.status_code == 201, added.text
        assert (await client.get(f"{API}/users", headers=headers)).status_code == 200
        await empty(app)


async def test_a_challenge_is_answered_once(
    client: httpx.AsyncClient, user_headers: dict[str, str], authenticator: Authenticator
) -> None:
    await add_passkey(client, user_headers, authenticator)
    credential = authenticator.get(await sign_in_options(client))
    first = await client.post(f"{API}/auth/passkey/verify", json={"credential": credential})
    assert first.status_code == 200
    replayed = await client.post(f"{API}/auth/passkey/verify", json={"credential": credential})
    assert problem(replayed) == (401, "passkey_challenge_invalid")
    # A registration's challenge is refused the same way when replayed.
    options = (await client.post(f"{PASSKEYS}/options", headers=user_headers)).json()
    answer = authenticator.create(options)
    first_use = await client.post(PASSKEYS, json={"credential": answer}, headers=user_headers)
    assert first_use.status_code == 201
    again = await client.post(PASSKEYS, json={"credential": answer}, headers=user_headers)
    assert problem(again) == (400, "passkey_challenge_invalid")


async def test_a_challenge_works_for_the_session_that_asked_for_it(
    client: httpx.AsyncClient, authenticator: Authenticator, register: RegisterUser
) -> None:
    await register()
    first = bearer((await login(client, "user@example.com", USER_PASSWORD))["access_token"])
    second = bearer((await login(client, "user@example.com", USER_PASSWORD))["access_token"])
    options = (await client.post(f"{PASSKEYS}/options", headers=first)).json()
    answer = {"credential": authenticator.create(options)}
    refused = await client.post(PASSKEYS, json=answer, headers=second)
    assert problem(refused) == (400, "passkey_challenge_invalid")
    # Nor does a sign-in challenge register a passkey.
    sign_in_challenge = await sign_in_options(client)
    options["challenge"] = sign_in_challenge["challenge"]
    crossed = {"credential": authenticator.create(options)}
    assert problem(await client.post(PASSKEYS, json=crossed, headers=first)) == (
        400,
        "passkey_challenge_invalid",
    )


async def test_an_expired_challenge_is_refused(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    authenticator: Authenticator,
    clock: Clock,
) -> None:
    await add_passkey(client, user_headers, authenticator)
    options = await sign_in_options(client)
    clock.offset += timedelta(minutes=5, seconds=1)
    late = await client.post(
        f"{API}/auth/passkey/verify", json={"credential": authenticator.get(options)}
    )
    assert problem(late) == (401, "passkey_challenge_expired")


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ({"origin": "https://evil.example.net"}, "passkey_origin_mismatch"),
        ({"origin": "http://app.example.com"}, "passkey_origin_mismatch"),
        ({"rp_id": "evil.example.net"}, "passkey_rp_id_mismatch"),
        ({"user_verified": False}, "passkey_user_not_verified"),
    ],
)
async def test_a_ceremony_elsewhere_or_without_user_verification_is_refused(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    authenticator: Authenticator,
    answer: dict[str, Any],
    code: str,
) -> None:
    assert problem(await add_passkey(client, user_headers, authenticator, **answer)) == (
        400,
        code,
    )
    assert (await client.get(PASSKEYS, headers=user_headers)).json() == []
    authenticator.credentials.clear()
    assert (await add_passkey(client, user_headers, authenticator)).status_code == 201
    assert problem(await sign_in(client, authenticator, **answer)) == (401, code)


async def test_a_counter_that_goes_back_is_refused(
    client: httpx.AsyncClient, user_headers: dict[str, str], authenticator: Authenticator
) -> None:
    await add_passkey(client, user_headers, authenticator)
    assert (await sign_in(client, authenticator, sign_count=7)).status_code == 200
    assert problem(await sign_in(client, authenticator, sign_count=7)) == (
        401,
        "passkey_counter_regressed",
    )
    assert problem(await sign_in(client, authenticator, sign_count=3)) == (
        401,
        "passkey_counter_regressed",
    )
    assert (await sign_in(client, authenticator, sign_count=8)).status_code == 200


async def test_an_authenticator_without_a_counter_signs_in(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    authenticator = Authenticator(rp_id=RP_ID, origin=ORIGIN, counting=False)
    await add_passkey(client, user_headers, authenticator)
    for _ in range(2):
        assert (await sign_in(client, authenticator)).status_code == 200


async def test_an_unknown_or_removed_passkey_signs_no_one_in(
    client: httpx.AsyncClient, user_headers: dict[str, str], authenticator: Authenticator
) -> None:
    never_added = Authenticator(rp_id=RP_ID, origin=ORIGIN)
    options = (await client.post(f"{PASSKEYS}/options", headers=user_headers)).json()
    never_added.create(options)  # made on the device, never sent to the server
    assert problem(await sign_in(client, never_added)) == (401, "passkey_unknown")

    passkey = (await add_passkey(client, user_headers, authenticator)).json()
    await client.delete(f"{PASSKEYS}/{passkey['id']}", headers=user_headers)
    assert problem(await sign_in(client, authenticator)) == (401, "passkey_unknown")


async def test_a_bad_signature_or_a_malformed_answer_is_refused(
    client: httpx.AsyncClient, user_headers: dict[str, str], authenticator: Authenticator
) -> None:
    await add_passkey(client, user_headers, authenticator)
    credential = authenticator.get(await sign_in_options(client))
    credential["response"]["signature"] = b64(b"\x30\x06\x02\x01\x01\x02\x01\x01")
    forged = await client.post(f"{API}/auth/passkey/verify", json={"credential": credential})
    assert problem(forged) == (401, "passkey_invalid")

    options = (await client.post(f"{PASSKEYS}/options", headers=user_headers)).json()
    answer = authenticator.create(options)
    answer["response"]["attestationObject"] = b64(b"\xa1\x63fmt\x64none")  # no authData
    malformed = await client.post(PASSKEYS, json={"credential": answer}, headers=user_headers)
    assert problem(malformed) == (400, "passkey_invalid")
    not_json = authenticator.get(await sign_in_options(client))
    not_json["response"]["clientDataJSON"] = b64(b"[1, 2")
    refused = await client.post(f"{API}/auth/passkey/verify", json={"credential": not_json})
    assert problem(refused) == (401, "passkey_invalid")
    shapeless = await client.post(
        f"{API}/auth/passkey/verify", json={"credential": {"id": "x", "response": []}}
    )
    assert problem(shapeless) == (422, "validation_failed")


async def test_a_passkey_registered_twice_is_refused(
    client: httpx.AsyncClient, user_headers: dict[str, str], authenticator: Authenticator
) -> None:
    await add_passkey(client, user_headers, authenticator)
    again = await add_passkey(
        client, user_headers, authenticator, credential=authenticator.credentials[0]
    )
    assert problem(again) == (409, "passkey_taken")


async def test_a_deactivated_account_cannot_sign_in_with_its_passkey(
    client: httpx.AsyncClient,
    register: RegisterUser,
    admin_headers: dict[str, str],
    authenticator: Authenticator,
) -> None:
    registered = await register()
    await add_passkey(client, bearer(registered["access_token"]), authenticator)
    url = f"{API}/users/{registered['user']['id']}"
    assert (await client.patch(url, json={"is_active": False}, headers=admin_headers)).is_success
    assert problem(await sign_in(client, authenticator)) == (403, "account_deactivated")


async def test_passwordless_sign_in_is_off_unless_asked_for(
    database_url: str, authenticator: Authenticator
) -> None:
    app = create_app(make_settings(database_url, RP_ID=RP_ID, WEBAUTHN_ORIGINS=ORIGIN))
    async with running(app) as client:
        assert (await client.get(f"{API}/auth/passkey")).json() == {"enabled": False}
        options = await client.post(f"{API}/auth/passkey/options")
        assert problem(options) == (403, "passkey_login_disabled")
        # Adding one works all the same: it is a second factor too.
        admin = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
        assert (await add_passkey(client, admin, authenticator)).status_code == 201
        fake = {"credential": authenticator.get({"challenge": b64(b"c" * 32)})}
        verify = await client.post(f"{API}/auth/passkey/verify", json=fake)
        assert problem(verify) == (403, "passkey_login_disabled")
        await empty(app)


async def test_passwordless_sign_in_is_rate_limited_like_login(database_url: str) -> None:
    settings = make_settings(
        database_url,
        RP_ID=RP_ID,
        WEBAUTHN_ORIGINS=ORIGIN,
        PASSKEY_LOGIN=True,
        RATE_LIMIT_LOGIN="2/minute",
    )
    authenticator = Authenticator(rp_id=RP_ID, origin=ORIGIN)
    app = create_app(settings)
    async with running(app) as client:
        answers = [
            {"credential": authenticator_answer}
            for authenticator_answer in [
                _unregistered_answer(authenticator, await sign_in_options(client)) for _ in range(3)
            ]
        ]
        statuses = [
            (await client.post(f"{API}/auth/passkey/verify", json=answer)).status_code
            for answer in answers
        ]
        await empty(app)
    assert statuses == [401, 401, 429]


async def test_an_unverified_account_waits_for_its_link_as_at_login(database_url: str) -> None:
    """With EMAIL_VERIFICATION=required, a passkey (added while it was optional) does not
    let an unverified account in: the same 403 as a password login."""
    authenticator = Authenticator(rp_id=RP_ID, origin=ORIGIN)
    passkeys = {"RP_ID": RP_ID, "WEBAUTHN_ORIGINS": ORIGIN, "PASSKEY_LOGIN": True}
    optional = create_app(make_settings(database_url, EMAIL_VERIFICATION="optional", **passkeys))
    async with running(optional) as client:
        body = {"email": "new@example.com", "name": "New", "password": USER_PASSWORD}
        registered = (await client.post(f"{API}/auth/register", json=body)).json()
        assert registered["user"]["is_verified"] is False
        headers = bearer(registered["access_token"])
        assert (await add_passkey(client, headers, authenticator)).status_code == 201
    required = create_app(make_settings(database_url, EMAIL_VERIFICATION="required", **passkeys))
    async with running(required) as client:
        assert problem(await sign_in(client, authenticator)) == (403, "email_not_verified")
        await empty(required)


async def empty(app: FastAPI) -> None:
    """Leave the database as the app fixture does, for the tests after this one."""
    async with app.state.runtime.engine.begin() as connection:
        for table in reversed(SQLModel.metadata.sorted_tables):
            await connection.execute(table.delete())


def _unregistered_answer(authenticator: Authenticator, options: dict[str, Any]) -> dict[str, Any]:
    authenticator.create({"challenge": options["challenge"], "user": {"id": b64(b"u")}})
    return authenticator.get(options)


@pytest.mark.parametrize(
    ("values", "said"),
    [
        ({"RP_ID": "https://example.com"}, "RP_ID 'https://example.com' must be a lowercase host"),
        ({"RP_ID": "example.com:443"}, "RP_ID 'example.com:443' must be a lowercase host"),
        ({"RP_ID": "10.0.0.5"}, "RP_ID '10.0.0.5' must be a lowercase host name"),
        (
            {"RP_ID": "example.com", "WEBAUTHN_ORIGINS": "https://example.org"},
            "'https://example.org' is not on RP_ID 'example.com'",
        ),
        (
            {"RP_ID": "example.com", "WEBAUTHN_ORIGINS": "https://notexample.com"},
            "'https://notexample.com' is not on RP_ID 'example.com'",
        ),
        (
            {"RP_ID": "example.com", "WEBAUTHN_ORIGINS": "http://app.example.com"},
            "'http://app.example.com' must be https://",
        ),
        (
            {"RP_ID": "example.com", "WEBAUTHN_ORIGINS": "https://app.example.com/admin"},
            "'https://app.example.com/admin' is not an origin",
        ),
        # Derived from the local address, which no browser takes as an RP id.
        (
            {"PASSKEY_LOGIN": "true"},
            "RP_ID (unset: the host of PUBLIC_URL) '127.0.0.1' must be a lowercase host name",
        ),
    ],
)
def test_passkey_settings_that_cannot_work_stop_start_up_in_one_line(
    values: dict[str, str], said: str
) -> None:
    with pytest.raises(SystemExit) as raised:
        load_settings(_env_file=None, STAGE="local", **values)
    message = str(raised.value)
    assert message.startswith("Configuration error: ")
    assert said in message
    assert len(message.splitlines()) == 1


def test_passkey_settings_default_to_the_public_url() -> None:
    settings = load_settings(
        _env_file=None, STAGE="local", PUBLIC_URL="https://app.example.com/admin"
    )
    assert settings.webauthn_rp_id == "app.example.com"
    assert settings.webauthn_origins == ["https://app.example.com"]
    assert settings.webauthn_rp_name == "Users API"
    local = load_settings(
        _env_file=None,
        STAGE="local",
        RP_ID="localhost",
        WEBAUTHN_ORIGINS="http://localhost:8000, https://admin.localhost",
    )
    assert local.webauthn_origins == ["http://localhost:8000", "https://admin.localhost"]
