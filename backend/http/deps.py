"""Annotated dependencies of the HTTP plumbing: the runtime, the db session, the client's
address, path ids and If-Match. The caller's identity is backend/auth/deps.py's.

Every dependency is `async def`, even those that do not await: FastAPI runs a plain
`def` dependency in a worker thread, a thread hand-off per request for nothing.
"""

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Request
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.convertors import Convertor, register_url_convertor

from backend.http.parsing import INT32_MAX, parse_int
from backend.http.ratelimit import client_ip, rate_limit_key
from backend.runtime import Runtime, runtime_of

SAFE_METHODS = frozenset({"GET", "HEAD"})


async def get_runtime(request: Request) -> Runtime:
    return runtime_of(request.scope)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_db(request: Request, runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    # GET and HEAD handlers only read, so their sessions need no transaction (db/session.py);
    # the one write on their path, an API key's last_used_at, is a single UPDATE.
    read_only = request.method in SAFE_METHODS
    sessionmaker = runtime.read_sessionmaker if read_only else runtime.sessionmaker
    async with sessionmaker() as db:
        yield db


async def get_client_ip(request: Request, runtime: RuntimeDep) -> str:
    """The client as rate limits count it: its address, an IPv6 one as its /64."""
    return rate_limit_key(client_ip(request, runtime.settings.TRUSTED_PROXIES))


DbSession = Annotated[AsyncSession, Depends(get_db)]
ClientIP = Annotated[str, Depends(get_client_ip)]


class DigitsConvertor(Convertor[str]):
    """A path segment of ASCII digits, handed on as text for the endpoint to validate.

    Starlette's `int` convertor calls int() while routing, before any handler runs, so
    5,000 digits raised ValueError there: a 500 even without a token. Here the route
    still matches only digits (/users/me stays its own route, /users/abc a 404), and
    the endpoint's parameter type bounds the number, with a 422 naming it.
    """

    regex = "[0-9]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: Any) -> str:
        return str(value)


register_url_convertor("digits", DigitsConvertor())

# Routes take `{user_id:digits}` (see DigitsConvertor), never Starlette's `int`.
UserId = Annotated[int, Path(ge=1, le=INT32_MAX)]
ApiKeyId = Annotated[int, Path(ge=1, le=INT32_MAX, description="An API key's id")]
PasskeyId = Annotated[int, Path(ge=1, le=INT32_MAX, description="A passkey's id")]


async def get_expected_versions(
    if_match: Annotated[str | None, Header(description="ETags of the version you read")] = None,
) -> frozenset[int] | None:
    """The versions an If-Match header allows, or None to allow any.

    `*` asks only that the user exists, which the route checks anyway. A weak, malformed
    or out-of-range ETag can match nothing (If-Match compares strongly), so it is left
    out; a header naming no possible version gives the empty set, answered with 412.
    """
    if if_match is None or if_match.strip() == "*":
        return None
    versions = set()
    for tag in if_match.split(","):
        value = tag.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            version = parse_int(value[1:-1], low=0, high=INT32_MAX)
            if version is not None:
                versions.add(version)
    return frozenset(versions)


ExpectedVersions = Annotated[frozenset[int] | None, Depends(get_expected_versions)]
