"""Forged, expired and mistyped tokens are all 401; the hasher sheds load with 503."""

import asyncio
import base64
import json
import os
import threading
import time
from typing import Any

import httpx
import jwt
import pytest

from backend.auth.jwt import ACCESS, REFRESH, decode_token
from backend.auth.passwords import PasswordHasher
from backend.config import Settings
from backend.errors import ServiceUnavailableError, UnauthorizedError
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, TEST_SECRET_KEY, bearer, login


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def _claims(client: httpx.AsyncClient) -> dict[str, Any]:
    token = (await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"]
    claims: dict[str, Any] = jwt.decode(token, TEST_SECRET_KEY, algorithms=["HS256"])
    return claims


async def test_forged_tokens_are_refused(client: httpx.AsyncClient) -> None:
    claims = await _claims(client)
    valid = jwt.encode(claims, TEST_SECRET_KEY, algorithm="HS256")
    header, payload, signature = valid.split(".")
    now = int(time.time())
    forged = {
        "wrong key": jwt.encode(claims, "another-secret-key-of-enough-length!!", algorithm="HS256"),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "expired": jwt.encode(
            {**claims, "iat": now - 7200, "exp": now - 3600}, TEST_SECRET_KEY, algorithm="HS256"
        ),
        "unknown user": jwt.encode({**claims, "sub": "987654"}, TEST_SECRET_KEY, algorithm="HS256"),
        "tampered": f"{header}.{_b64({**claims, 'sub': '2'})}.{signature}",
        "old version": jwt.encode({**claims, "ver": 5}, TEST_SECRET_KEY, algorithm="HS256"),
        "another account's key": jwt.encode(
            {**claims, "acc": "0" * 32}, TEST_SECRET_KEY, algorithm="HS256"
        ),
        "no account key": jwt.encode(
            {k: v for k, v in claims.items() if k != "acc"}, TEST_SECRET_KEY, algorithm="HS256"
        ),
        "no jti": jwt.encode(
            {k: v for k, v in claims.items() if k != "jti"}, TEST_SECRET_KEY, algorithm="HS256"
        ),
        "garbage": "not.a.jwt",
        "non-numeric sub": jwt.encode({**claims, "sub": "x"}, TEST_SECRET_KEY, algorithm="HS256"),
    }
    assert (await client.get(f"{API}/users/me", headers=bearer(valid))).status_code == 200
    for name, token in forged.items():
        response = await client.get(f"{API}/users/me", headers=bearer(token))
        assert response.status_code == 401, name
        assert response.headers["www-authenticate"] == "Bearer", name
        assert response.headers["content-type"] == "application/problem+json", name


@pytest.mark.parametrize(
    "claims_change",
    [
        {"sub": "1" * 40},  # past any id: a database overflow (500) if it reached a query
        {"sub": " 1"},
        {"sub": "01"},
        {"sub": "1.0"},
        {"sub": "-1"},
        {"sub": "0"},
        {"sub": 1},  # RFC 7519: a string
        {"exp": "9999999999"},
        {"exp": 9999999999.5},
        {"iat": "1"},
        {"ver": "0"},
        {"ver": 2**40},
        {"jti": 7},
        {"acc": "x" * 100},
        {"type": "access "},
    ],
    ids=lambda change: ",".join(f"{key}={value!r}"[:24] for key, value in change.items()),
)
async def test_signed_tokens_with_malformed_claims_are_401(
    client: httpx.AsyncClient, claims_change: dict[str, Any]
) -> None:
    """Correctly signed, so only the claims' own shape can refuse them: strictly."""
    token = jwt.encode({**await _claims(client), **claims_change}, TEST_SECRET_KEY)
    response = await client.get(f"{API}/users/me", headers=bearer(token))
    assert (response.status_code, response.json()["code"]) == (401, "token_invalid")


async def test_a_verified_token_is_refused_under_another_secret_key(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    token = (await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"]
    assert decode_token(token, ACCESS, settings).type == ACCESS  # verified, and now kept
    rotated = settings.model_copy(update={"SECRET_KEY": "another-secret-key-of-enough-length!!"})
    with pytest.raises(UnauthorizedError):
        decode_token(token, ACCESS, rotated)
    with pytest.raises(UnauthorizedError):
        decode_token(token, REFRESH, settings)


async def test_non_bearer_authorization_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{API}/users/me", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert response.status_code == 401


async def test_hasher_refuses_work_past_its_queue_limit() -> None:
    hasher = PasswordHasher(rounds=4, concurrency=1, queue_limit=1)
    release = threading.Event()

    def long_bcrypt_run() -> str:
        release.wait(timeout=10)
        return "done"

    try:
        running = asyncio.create_task(hasher._run(long_bcrypt_run))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(hasher.hash("Password-123"))  # queued behind it
        await asyncio.sleep(0.05)
        assert hasher.queue_depth == 1
        with pytest.raises(ServiceUnavailableError) as refused:
            await hasher.hash("Password-123")  # the queue is full: refused at once
        assert refused.value.retry_after_seconds == 1
        release.set()
        assert await running == "done"
        assert (await waiting).startswith("$2b$04$")
        assert hasher.queue_depth == 0
    finally:
        release.set()
        hasher.close()


def test_hash_threads_run_at_the_lowest_priority() -> None:
    hasher = PasswordHasher(rounds=4, concurrency=1, queue_limit=1)
    try:
        niceness = asyncio.run(
            hasher._run(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        )
    finally:
        hasher.close()
    assert niceness == 19


@pytest.mark.parametrize("password", ["Password-1", "x" * 73])
async def test_verify_without_a_stored_hash_never_matches(password: str) -> None:
    hasher = PasswordHasher(rounds=4, concurrency=1, queue_limit=1)
    assert await hasher.verify(password, None) == (False, None)
