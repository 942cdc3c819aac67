"""Every operation checks its caller before anything else, so that nobody learns which
user ids exist without being allowed to, and an anonymous request touches no table."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import jwt
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.http.parsing import INT32_MAX as MAX_ID
from tests.helpers import API, TEST_SECRET_KEY, bearer

# Operations anyone may call: each one is here on purpose, and any other needs a token.
PUBLIC_OPERATIONS = {
    ("post", f"{API}/auth/register"),
    ("post", f"{API}/auth/login"),
    ("post", f"{API}/auth/refresh"),
    ("post", f"{API}/auth/logout"),
    # The mfa_token in the body is the credential (a login's second step).
    ("post", f"{API}/auth/mfa/passkey-options"),
    ("post", f"{API}/auth/mfa/verify"),
    # The mailed links: the token in the body is the credential, or the answer is the
    # same for any address.
    ("post", f"{API}/auth/password/forgot"),
    ("post", f"{API}/auth/password/reset"),
    ("post", f"{API}/auth/password/set"),
    ("post", f"{API}/auth/verify"),
    ("post", f"{API}/auth/verify/resend"),
    # Passwordless sign-in (PASSKEY_LOGIN): the signed assertion is the credential, and
    # whether it is on is for a login page to ask.
    ("get", f"{API}/auth/passkey"),
    ("post", f"{API}/auth/passkey/options"),
    ("post", f"{API}/auth/passkey/verify"),
    # Sign-in with a provider: the trip there and back, and the one-time code it ends in.
    ("get", f"{API}/auth/sso/providers"),
    ("get", f"{API}/auth/sso/{{provider}}/authorize"),
    ("get", f"{API}/auth/sso/{{provider}}/callback"),
    ("post", f"{API}/auth/sso/exchange"),
    ("post", f"{API}/auth/email/confirm"),
    ("get", "/health"),
    ("get", "/health/ready"),
}
OTHER_KEY = "another-secret-key-that-is-long-enough-for-hs256"
STRANGERS = {
    "no token": {},
    "garbage token": bearer("not-a-jwt"),
    "token signed with another key": bearer(
        jwt.encode({"sub": "1", "type": "access"}, OTHER_KEY, algorithm="HS256")
    ),
}


# The one query of a token's check (sessions.check): the user's row joined with the session's.
CALLER_CHECK = "FROM users LEFT OUTER JOIN sessions"
# The sign-in history's writer shares the engine, on a timer of its own: its batch is no
# statement of the request that happens to be running (backend/auth/events.py).
SIGN_IN_BATCH = "INSERT INTO auth_events"


@contextmanager
def counting_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The statements the requests send meanwhile, the sign-in writer's batches aside."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statement = args[2]  # (connection, cursor, statement, ...)
        if not statement.startswith(SIGN_IN_BATCH):
            statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


def _operations(app: FastAPI) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


class Probe:
    """Sends one operation with each path parameter set to one id, counting SQL."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.engine = app.state.runtime.engine
        self.client = client

    async def send(
        self,
        method: str,
        path: str,
        operation: dict[str, Any],
        user_id: int,
        headers: dict[str, str],
    ) -> tuple[int, Any, tuple[str, ...]]:
        url = path
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                # Every id is the user's; a provider's slug starts with a letter.
                slug = parameter["name"] == "provider" or path.endswith("identities/{identity}")
                value = "corp" if slug and method == "post" else str(user_id)
                url = url.replace(f"{{{parameter['name']}}}", value)
        body: dict[str, Any] | None = {} if "requestBody" in operation else None
        with counting_statements(self.engine) as statements:
            response = await self.client.request(method, url, headers=headers, json=body)
        answer = response.json() if response.content else None
        if isinstance(answer, dict):
            answer.pop("request_id", None)  # differs on every request by design
        return response.status_code, answer, tuple(statements)


async def test_every_operation_needs_a_token_unless_public(app: FastAPI) -> None:
    public = {(method, path) for method, path, operation in _operations(app)}
    public -= {
        (method, path) for method, path, operation in _operations(app) if operation.get("security")
    }
    assert public == PUBLIC_OPERATIONS


