"""Second factors: enrolling an authenticator app, the mfa_required login step, recovery
codes, re-authentication with a code, the admin's and the CLI's reset, key rotation.
Codes are computed from the secret at the app's clock, which the tests move."""

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from sqlmodel import SQLModel
from typer.testing import CliRunner, Result

from backend.auth import links
from backend.auth.models import LinkPurpose
from backend.cli import app as cli_app
from backend.clock import Clock, utcnow
from backend.config import get_settings
from backend.main import create_app
from tests.helpers import (
    API,
    TEST_SECRET_KEY,
    USER_PASSWORD,
    RegisterUser,
    bearer,
    make_settings,
    post_login,
    running,
)

EMAIL = "user@example.com"
STEP = timedelta(seconds=30)
runner = CliRunner()


def code_at(secret: str, offset: timedelta = timedelta(0)) -> str:
    """The authenticator's code at the app's clock, moved by offset."""
    return pyotp.TOTP(secret).at(utcnow() + offset)


async def enrol(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[str, list[str]]:
    """Turn an authenticator app on; its secret and the recovery codes."""
    started = await client.post(f"{API}/users/me/mfa/totp", headers=headers)
    assert started.status_code == 200, started.text
    secret: str = started.json()["secret"]
    confirmed = await client.post(
        f"{API}/users/me/mfa/totp/confirm", json={"code": code_at(secret)}, headers=headers
    )
    assert confirmed.status_code == 200, confirmed.text
    codes: list[str] = confirmed.json()["recovery_codes"]
    return secret, codes


async def mfa_token(
    client: httpx.AsyncClient, email: str = EMAIL, password: str = USER_PASSWORD
) -> str:
    refused = await post_login(client, email, password)
    assert refused.status_code == 401, refused.text
    assert refused.json()["code"] == "mfa_required"
    token: str = refused.json()["mfa_token"]
    return token


async def verify(client: httpx.AsyncClient, token: str, code: str) -> httpx.Response:
    return await client.post(f"{API}/auth/mfa/verify", json={"mfa_token": token, "code": code})


async def enrolled_user(
    client: httpx.AsyncClient, register: RegisterUser, clock: Clock
) -> tuple[dict[str, str], str, list[str]]:
    headers = bearer((await register())["access_token"])
    secret, codes = await enrol(client, headers)
    clock.offset += STEP  # the confirmation used the current step's code
    return headers, secret, codes


async def test_enrolment_shows_the_secret_as_uri_and_qr_and_confirms_with_a_code(
    client: httpx.AsyncClient, register: RegisterUser, clock: Clock
) -> None:
    headers = bearer((await register())["access_token"])
    status = (await client.get(f"{API}/users/me/mfa", headers=headers)).json()
    assert status == {"totp": False, "recovery_codes_left": 0, "methods": []}
    not_started = await client.post(
        f"{API}/users/me/mfa/totp/confirm", json={"code": "123456"}, headers=headers
    )
    assert (not_started.status_code, not_started.json()["code"]) == (404, "mfa_not_enabled")
    started = (await client.post(f"{API}/users/me/mfa/totp", headers=headers)).json()
    assert started["otpauth_uri"].startswith("otpauth://totp/Users%20API:user%40example.com?")
    assert "issuer=Users%20API" in started["otpauth_uri"]
    assert f"secret={started['secret']}" in started["otpauth_uri"]
    assert started["qr_svg"].startswith("<svg")
    # Pending: not a factor yet, and a login still needs only the password.
    assert (await post_login(client, EMAIL, USER_PASSWORD)).status_code == 200
    wrong = await client.post(
        f"{API}/users/me/mfa/totp/confirm",
        json={"code": code_at(started["secret"], 5 * STEP)},
        headers=headers,
    )
    assert (wrong.status_code, wrong.json()["code"]) == (400, "mfa_code_invalid")
    confirmed = await client.post(
        f"{API}/users/me/mfa/totp/confirm",
        json={"code": code_at(started["secret"])},
        headers=headers,
    )
    codes = confirmed.json()["recovery_codes"]
    assert len(codes) == len(set(codes)) == 10
    status = (await client.get(f"{API}/users/me/mfa", headers=headers)).json()
    assert status == {"totp": True, "recovery_codes_left": 10, "methods": ["totp", "recovery_code"]}
    again = await client.post(f"{API}/users/me/mfa/totp", headers=headers)
    assert (again.status_code, again.json()["code"]) == (409, "mfa_already_enabled")


async def test_two_enrolments_at_once_leave_one_to_confirm(
    client: httpx.AsyncClient, register: RegisterUser
) -> None:
    headers = bearer((await register())["access_token"])
    answers = await asyncio.gather(
        *(client.post(f"{API}/users/me/mfa/totp", headers=headers) for _ in range(2))
    )
    assert {answer.status_code for answer in answers} <= {200, 409}
    started = [answer.json()["secret"] for answer in answers if answer.status_code == 200]
    confirmed = [
        await client.post(
            f"{API}/users/me/mfa/totp/confirm", json={"code": code_at(secret)}, headers=headers
        )
        for secret in started
    ]
    assert [answer.status_code for answer in confirmed].count(200) == 1


async def test_login_then_verify_ends_in_the_login_response_and_the_token_works_once(
    client: httpx.AsyncClient, register: RegisterUser, clock: Clock
) -> None:
    _, secret, _ = await enrolled_user(client, register, clock)
    refused = await post_login(client, EMAIL, USER_PASSWORD)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    body = refused.json()
    assert body["methods"] == ["totp", "recovery_code"]
    assert body["expires_in"] == 300
    assert "access_token" not in body
    # A wrong password is still the plain refusal, without a token.
    wrong = (await post_login(client, EMAIL, "Not-The-Password-1")).json()
    assert wrong["code"] == "credentials_invalid"
    assert "mfa_token" not in wrong
    verified = await verify(client, body["mfa_token"], code_at(secret))
    assert verified.status_code == 200, verified.text
    tokens = verified.json()
    assert tokens["user"]["email"] == EMAIL
    me = await client.get(f"{API}/users/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200
    clock.offset += STEP
    reused = await verify(client, body["mfa_token"], code_at(secret))
    assert (reused.status_code, reused.json()["code"]) == (401, "mfa_token_invalid")


async def test_cookie_transport_works_through_the_second_step(
    client: httpx.AsyncClient, register: RegisterUser, clock: Clock
) -> None:
    _, secret, _ = await enrolled_user(client, register, clock)
    token = await mfa_token(client)
    verified = await client.post(
        f"{API}/auth/mfa/verify?transport=cookie",
        json={"mfa_token": token, "code": code_at(secret)},
        headers={"Origin": "https://dashboard.example.com", "X-Requested-With": "fetch"},
    )
    assert verified.status_code == 200, verified.text
    assert verified.json()["refresh_token"] is None
    assert "refresh_token=" in verified.headers["set-cookie"]


async def test_codes_are_accepted_once_within_one_step_either_side(
    client: httpx.AsyncClient, register: RegisterUser, clock: Clock
) -> None:
    _, secret, _ = await enrolled_user(client, register, clock)
    clock.offset += 10 * STEP
    token = await mfa_token(client)
    for too_far in (2 * STEP, -2 * STEP):
        refused = await verify(client, token, code_at(secret, too_far))
        assert (refused.status_code, refused.json()["code"]) == (401, "mfa_code_invalid")
    assert (await verify(client, token, code_at(secret, -STEP))).status_code == 200
    # A later step still passes; the step used and any before it never again.
    assert (await verify(client, await mfa_token(client), code_at(secret, STEP))).status_code == 200
    for replayed in (code_at(secret, STEP), code_at(secret)):
        refused = await verify(client, await mfa_token(client), replayed)
        assert refused.json()["code"] == "mfa_code_invalid"
    clock.offset += 2 * STEP
    assert (await verify(client, await mfa_token(client), code_at(secret))).status_code == 200


async def test_a_code_sent_twice_at_once_passes_once(
    client: httpx.AsyncClient, register: RegisterUser, clock: Clock
) -> None:
    _, secret, codes = await enrolled_user(client, register, clock)
    first, second = await mfa_token(client), await mfa_token(client)
    answers = await asyncio.gather(
        verify(client, first, code_at(secret)), verify(client, second, code_at(secret))
    )
    assert sorted(answer.status_code for answer in answers) == [200, 401]
    first, second = await mfa_token(client), await mfa_token(client)
    answers = await asyncio.gather(
        verify(client, first, codes[0]), verify(client, second, codes[0])
    )
    assert sorted(answer.status_code for answer in answers) == [200, 401]


async def test_recovery_codes_work_once_each(
    client: httpx.AsyncClient, register: RegisterUser, clock: Clock
) -> None:
    headers, _, codes = await enrolled_user(client, register, clock)
    # Typed loosely: upper case, without the dash.
    loose = codes[0].upper().replace("-", "")
    assert (await verify(client, await mfa_token(client), loose)).status_code == 200
    again = await verify(client, await mfa_token(client), codes[0])
    assert (again.status_code, again.json()["code"]) == (401, "mfa_code_invalid")
    status = (await client.get(f"{API}/users/me/mfa", headers=headers)).json()
    assert status["recovery_codes_left"] == 9


async def test_the_token_expires_and_dies_after_five_wrong_codes(
    client: httpx.AsyncClient,
    register: RegisterUser,
    clock: Clock,
    admin_headers: dict[str, str],
) -> None:
    _, secret, _ = await enrolled_user(client, register, clock)
    token = await mfa_token(client)
    clock.offset += timedelta(seconds=301)
    expired = await verify(client, token, code_at(secret))
    assert (expired.status_code, expired.json()["code"]) == (401, "mfa_token_invalid")
    token = await mfa_token(client)
    for _ in range(5):
        assert (await verify(client, token, "000000")).json()["code"] == "mfa_code_invalid"
    spent = await verify(client, token, code_at(secret))
    assert (spent.status_code, spent.json()["code"]) == (401, "mfa_token_invalid")
    failures = await client.get(
        f"{API}/audit", params={"action": "user.mfa_failure"}, headers=admin_headers
    )
    assert len(failures.json()) == 5
    assert failures.json()[0]["details"] == {"step": "login"}


async def test_wrong_codes_are_limited_per_account(database_url: str, clock: Clock) -> None:
    app = create_app(make_settings(database_url, RATE_LIMIT_MFA_PER_ACCOUNT="2/hour"))
    async with running(app) as client:
        registered = await client.post(
            f"{API}/auth/register",
            json={"email": EMAIL, "name": "Pat", "password": USER_PASSWORD},
        )
        headers = bearer(registered.json()["access_token"])
        secret, _ = await enrol(client, headers)
        clock.offset += STEP
        for _ in range(2):
            assert (await verify(client, await mfa_token(client), "000000")).status_code == 401
        limited = await verify(client, await mfa_token(client), code_at(secret))
        assert (limited.status_code, limited.json()["code"]) == (429, "rate_limited")
        async with app.state.runtime.engine.begin() as connection:
            for table in reversed(SQLModel.metadata.sorted_tables):
                await connection.execute(table.delete())


async def test_a_password_reset_does_not_skip_the_second_factor(
    client: httpx.AsyncClient, app: FastAPI, register: RegisterUser, clock: Clock
) -> None:
    headers, secret, _ = await enrolled_user(client, register, clock)
    me = (await client.get(f"{API}/users/me", headers=headers)).json()
    runtime = app.state.runtime
    async with runtime.sessionmaker() as db:
        link = await links.issue(
            db,
            user_id=me["id"],
            purpose=LinkPurpose.RESET,
            settings=runtime.settings,
            actor_id=None,
        )
        await db.commit()
    new_password = "Brand-New-Secret-7"
    reset = await client.post(
        f"{API}/auth/password/reset", json={"token": link.token, "new_password": new_password}
    )
    assert (reset.status_code, reset.json()["code"]) == (401, "mfa_required")
    # The password is set, the old sessions ended, and no new one started without the code.
    assert (await client.get(f"{API}/users/me", headers=headers)).status_code == 401
    verified = await verify(client, reset.json()["mfa_token"], code_at(secret))
    assert verified.status_code == 200
    assert (await mfa_token(client, password=new_password)) != ""


async def test_removing_the_app_and_new_recovery_codes_need_a_recent_proof(
    client: httpx.AsyncClient, register: RegisterUser, clock: Clock
) -> None:
    headers, secret, codes = await enrolled_user(client, register, clock)
    clock.offset += timedelta(minutes=10)
    for method, path in (("POST", "recovery-codes"), ("DELETE", "totp")):
        stale = await client.request(method, f"{API}/users/me/mfa/{path}", headers=headers)
        assert (stale.status_code, stale.json()["code"]) == (403, "reauthentication_required")
    wrong = await client.post(
        f"{API}/auth/reauthenticate", json={"code": "000000"}, headers=headers
    )
    assert (wrong.status_code, wrong.json()["code"]) == (400, "mfa_code_invalid")
    # A recovery code is for logging in, not for this.
    recovery = await client.post(
        f"{API}/auth/reauthenticate", json={"code": codes[0]}, headers=headers
    )
    assert recovery.status_code == 400
    both = await client.post(
        f"{API}/auth/reauthenticate",
        json={"code": code_at(secret), "password": USER_PASSWORD},
        headers=headers,
    )
    assert both.status_code == 422
    proved = await client.post(
        f"{API}/auth/reauthenticate", json={"code": code_at(secret)}, headers=headers
    )
    assert proved.status_code == 200, proved.text
    renewed = await client.post(f"{API}/users/me/mfa/recovery-codes", headers=headers)
    new_codes = renewed.json()["recovery_codes"]
    assert set(new_codes).isdisjoint(codes)
    old = await verify(client, await mfa_token(client), codes[1])
    assert old.json()["code"] == "mfa_code_invalid"
    assert (await client.delete(f"{API}/users/me/mfa/totp", headers=headers)).status_code == 204
    assert (await client.get(f"{API}/users/me/mfa", headers=headers)).json()["totp"] is False
    assert (await post_login(client, EMAIL, USER_PASSWORD)).status_code == 200
    no_app = await client.post(
        f"{API}/auth/reauthenticate", json={"code": code_at(secret)}, headers=headers
    )
    assert (no_app.status_code, no_app.json()["code"]) == (400, "mfa_not_enabled")
    gone = await client.delete(f"{API}/users/me/mfa/totp", headers=headers)
    assert (gone.status_code, gone.json()["code"]) == (404, "mfa_not_enabled")


async def test_api_keys_are_unaffected_and_cannot_reach_second_factors(
    client: httpx.AsyncClient, register: RegisterUser, clock: Clock
) -> None:
    headers, _, _ = await enrolled_user(client, register, clock)
    created = await client.post(
        f"{API}/users/me/tokens", json={"name": "script", "scope": "write"}, headers=headers
    )
    key = bearer(created.json()["secret"])
    assert (await client.get(f"{API}/users/me", headers=key)).status_code == 200
    refused = await client.get(f"{API}/users/me/mfa", headers=key)
    assert (refused.status_code, refused.json()["code"]) == (403, "api_key_not_allowed")


async def test_an_admin_sees_and_resets_a_users_factors(
    client: httpx.AsyncClient,
    register: RegisterUser,
    clock: Clock,
    admin_headers: dict[str, str],
) -> None:
    headers, _, _ = await enrolled_user(client, register, clock)
    user_id = (await client.get(f"{API}/users/me", headers=headers)).json()["id"]
    seen = await client.get(f"{API}/users/{user_id}/mfa", headers=admin_headers)
    assert seen.json() == {
        "totp": True,
        "recovery_codes_left": 10,
        "methods": ["totp", "recovery_code"],
    }
    refused = await client.delete(f"{API}/users/{user_id}/mfa", headers=headers)
    assert refused.json()["code"] == "admin_required"
    reset = await client.delete(f"{API}/users/{user_id}/mfa", headers=admin_headers)
    assert reset.status_code == 204
    assert (await client.get(f"{API}/users/me", headers=headers)).status_code == 401
    assert (await post_login(client, EMAIL, USER_PASSWORD)).status_code == 200
    trail = await client.get(
        f"{API}/audit", params={"action": "user.mfa_reset"}, headers=admin_headers
    )
    [event] = trail.json()
    assert event["target_id"] == user_id
    assert event["details"] == {"totp": True, "sessions": 1}
    missing = await client.get(f"{API}/users/2147483647/mfa", headers=admin_headers)
    assert missing.json()["code"] == "user_not_found"


# --- the command line -----------------------------------------------------------------


@pytest.fixture
def cli_env(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[pytest.MonkeyPatch]:
    """The CLI's settings point at the database the `client` fixture's app uses."""
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("SECRET_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("AUTO_MIGRATE", "false")
    monkeypatch.delenv("FIRST_ADMIN_EMAIL", raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


async def invoke(args: list[str]) -> Result:
    return await asyncio.to_thread(runner.invoke, cli_app, args)


async def test_the_cli_resets_a_lost_factor(
    cli_env: pytest.MonkeyPatch,
    client: httpx.AsyncClient,
    register: RegisterUser,
    clock: Clock,
) -> None:
    headers, _, _ = await enrolled_user(client, register, clock)
    reset = await invoke(["users", "reset-mfa", EMAIL])
    assert reset.exit_code == 0, reset.output
    assert reset.output == f"Second factors of {EMAIL} removed; every session it had is ended.\n"
    assert (await client.get(f"{API}/users/me", headers=headers)).status_code == 401
    assert (await post_login(client, EMAIL, USER_PASSWORD)).status_code == 200
    unknown = await invoke(["users", "reset-mfa", "nobody@example.com"])
    assert unknown.exit_code == 1


async def test_key_rotation_old_keys_decrypt_and_reencrypt_moves_to_the_new_one(
    cli_env: pytest.MonkeyPatch,
    database_url: str,
    client: httpx.AsyncClient,
    register: RegisterUser,
    clock: Clock,
) -> None:
    # Enrolled under the key derived from SECRET_KEY (no MFA_ENCRYPTION_KEY).
    _, secret, codes = await enrolled_user(client, register, clock)
    new_key = "k" * 8 + "Zq3Wk0wzJbR7mNf1xLpVtYc8HsAe5uGd2iOj6nKlZmXo"
    only_new = make_settings(database_url, MFA_ENCRYPTION_KEY=new_key)
    rotated = make_settings(
        database_url, MFA_ENCRYPTION_KEY=new_key, MFA_ENCRYPTION_KEYS_OLD=TEST_SECRET_KEY
    )

    async def logs_in(settings: Any) -> int:
        clock.offset += STEP
        async with running(create_app(settings)) as other:
            token = await mfa_token(other)
            return (await verify(other, token, code_at(secret))).status_code

    assert await logs_in(rotated) == 200
    # Recovery codes match under the old key while it is listed.
    async with running(create_app(rotated)) as other:
        assert (await verify(other, await mfa_token(other), codes[0])).status_code == 200
    cli_env.setenv("MFA_ENCRYPTION_KEY", new_key)
    cli_env.setenv("MFA_ENCRYPTION_KEYS_OLD", TEST_SECRET_KEY)
    get_settings.cache_clear()
    done = await invoke(["users", "reencrypt-mfa"])
    assert done.output == "Re-encrypted 1 authenticator secret.\n"
    assert await logs_in(only_new) == 200


async def test_the_openapi_document_describes_the_mfa_required_members(app: FastAPI) -> None:
    document = app.openapi()
    for path in ("/auth/login", "/auth/password/reset"):
        answer = document["paths"][f"{API}{path}"]["post"]["responses"]["401"]
        schema = answer["content"]["application/problem+json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/LoginProblem"}, path
    members = document["components"]["schemas"]["LoginProblem"]["properties"]
    assert {"mfa_token", "expires_in", "methods", "code"} <= members.keys()
