"""Cookie transport over HTTP: the cookie's attributes, refresh and logout from it, the
CSRF refusals, CORS for a credentialed front end, and bearer clients left as they were.

The browser's side (HttpOnly, SameSite, a real preflight) is in
test_cookie_sessions_browser.py. Here the cookie is sent by hand: the test client's jar
would not send a Secure cookie to http://testserver.
"""

from datetime import timedelta
from http.cookies import SimpleCookie
from typing import Any

import httpx
import pytest
from fastapi import Response

from backend.auth.jwt import ACCESS, REFRESH, create_token
from backend.auth.models import LoginResponse
from backend.auth.transport import TokenDelivery, Transport
from backend.clock import utcnow
from backend.config import Settings
from backend.models import User, UserPublic
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, RegisterUser, bearer, make_settings

FRONT_END = "https://dashboard.example.com"  # in CORS_ORIGINS (tests/conftest.py)
FROM_FRONT_END = {"Origin": FRONT_END, "X-Requested-With": "fetch"}
COOKIE = "?transport=cookie"
CREDENTIALS = {"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
FOURTEEN_DAYS = 14 * 24 * 3600


def refresh_cookie(response: httpx.Response) -> dict[str, Any]:
    """The refresh_token Set-Cookie: its value and attributes, names lowercased."""
    headers = response.headers.get_list("set-cookie")
    assert len(headers) == 1, headers
    morsel = SimpleCookie(headers[0])["refresh_token"]
    attributes = {name: value for name, value in morsel.items() if value}
    return {"value": morsel.value, **attributes}


def sending(token: str) -> dict[str, str]:
    return {**FROM_FRONT_END, "Cookie": f"refresh_token={token}"}


async def cookie_login(client: httpx.AsyncClient) -> tuple[dict[str, Any], str]:
    response = await client.post(
        f"{API}/auth/login{COOKIE}", data=CREDENTIALS, headers=FROM_FRONT_END
    )
    assert response.status_code == 200, response.text
    return response.json(), refresh_cookie(response)["value"]


async def test_cookie_login_sets_the_refresh_token_as_a_cookie_and_not_in_the_body(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        f"{API}/auth/login{COOKIE}", data=CREDENTIALS, headers=FROM_FRONT_END
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["refresh_token"] is None
    cookie = refresh_cookie(response)
    assert cookie["value"] not in response.text
    assert cookie["httponly"] is True
    assert cookie["secure"] is True  # STAGE=test
    assert cookie["samesite"].lower() == "strict"
    assert cookie["path"] == f"{API}/auth"
    assert "domain" not in cookie  # this host only, not its subdomains
    assert FOURTEEN_DAYS - 5 <= int(cookie["max-age"]) <= FOURTEEN_DAYS
    me = await client.get(f"{API}/users/me", headers=bearer(body["access_token"]))
    assert me.json()["email"] == ADMIN_EMAIL
    # Credentialed CORS: the front end may read this response.
    assert response.headers["access-control-allow-origin"] == FRONT_END
    assert response.headers["access-control-allow-credentials"] == "true"


async def test_cookie_registration_sets_the_cookie(client: httpx.AsyncClient) -> None:
    account = {"email": "ada@example.com", "password": "Ada-Password-1", "name": "Ada"}
    response = await client.post(
        f"{API}/auth/register{COOKIE}", json=account, headers=FROM_FRONT_END
    )
    assert response.status_code == 200, response.text
    assert response.json()["refresh_token"] is None
    assert refresh_cookie(response)["httponly"] is True


async def test_a_password_change_moves_the_session_to_a_new_cookie(
    client: httpx.AsyncClient,
) -> None:
    body, old = await cookie_login(client)
    response = await client.post(
        f"{API}/users/me/password{COOKIE}",
        json={"current_password": ADMIN_PASSWORD, "new_password": "New-Admin-Password-1"},
        headers={**FROM_FRONT_END, **bearer(body["access_token"])},
    )
    assert response.status_code == 200, response.text
    assert response.json()["refresh_token"] is None
    new = refresh_cookie(response)
    assert new["path"] == f"{API}/auth"  # where refresh will read it, not this route's path
    assert (
        await client.post(f"{API}/auth/refresh{COOKIE}", headers=sending(old))
    ).status_code == 401
    assert (
        await client.post(f"{API}/auth/refresh{COOKIE}", headers=sending(new["value"]))
    ).status_code == 200


async def test_refresh_reads_the_cookie_and_rotates_it(client: httpx.AsyncClient) -> None:
    _, first = await cookie_login(client)
    response = await client.post(f"{API}/auth/refresh{COOKIE}", headers=sending(first))
    assert response.status_code == 200, response.text
    assert response.json()["refresh_token"] is None
    second = refresh_cookie(response)["value"]
    assert second != first
    me = await client.get(f"{API}/users/me", headers=bearer(response.json()["access_token"]))
    assert me.status_code == 200
    again = await client.post(f"{API}/auth/refresh{COOKIE}", headers=sending(second))
    assert again.status_code == 200, again.text


async def test_two_refresh_cookies_are_refused_not_chosen_between(
    client: httpx.AsyncClient,
) -> None:
    """A cookie planted for a parent domain or another path comes with the real one;
    neither is taken, so the planted one never decides which session is refreshed."""
    _, real = await cookie_login(client)
    _, planted = await cookie_login(client)
    for action in ("refresh", "logout"):
        twice = {**FROM_FRONT_END, "Cookie": f"refresh_token={planted}; refresh_token={real}"}
        refused = await client.post(f"{API}/auth/{action}{COOKIE}", headers=twice)
        assert (refused.status_code, refused.json()["code"]) == (400, "refresh_cookie_repeated")
    # Both sessions are untouched: each cookie alone still refreshes.
    for token in (real, planted):
        response = await client.post(f"{API}/auth/refresh{COOKIE}", headers=sending(token))
        assert response.status_code == 200, response.text


async def test_logout_ends_the_session_and_clears_the_cookie(client: httpx.AsyncClient) -> None:
    _, token = await cookie_login(client)
    response = await client.post(f"{API}/auth/logout{COOKIE}", headers=sending(token))
    assert response.status_code == 204, response.text
    cleared = refresh_cookie(response)
    assert cleared["value"] == ""
    assert cleared["max-age"] == "0"
    assert cleared["path"] == f"{API}/auth"  # the same cookie, or the browser keeps it
    refused = await client.post(f"{API}/auth/refresh{COOKIE}", headers=sending(token))
    assert refused.status_code == 401


async def test_cookie_transport_without_the_cookie_is_401(client: httpx.AsyncClient) -> None:
    for action in ("refresh", "logout"):
        response = await client.post(f"{API}/auth/{action}{COOKIE}", headers=FROM_FRONT_END)
        assert response.status_code == 401, response.text
        assert "No refresh token cookie" in response.json()["detail"]


async def test_cookie_transport_ignores_a_refresh_token_in_the_body(
    client: httpx.AsyncClient,
) -> None:
    _, token = await cookie_login(client)
    response = await client.post(
        f"{API}/auth/refresh{COOKIE}", json={"refresh_token": token}, headers=FROM_FRONT_END
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({"Origin": FRONT_END}, "X-Requested-With"),
        ({"Origin": FRONT_END, "X-Requested-With": ""}, "X-Requested-With"),
        ({"X-Requested-With": "fetch"}, "Origin header"),
        ({"Origin": "https://evil.example.com", "X-Requested-With": "fetch"}, "evil.example"),
        # Another port is another origin, though the same site to a browser.
        ({"Origin": FRONT_END + ":8443", "X-Requested-With": "fetch"}, FRONT_END + ":8443"),
        ({"Origin": "null", "X-Requested-With": "fetch"}, "Origin null"),
    ],
)
async def test_cookie_requests_from_elsewhere_are_403_and_change_nothing(
    client: httpx.AsyncClient, headers: dict[str, str], named: str
) -> None:
    _, token = await cookie_login(client)
    with_cookie = {**headers, "Cookie": f"refresh_token={token}"}
    for action in ("login", "refresh", "logout"):
        body = CREDENTIALS if action == "login" else None
        response = await client.post(f"{API}/auth/{action}{COOKIE}", data=body, headers=with_cookie)
        assert response.status_code == 403, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert named in response.json()["detail"]
        assert "set-cookie" not in response.headers
    # Neither rotated nor ended: the cookie still refreshes once.
    still = await client.post(f"{API}/auth/refresh{COOKIE}", headers=sending(token))
    assert still.status_code == 200, still.text


async def test_the_apps_own_origin_may_use_cookies_without_being_listed(
    client: httpx.AsyncClient,
) -> None:
    # The dashboard served at /admin sends its own origin, which CORS_ORIGINS need not list.
    own = {"Origin": "http://testserver", "X-Requested-With": "fetch"}
    response = await client.post(f"{API}/auth/login{COOKIE}", data=CREDENTIALS, headers=own)
    assert response.status_code == 200, response.text
    token = refresh_cookie(response)["value"]
    refreshed = await client.post(
        f"{API}/auth/refresh{COOKIE}", headers={**own, "Cookie": f"refresh_token={token}"}
    )
    assert refreshed.status_code == 200, refreshed.text
    # Another port of the same host is another origin: still refused.
    elsewhere = {**own, "Origin": "http://testserver:8080"}
    refused = await client.post(f"{API}/auth/login{COOKIE}", data=CREDENTIALS, headers=elsewhere)
    assert refused.status_code == 403, refused.text


async def test_a_wildcard_in_cors_origins_admits_no_cookie_request(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    settings.CORS_ORIGINS.append("*")
    response = await client.post(
        f"{API}/auth/login{COOKIE}",
        data=CREDENTIALS,
        headers={"Origin": "https://anywhere.example.com", "X-Requested-With": "fetch"},
    )
    assert response.status_code == 403


async def test_bearer_clients_are_unchanged(
    client: httpx.AsyncClient, register: RegisterUser
) -> None:
    tokens = await register()
    for transport in ("", "?transport=bearer"):
        # A cookie and front-end headers change nothing without transport=cookie.
        response = await client.post(
            f"{API}/auth/refresh{transport}",
            json={"refresh_token": tokens["refresh_token"]},
            headers={**FROM_FRONT_END, "Cookie": "refresh_token=ignored"},
        )
        assert response.status_code == 200, response.text
        assert "set-cookie" not in response.headers
        tokens = response.json()
        assert isinstance(tokens["refresh_token"], str)
    login = await client.post(f"{API}/auth/login", data=CREDENTIALS)
    assert isinstance(login.json()["refresh_token"], str)
    assert "set-cookie" not in login.headers
    logout = await client.post(
        f"{API}/auth/logout", json={"refresh_token": tokens["refresh_token"]}
    )
    assert logout.status_code == 204
    assert "set-cookie" not in logout.headers


@pytest.mark.parametrize(("body", "message", "code"), [
    ({}, "Field required", "missing"),
    ({"content": b"null", "headers": {"content-type": "application/json"}},
     "Input should be a valid dictionary or object to extract fields from",
     "model_attributes_type"),
])  # fmt: skip
async def test_bearer_refresh_without_a_body_is_still_422(
    client: httpx.AsyncClient, body: dict[str, Any], message: str, code: str
) -> None:
    for action in ("refresh", "logout"):
        response = await client.post(f"{API}/auth/{action}", **body)
        assert response.status_code == 422
        error = {"field": "body", "message": message, "code": code}
        assert response.json()["errors"] == [error]


async def test_an_unknown_transport_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{API}/auth/login?transport=smoke", data=CREDENTIALS)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "transport"


async def test_the_front_end_may_preflight_a_credentialed_cookie_request(
    client: httpx.AsyncClient,
) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-requested-with",
    }
    allowed = await client.options(
        f"{API}/auth/refresh{COOKIE}", headers={"Origin": FRONT_END, **preflight}
    )
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == FRONT_END
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "x-requested-with" in allowed.headers["access-control-allow-headers"].lower()
    foreign = await client.options(
        f"{API}/auth/refresh{COOKIE}", headers={"Origin": "https://evil.example.com", **preflight}
    )
    assert foreign.status_code == 400
    assert "access-control-allow-origin" not in foreign.headers


async def test_the_schema_documents_the_transport(client: httpx.AsyncClient) -> None:
    schema = (await client.get(f"{API}/openapi.json")).json()
    for action in ("register", "login", "refresh", "logout"):
        operation = schema["paths"][f"{API}/auth/{action}"]["post"]
        parameters = {parameter["name"]: parameter for parameter in operation["parameters"]}
        assert "X-Requested-With" in parameters["transport"]["description"]
        assert parameters["X-Requested-With"]["in"] == "header"
        assert "403" in operation["responses"]
    refresh_token = schema["components"]["schemas"]["LoginResponse"]["properties"]["refresh_token"]
    assert {"type": "null"} in refresh_token["anyOf"]
    assert "cookie" in refresh_token["description"]


@pytest.mark.parametrize(("stage", "secure"), [("local", False), ("production", True)])
def test_the_cookie_is_secure_except_on_a_local_server(stage: str, secure: bool) -> None:
    # Production's bcrypt floor; nothing is hashed here.
    settings = make_settings(
        "postgresql://u:p@127.0.0.1/db", STAGE=stage, API_V1_PREFIX="/v2", BCRYPT_ROUNDS=12
    )
    user = User(id=1, email="ada@example.com", name="Ada", hashed_password="unused")
    session_id, session_expires = "a" * 32, utcnow() + timedelta(days=30)
    tokens = LoginResponse(
        access_token=create_token(
            user, ACCESS, settings, session_id=session_id, session_expires=session_expires
        )[0],
        refresh_token=create_token(
            user, REFRESH, settings, session_id=session_id, session_expires=session_expires
        )[0],
        expires_in=1800,
        user=UserPublic.model_validate(user),
    )
    response = Response()
    TokenDelivery(transport=Transport.COOKIE, response=response, settings=settings).send(tokens)
    header = response.headers["set-cookie"]
    assert ("Secure" in header) is secure
    assert "Path=/v2/auth" in header
