"""Slow clients against a served process, over raw sockets: a request whose header
section or body stalls is answered 408 and its connection closed within the timeouts
(HEADER_READ_TIMEOUT_SECONDS, BODY_READ_TIMEOUT_SECONDS), while everyone else is served.
Both documented ways to serve: `backend serve`, and plain uvicorn given the protocol."""

import json
import socket
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import API
from tests.test_served import BIN, ServerProcess

TIMEOUT_SECONDS = 2
# Room for a loaded test machine: the server's timers fire on time, its loop may not.
SLACK_SECONDS = 5
EACH = 20
PROTOCOL = "backend.http.connections:ReadDeadlineProtocol"
COMMANDS = {
    "backend serve": [str(BIN / "backend"), "serve", "--port"],
    "uvicorn --http": [
        *(sys.executable, "-m", "uvicorn", "--factory", "backend.main:served_app"),
        *("--no-server-header", "--no-proxy-headers", "--http", PROTOCOL, "--port"),
    ],
}
LOGIN_HEAD = (
    f"POST {API}/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    "Content-Length: {length}\r\n\r\n"
)
LOGIN_BODY = json.dumps({"email": "slow@example.com", "password": "Wrong-Password-1"}).encode()


class SlowClientServer(ServerProcess):
    commands = COMMANDS


@pytest.fixture(scope="module", params=list(COMMANDS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = SlowClientServer(
        request.param,
        tmp_path_factory.mktemp("slow"),
        HEADER_READ_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS),
        BODY_READ_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS),
        RATE_LIMIT_ENABLED="false",
    )
    try:
        server.wait_until_healthy()
        yield server
    finally:
        server.stop()


def connect(server: ServerProcess, first_bytes: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def read_until_closed(sock: socket.socket, deadline: float) -> bytes | None:
    """All the server sent before it closed the connection, or None if it is still
    open at the deadline."""
    received = b""
    with sock:
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return None
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


def problem_of(answer: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, json.loads(body)


def login_status(server: ServerProcess) -> int:
    response = httpx.post(
        f"{server.base_url}{API}/auth/login",
        json={"email": "slow@example.com", "password": "Wrong-Password-1"},
        timeout=10,
    )
    return response.status_code


def test_stalled_headers_and_bodies_get_408_and_are_closed(server: ServerProcess) -> None:
    half_body = LOGIN_BODY[: len(LOGIN_BODY) // 2]
    started = time.monotonic()
    idle = [connect(server, b"") for _ in range(EACH)]
    half_headers = [connect(server, b"GET /health HTTP/1.1\r\nHost: x\r\nAcc") for _ in range(EACH)]
    half_bodies = [
        connect(server, LOGIN_HEAD.format(length=len(LOGIN_BODY)).encode() + half_body)
        for _ in range(EACH)
    ]
    # Everyone else is served meanwhile, a body sent in two pieces within the timeout too.
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
    assert login_status(server) == 401
    slow_but_in_time = connect(server, LOGIN_HEAD.format(length=len(LOGIN_BODY)).encode())
    time.sleep(TIMEOUT_SECONDS / 2)
    slow_but_in_time.sendall(LOGIN_BODY)
    in_time_answer = slow_but_in_time.recv(65536)

    deadline = started + TIMEOUT_SECONDS + SLACK_SECONDS
    answers = {
        "idle": [read_until_closed(sock, deadline) for sock in idle],
        "half headers": [read_until_closed(sock, deadline) for sock in half_headers],
        "half bodies": [read_until_closed(sock, deadline) for sock in half_bodies],
    }
    closed_after = time.monotonic() - started
    still_open = {kind: found.count(None) for kind, found in answers.items() if None in found}
    assert not still_open, f"open {TIMEOUT_SECONDS + SLACK_SECONDS} s after: {still_open}"
    # Not before the timeout: the deadline is the setting, not something shorter.
    assert closed_after >= TIMEOUT_SECONDS
    assert answers["idle"] == [b""] * EACH  # no request begun, nothing to answer
    for kind in ("half headers", "half bodies"):
        for answer in answers[kind]:
            assert answer is not None
            status, headers, problem = problem_of(answer)
            assert (status, problem["code"]) == (408, "request_timeout"), kind
            assert headers["content-type"] == "application/problem+json"
            assert headers["connection"] == "close"
            assert headers["x-content-type-options"] == "nosniff"
    assert in_time_answer.startswith(b"HTTP/1.1 401 "), in_time_answer[:200]

    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
    assert login_status(server) == 401
    time.sleep(0.5)  # the last lines reach the files
    output = server.output()
    assert "Traceback" not in output
    assert "unhandled error" not in output


def test_a_body_the_app_did_not_read_cannot_trickle_forever(server: ServerProcess) -> None:
    # /health answers (405) without reading the body; uvicorn would keep reading the rest,
    # and each byte would put off its keep-alive timeout.
    sock = connect(server, b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
    answered = sock.recv(65536)
    assert answered.startswith(b"HTTP/1.1 405 "), answered[:200]
    started = time.monotonic()
    closed = False
    with sock:
        while not closed and time.monotonic() - started < TIMEOUT_SECONDS + SLACK_SECONDS:
            try:
                sock.sendall(b" ")
                time.sleep(0.25)
                sock.setblocking(False)
                closed = sock.recv(65536) == b""
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            finally:
                sock.setblocking(True)
    assert closed, f"a byte every 0.25 s held it {TIMEOUT_SECONDS + SLACK_SECONDS} s"
    assert time.monotonic() - started >= TIMEOUT_SECONDS


def test_a_request_that_is_not_http_gets_a_problem_and_is_closed(server: ServerProcess) -> None:
    """httptools cannot parse it, so no app sees it: the protocol answers in the one
    error format (uvicorn's own answer is a text/plain line)."""
    garbage = connect(server, b"GET /health?q=\x00\x01 HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = read_until_closed(garbage, time.monotonic() + 10)
    assert answer is not None
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["code"] == "http_error"
