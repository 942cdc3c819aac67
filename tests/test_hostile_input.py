"""Body size limits and hostile input: a 4xx problem, never a 500."""

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.helpers import ADMIN_EMAIL, API, USER_PASSWORD


async def test_two_megabyte_body_is_413_before_parsing(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{API}/auth/register",
        content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert "limit of 1048576 bytes" in response.json()["detail"]
    assert response.headers["x-request-id"]


async def test_chunked_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * (512 * 1024)

    response = await client.post(
        f"{API}/auth/register", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


async def test_chunked_body_under_the_limit_is_read(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"email": "chunk@example.com", "name": "Chunk",'
        yield b' "password": "' + USER_PASSWORD.encode() + b'"}'

    response = await client.post(
        f"{API}/auth/register", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200


def registration(
    email: str = "a@example.com", name: str = "x", password: str = "Password-1"
) -> bytes:
    return json.dumps({"email": email, "name": name, "password": password}).encode()


HOSTILE_REGISTRATIONS: list[tuple[str, bytes, str]] = [
    ("malformed json", b'{"email": "a@example.com",', "application/json"),
    ("json array", b"[1, 2]", "application/json"),
    ("wrong content type", b"email=a@example.com", "text/plain"),
    ("no body", b"", "application/json"),
    ("huge email", registration(email="a" * 10_000 + "@example.com"), "application/json"),
    ("nul in email", registration(email="a\x00@example.com"), "application/json"),
    ("nul in name", registration(name="a\x00b"), "application/json"),
    ("nul in password", registration(password="Pass\x00word"), "application/json"),
    ("10k name", registration(name="n" * 10_000), "application/json"),
    ("invalid utf-8", b'{"email": "\xff\xfe@example.com"}', "application/json"),
    ("deep nesting", b"[" * 5000 + b"]" * 5000, "application/json"),
]


@pytest.mark.parametrize(
    ("case", "body", "content_type"),
    HOSTILE_REGISTRATIONS,
    ids=[c[0] for c in HOSTILE_REGISTRATIONS],
)
async def test_hostile_bodies_get_4xx_problems(
    client: httpx.AsyncClient, case: str, body: bytes, content_type: str
) -> None:
    response = await client.post(
        f"{API}/auth/register", content=body, headers={"content-type": content_type}
    )
    assert 400 <= response.status_code < 500, case
    assert response.headers["content-type"] == "application/problem+json", case


async def test_non_ascii_email_is_handled(client: httpx.AsyncClient) -> None:
    # Refused by default (look-alikes; see test_lookalike_emails for the setting that
    # allows them), and a login with one is an ordinary failed login.
    response = await client.post(
        f"{API}/auth/register",
        json={"email": "Jürgen@Exämple.de", "name": "Jürgen", "password": USER_PASSWORD},
    )
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["email"]
    again = await client.post(
        f"{API}/auth/login", data={"username": "jürgen@exämple.de", "password": USER_PASSWORD}
    )
    assert again.status_code == 401


async def test_hostile_logins_get_4xx(client: httpx.AsyncClient) -> None:
    cases = [
        {"username": "a\x00@example.com", "password": "x"},
        {"username": ADMIN_EMAIL, "password": "nul\x00byte"},
        {"username": "x" * 10_000, "password": "x"},
        {"username": ADMIN_EMAIL, "password": "p" * 5000},
    ]
    for form in cases:
        response = await client.post(f"{API}/auth/login", data=form)
        assert 400 <= response.status_code < 500, form
    multipart = await client.post(
        f"{API}/auth/login",
        content=b"--x\r\nbroken",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert 400 <= multipart.status_code < 500
