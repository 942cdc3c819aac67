"""A webhook receiver for tests: a real HTTP server (uvicorn, in a thread of its own, so
that an app run as another process reaches it too) that verifies every delivery's
Standard Webhooks signature with the `standardwebhooks` library, as a receiver would."""

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.types import Receive, Scope, Send

from tests.helpers import free_port

STALL = 0  # a status that means: answer nothing until the server stops


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int  # what the receiver answered (STALL: nothing)

    @property
    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = json.loads(self.body)
        return payload

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    def __init__(self, port: int) -> None:
        self.port = port
        self.secrets: dict[str, str] = {}  # path -> the endpoint's secret
        self.statuses: list[int] = []  # the answers to give, in order; then 204
        self.delay = 0.0  # seconds before each answer
        self.received: list[Received] = []

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def reset(self) -> None:
        self.secrets.clear()
        self.statuses.clear()
        self.delay = 0.0
        self.received.clear()

    def answered(self) -> list[Received]:
        """The deliveries it acknowledged (2xx)."""
        return [item for item in self.received if 200 <= item.status < 300]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        secret = self.secrets.get(scope["path"])
        try:
            Webhook(secret or "whsec_AAAA").verify(body, headers)
            verified = secret is not None
        except WebhookVerificationError:
            verified = False
        status = self.statuses.pop(0) if self.statuses else 204
        self.received.append(Received(scope["path"], headers, body, verified, status))
        if status == STALL:
            await asyncio.sleep(3600)
        if self.delay:
            await asyncio.sleep(self.delay)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@contextmanager
def receiver_server() -> Iterator[Receiver]:
    receiver = Receiver(free_port())
    config = uvicorn.Config(
        receiver,
        host="127.0.0.1",
        port=receiver.port,
        lifespan="off",
        log_level="critical",  # a stalled request is cancelled at its end
        timeout_graceful_shutdown=0,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the receiver did not start"
        time.sleep(0.01)
    try:
        yield receiver
    finally:
        server.should_exit = True
        thread.join(timeout=5)


async def eventually(condition: Callable[[], bool], seconds: float = 10) -> None:
    """Wait until `condition` holds, failing after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.02)