async def test_strangers_get_401_before_any_table_is_read(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    existing = (await client.get(f"{API}/users/me", headers=admin_headers)).json()["id"]
    probe = Probe(app, client)
    for method, path, operation in _operations(app):
        if not operation.get("security"):
            continue
        for stranger, headers in STRANGERS.items():
            answers = [
                await probe.send(method, path, operation, user_id, headers)
                for user_id in (existing, MAX_ID)
            ]
            for status, problem, statements in answers:
                where = f"{method.upper()} {path} with {stranger}"
                assert status == 401, where
                assert problem["status"] == 401, where
                assert statements == (), where
            assert answers[0] == answers[1], f"{method.upper()} {path} with {stranger}"


async def test_plain_users_get_403_on_admin_routes_whatever_the_id(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    user_headers: dict[str, str],
) -> None:
    existing = (await client.get(f"{API}/users/me", headers=admin_headers)).json()["id"]
    probe = Probe(app, client)
    refused = []
    # logout-all ends the caller's sessions and DELETE /users/me the caller: they go last.
    operations = sorted(
        _operations(app),
        key=lambda operation: (
            operation[1].endswith("logout-all") or operation[:2] == ("delete", f"{API}/users/me")
        ),
    )
    for method, path, operation in operations:
        if not operation.get("security"):
            continue
        answers = [
            await probe.send(method, path, operation, user_id, user_headers)
            for user_id in (existing, MAX_ID)
        ]
        if 403 in (answers[0][0], answers[1][0]):
            # Same answer, and no SQL but the caller's check (one query, or none when the
            # auth cache answers it, which depends on its listener's last ping, not on the
            # id): the target is never read.
            where = f"{method.upper()} {path}"
            assert answers[0][:2] == answers[1][:2], where
            for _status, _problem, statements in answers:
                assert len(statements) <= 1, (where, statements)
                assert all(CALLER_CHECK in statement for statement in statements), where
            refused.append(where)
    assert sorted(refused) == [
        f"DELETE {API}/users/{{user_id}}",
        f"DELETE {API}/users/{{user_id}}/ban",
        f"DELETE {API}/users/{{user_id}}/identities/{{identity_id}}",
        f"DELETE {API}/users/{{user_id}}/mfa",
        f"DELETE {API}/users/{{user_id}}/sessions",
        f"DELETE {API}/users/{{user_id}}/sessions/{{session_id}}",
        f"DELETE {API}/users/{{user_id}}/tokens/{{token_id}}",
        f"DELETE {API}/webhooks/{{webhook_id}}",
        f"GET {API}/audit",
        f"GET {API}/auth-events",
        f"GET {API}/users/{{user_id}}/identities",
        f"GET {API}/users/{{user_id}}/mfa",
        f"GET {API}/users/{{user_id}}/passkeys",
        f"GET {API}/users/{{user_id}}/sessions",
        f"GET {API}/users/{{user_id}}/tokens",
        f"GET {API}/webhooks",
        f"GET {API}/webhooks/{{webhook_id}}",
        f"GET {API}/webhooks/{{webhook_id}}/deliveries",
        f"PATCH {API}/users/{{user_id}}",
        f"PATCH {API}/webhooks/{{webhook_id}}",
        f"POST {API}/users",
        f"POST {API}/users/invite",
        f"POST {API}/users/{{user_id}}/ban",
        f"POST {API}/users/{{user_id}}/impersonate",
        f"POST {API}/users/{{user_id}}/invite",
        f"POST {API}/webhooks",
        f"PUT {API}/users/{{user_id}}",
    ]


async def test_a_signed_token_of_nobody_gets_401_for_any_id(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """A valid signature of a user that does not exist is a stranger too."""
    existing = (await client.get(f"{API}/users/me", headers=admin_headers)).json()["id"]
    claims = jwt.decode(
        admin_headers["Authorization"].removeprefix("Bearer "),
        TEST_SECRET_KEY,
        algorithms=["HS256"],
    )
    nobody = bearer(jwt.encode({**claims, "sub": str(MAX_ID)}, TEST_SECRET_KEY, algorithm="HS256"))
    probe = Probe(app, client)
    for method, path, operation in _operations(app):
        if not operation.get("security"):
            continue
        answers = [
            await probe.send(method, path, operation, user_id, nobody)
            for user_id in (existing, MAX_ID)
        ]
        assert answers[0][0] == 401, f"{method.upper()} {path}"
        assert answers[0] == answers[1], f"{method.upper()} {path}"
