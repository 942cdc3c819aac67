"""MFA_REQUIRED: a login without a second factor gets a restricted session, which every
route refuses but enrolment's, until a factor is confirmed."""

from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI

from backend.clock import Clock
from backend.config import Settings
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    RegisterUser,
    bearer,
    login,
    make_settings,
)
from tests.test_access_order import Probe, _operations
from tests.test_mfa import STEP, code_at, enrol, mfa_token, verify

# What a restricted session reaches with its access token (refresh and logout take the
# refresh token, and are public operations).
ENROLMENT_OPERATIONS = {
    ("get", f"{API}/users/me"),
    ("get", f"{API}/users/me/mfa"),
    ("post", f"{API}/users/me/mfa/totp"),
    ("post", f"{API}/users/me/mfa/totp/confirm"),
    ("post", f"{API}/users/me/passkeys/options"),
    ("post", f"{API}/users/me/passkeys"),
    ("post", f"{API}/auth/reauthenticate"),
}


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, MFA_REQUIRED="admins")


async def test_a_restricted_session_reaches_only_enrolment(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    tokens = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    headers = bearer(tokens["access_token"])
    admin_id = tokens["user"]["id"]
    probe = Probe(app, client)
    reached = set()
    for method, path, operation in _operations(app):
        if not operation.get("security"):
            continue
        status, problem, _ = await probe.send(method, path, operation, admin_id, headers)
        if status == 403 and problem["code"] == "mfa_enrolment_required":
            continue
        reached.add((method, path))
    assert reached == ENROLMENT_OPERATIONS
    # Refresh keeps the restriction; logout works.
    refreshed = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200
    still = await client.get(f"{API}/users", headers=bearer(refreshed.json()["access_token"]))
    assert (still.status_code, still.json()["code"]) == (403, "mfa_enrolment_required")
    logout = await client.post(
        f"{API}/auth/logout", json={"refresh_token": refreshed.json()["refresh_token"]}
    )
    assert logout.status_code == 204


async def test_confirming_a_factor_lifts_the_restriction_of_that_session(
    client: httpx.AsyncClient, clock: Clock, register: RegisterUser
) -> None:
    headers = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
    other = bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])
    assert (await client.get(f"{API}/users", headers=headers)).status_code == 403
    secret, _ = await enrol(client, headers)
    assert (await client.get(f"{API}/users", headers=headers)).status_code == 200
    # Another session that proved only the password stays restricted.
    assert (await client.get(f"{API}/users", headers=other)).status_code == 403
    # The next login asks for the factor and is not restricted.
    clock.offset += STEP
    verified = await verify(
        client, await mfa_token(client, ADMIN_EMAIL, ADMIN_PASSWORD), code_at(secret)
    )
    full = bearer(verified.json()["access_token"])
    assert (await client.get(f"{API}/users", headers=full)).status_code == 200
    # Plain users are not asked (MFA_REQUIRED=admins).
    user = bearer((await register())["access_token"])
    assert (await client.get(f"{API}/users/me/tokens", headers=user)).status_code == 200
    # Removing the factor restricts the admin's sessions again.
    clock.offset += timedelta(minutes=10)
    proved = await client.post(
        f"{API}/auth/reauthenticate", json={"password": ADMIN_PASSWORD}, headers=full
    )
    assert proved.status_code == 200
    assert (await client.delete(f"{API}/users/me/mfa/totp", headers=full)).status_code == 204
    again = await client.get(f"{API}/users", headers=full)
    assert (again.status_code, again.json()["code"]) == (403, "mfa_enrolment_required")
