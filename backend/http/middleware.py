"""Plain ASGI middleware: no BaseHTTPMiddleware, which costs throughput and breaks streaming."""

import asyncio
import logging
import re
import uuid
from http import HTTPStatus

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import ProblemCode
from backend.http.parsing import parse_int
from backend.http.problems import problem_response, unexpected_error_response

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
# Appended as they are: no route sets any of them, and Starlette's MutableHeaders, which
# would look for each one first, was 9% of a GET /health (bench/README.md).
_SECURITY_HEADER_PAIRS = [
    (name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()
]
_NO_STORE = (b"cache-control", b"no-store")
# A year, the usual floor for HSTS preload lists; no includeSubDomains: other hosts of
# the domain are not ours to pin to HTTPS.
_HSTS = (b"strict-transport-security", b"max-age=31536000")
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# A client cut off by a shutdown can retry at once against another instance; this one,
# restarted, is ready again within a few seconds (the readiness probe's Retry-After too).
SHUTDOWN_RETRY_AFTER_SECONDS = 5


class ResponseHeadersMiddleware:
    """X-Request-ID (echoed when well-formed, else made) and security headers on every
    response; API responses, which carry tokens and personal data, are never cached."""

    def __init__(self, app: ASGIApp, *, api_prefix: str, https: bool = False) -> None:
        self.app = app
        self.api_prefix = api_prefix
        # Served at an https PUBLIC_URL (behind a proxy that ends TLS): browsers are told
        # to use HTTPS only, so no later visit goes out in the clear first.
        self.always = [*_SECURITY_HEADER_PAIRS, _HSTS] if https else _SECURITY_HEADER_PAIRS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = sent if _VALID_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        no_store = scope["path"].startswith(self.api_prefix + "/")

        added = [(REQUEST_ID_HEADER.encode(), request_id.encode()), *self.always]
        if no_store:
            added.append(_NO_STORE)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *added]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class UnexpectedErrorMiddleware:
    """Answer an exception that no handler took with a 500 problem, logged once.

    Installed innermost, so the 500 passes through the other middleware like any other
    response and gets the request id, security and no-store headers, CORS and its line
    in the request log; and the exception stops here instead of reaching the server,
    which would log its traceback again.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def send_and_note_start(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_start)
        except ClientDisconnect:
            # Read while the body was still coming: the client left, or its body paused
            # too long (BodyReadTimeoutMiddleware answered 408). No one to answer, no bug.
            return
        except Exception as error:
            if response_started:
                raise  # too late for an error response: the server must drop the connection
            request_id = scope.get("state", {}).get("request_id")
            response = unexpected_error_response(error, request_id=request_id)
            await response(scope, receive, send)


class ShutdownCutoffMiddleware:
    """Requests still running when the server stops waiting for them at shutdown get
    503 problem+json with Retry-After, and one line logs how many there were.

    After SHUTDOWN_GRACE_SECONDS uvicorn cancels the tasks still running. Left alone, the
    CancelledError leaves the app and uvicorn answers a plain-text 500 and logs a
    traceback for each. Uvicorn cancels only then, so a cancelled request is a cut one.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_flight = 0
        self.cut_off = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        self.in_flight += 1
        try:
            await self.app(scope, receive, send_noting_start)
        except asyncio.CancelledError:
            if response_started:
                raise  # too late for another status: the server drops the connection
            self.cut_off += 1
            response = problem_response(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "The server is shutting down and stopped this request; retry shortly.",
                code=ProblemCode.SHUTTING_DOWN,
                headers={"Retry-After": str(SHUTDOWN_RETRY_AFTER_SECONDS)},
                request_id=scope.get("state", {}).get("request_id"),
            )
            await response(scope, receive, send)
        finally:
            self.in_flight -= 1
            # The server cancels them all at once, so the last one out has the count.
            if self.in_flight == 0 and self.cut_off:
                logger.warning(
                    "shutdown grace period exceeded: %d requests cut off, answered 503",
                    self.cut_off,
                )
                self.cut_off = 0


class BodyReadTimeoutMiddleware:
    """A body that pauses for longer than the timeout between two pieces gets 408
    problem+json, and the connection is closed.

    uvicorn waits for a body as long as the client likes. Here, not in the server's
    protocol (backend/http/connections.py), because only a body the app reads is waited
    for, and the answer then goes out through the middleware outside: request id,
    security headers, CORS, the request log. After it the app reads a disconnect and
    anything it sends is dropped.
    """

    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        body_done = timed_out = response_started = False

        async def receive_in_time() -> Message:
            nonlocal body_done, timed_out
            if timed_out:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()  # a wait for the disconnect, however long
            try:
                async with asyncio.timeout(self.seconds):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                if not response_started:
                    await self._refuse(scope, receive, send)
                return {"type": "http.disconnect"}
            body_done = message["type"] != "http.request" or not message.get("more_body")
            return message

        async def send_unless_timed_out(message: Message) -> None:
            nonlocal response_started
            if timed_out:
                return
            response_started = True
            await send(message)

        await self.app(scope, receive_in_time, send_unless_timed_out)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            HTTPStatus.REQUEST_TIMEOUT,
            f"The request body paused for longer than {self.seconds:g} s.",
            code=ProblemCode.REQUEST_TIMEOUT,
            request_id=scope.get("state", {}).get("request_id"),
            # The rest of the body, should it come, would be parsed as the next request.
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


class BodySizeLimitMiddleware:
    """Refuse bodies over the limit with 413 before anything parses them.

    A declared Content-Length is checked up front (the server delivers no more than it
    declares); a chunked body is read up to the limit and handed on in one piece.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if parse_int(declared.decode("latin-1"), low=0, high=self.max_bytes) is None:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if scope["method"] in {"GET", "HEAD", "OPTIONS", "DELETE"}:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"The request body is larger than the limit of {self.max_bytes} bytes.",
            code=ProblemCode.BODY_TOO_LARGE,
            request_id=scope.get("state", {}).get("request_id"),
            # The unread rest of the body would be parsed as the next request.
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class TrailingSlashMiddleware:
    """Route /users/ like /users, with no redirect (a redirect drops POST bodies in clients)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
        await self.app(scope, receive, send)


class HeadAsGetMiddleware:
    """Answer HEAD as GET without the body (RFC 9110: the same headers). FastAPI's routes
    list GET alone, so HEAD was a 405 everywhere, read-only API keys' HEAD included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


class LivenessMiddleware:
    """Answer `GET /health` here, ahead of the router: an orchestrator asks every few
    seconds per instance, and routing and dependency solving were 80% of its cost (a
    quarter of the bare server's throughput, bench/README.md). Installed inside the
    request log, headers and CORS, so its answer gets all of them like any other."""

    def __init__(self, app: ASGIApp, *, path: str, route: object, body: bytes) -> None:
        self.app = app
        self.path = path
        self.route = route  # what the request log names the route by
        self.headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        self.body = {"type": "http.response.body", "body": body}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        # A new list each time: the middleware outside adds its headers to the one it gets.
        await send({"type": "http.response.start", "status": 200, "headers": [*self.headers]})
        await send(self.body)


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with its refused preflight answered as problem+json."""

    def preflight_response(self, request_headers: object) -> Response:
        response = super().preflight_response(request_headers)  # type: ignore[arg-type]
        if response.status_code < 400:
            return response
        problem = problem_response(
            response.status_code, bytes(response.body).decode(), code=ProblemCode.CORS_REFUSED
        )
        for name in ("access-control-allow-origin", "vary"):
            if name in response.headers:
                problem.headers[name] = response.headers[name]
        return problem
