"""uvicorn's HTTP protocol with read deadlines, so that slow clients cannot hold
connections: uvicorn itself times out only the wait between two requests
(`timeout_keep_alive`), not a request's header section nor a body nobody reads.

`backend serve` passes the class as uvicorn's `http` protocol; plain uvicorn takes
`--http backend.http.connections:ReadDeadlineProtocol`. A body the app reads is bounded
by BodyReadTimeoutMiddleware (backend/http/middleware.py), which can still answer 408
problem+json through the app.
"""

import asyncio
from http import HTTPStatus
from typing import Any, Literal

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from backend.config import get_settings
from backend.errors import ProblemCode
from backend.http.middleware import SECURITY_HEADERS
from backend.http.problems import problem_response


def _raw_problem(status: HTTPStatus, detail: str, code: ProblemCode) -> bytes:
    """A whole HTTP/1.1 answer, problem+json, for the protocol to write before any app
    sees the request; the connection is closed after it."""
    response = problem_response(
        status, detail, code=code, headers={"Connection": "close", **SECURITY_HEADERS}
    )
    lines = [f"HTTP/1.1 {status.value} {status.phrase}".encode()]
    lines += [name + b": " + value for name, value in response.raw_headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + bytes(response.body)


TIMEOUT_ANSWER = _raw_problem(
    HTTPStatus.REQUEST_TIMEOUT,
    "The request's header section did not arrive in time.",
    ProblemCode.REQUEST_TIMEOUT,
)
# What uvicorn answers a request httptools cannot parse: as problem+json, the one error
# format, not its own text/plain line.
MALFORMED_ANSWER = _raw_problem(
    HTTPStatus.BAD_REQUEST,
    "This is not a valid HTTP request (its request line or a header could not be read).",
    ProblemCode.HTTP_ERROR,
)


class ReadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, which `backend serve` runs (httptools is installed
    with uvicorn[standard]), with one deadline per connection while it waits on the client:

    - from the connection's start, or from a request's first byte, until the end of its
      header section: HEADER_READ_TIMEOUT_SECONDS; then 408 problem+json (a request was
      begun) or nothing (none was), and the connection is closed;
    - after the response, while the rest of a body the app did not read still comes:
      BODY_READ_TIMEOUT_SECONDS in all, then the connection is closed.

    Between requests uvicorn's keep-alive timeout runs instead, and while the app answers
    nothing does: the app's own time is not the client's fault.
    """

    def send_400_response(self, msg: str) -> None:
        self.transport.write(MALFORMED_ANSWER)
        self.transport.close()

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_settings()
        self.header_timeout = settings.HEADER_READ_TIMEOUT_SECONDS
        self.body_timeout = settings.BODY_READ_TIMEOUT_SECONDS
        self.deadline: asyncio.TimerHandle | None = None
        # Where the parser is in the current request: before its first byte (or between
        # two requests), in its header section, or in its body.
        self.phase: Literal["idle", "headers", "body"] = "idle"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.phase = "headers"
        self._disarm()  # each request gets the whole header timeout

    def on_headers_complete(self) -> None:
        self.phase = "body"
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.phase = "idle"
        self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def _watch(self) -> None:
        """Arm the deadline the connection's state calls for, or none."""
        if self.transport.is_closing():
            self._disarm()
        elif self.phase == "headers":
            self._arm(self.header_timeout)
        elif self._answering() or self.timeout_keep_alive_task is not None:
            self._disarm()
        elif self.phase == "idle":
            # A new connection (the keep-alive timeout runs only after a response), or
            # bytes between requests that begin none (blank lines), which cancelled it.
            self._arm(self.header_timeout)
        else:
            # The response is out and the client still sends a body nobody reads: it
            # gets the body timeout in all, not per piece, or a byte now and then would
            # hold the connection for ever.
            self._arm(self.body_timeout)

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self, seconds: float) -> None:
        """Start a deadline unless one runs: more bytes do not put it off."""
        if self.deadline is None:
            self.deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expired(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        if self._answering():
            # A pipelined request stalled in its header section while the one before it
            # is answered: close once that answer is out, not in the middle of it.
            self.cycle.keep_alive = False
            return
        if self.phase == "headers":
            self.transport.write(TIMEOUT_ANSWER)
        self.transport.close()
