"""Real SMTP servers for the mail tests: one that takes messages (aiosmtpd, in its own
thread), one that accepts connections and never answers, and a port nothing listens on.

The app sends in background tasks on the test's own event loop, so a test waits for
them with `delivered` (the mailer drained) before it reads the mailbox.
"""

import re
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI
from sqlmodel import SQLModel

from backend.config import Settings
from backend.main import create_app
from backend.runtime import Runtime
from tests.helpers import free_port, make_settings

PUBLIC_URL = "https://app.example.com"
MAIL_FROM = "Users API <noreply@example.com>"
TOKEN = re.compile(r"#token=([0-9]+\.[A-Za-z0-9_-]{43})")


class Mailbox:
    """What an aiosmtpd server received; `refuse` makes it answer RCPT with a 550."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[EmailMessage] = []
        self.refuse = False

    async def handle_RCPT(  # noqa: N802  (aiosmtpd's hook name)
        self, server: SMTP, db: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, db: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content or b""
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 Message accepted for delivery"


class Counter(Mailbox):
    """A mailbox that counts what it receives and keeps none of it."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.received = 0

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, db: Session, envelope: Envelope
    ) -> str:
        self.received += 1
        return "250 Message accepted for delivery"


@contextmanager
def smtp_server(mailbox: Mailbox | None = None) -> Iterator[Mailbox]:
    mailbox = mailbox or Mailbox(free_port())
    controller = Controller(mailbox, hostname="127.0.0.1", port=mailbox.port)
    controller.start()
    try:
        yield mailbox
    finally:
        controller.stop()


@contextmanager
def silent_server(port: int = 0) -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never says a word;
    when it closes, the connections it held are reset."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(16)
        bound: int = listener.getsockname()[1]
        yield bound


def mail_settings(port: int, **overrides: Any) -> dict[str, Any]:
    return {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": port,
        "SMTP_TLS": "none",
        "SMTP_TIMEOUT_SECONDS": 2,
        "MAIL_FROM": MAIL_FROM,
        "PUBLIC_URL": PUBLIC_URL,
        **overrides,
    }


def runtime(app: FastAPI) -> Runtime:
    running: Runtime = app.state.runtime
    return running


async def delivered(app: FastAPI, mailbox: Mailbox) -> list[EmailMessage]:
    """Every message sent so far, once the app's mail work has finished."""
    await runtime(app).mailer.drain(10)
    return list(mailbox.messages)


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    content: str = part.get_content()
    return content


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    content: str = part.get_content()
    return content


def token_in(message: EmailMessage) -> str:
    found = TOKEN.search(text_of(message))
    assert found, text_of(message)
    return found.group(1)


async def mailed_token(app: FastAPI, mailbox: Mailbox, to: str) -> str:
    """The token of the newest link mailed to this address."""
    mine = [message for message in await delivered(app, mailbox) if message["To"] == to]
    assert mine, f"no mail to {to}"
    return token_in(mine[-1])


@asynccontextmanager
async def app_with(
    database_url: str, **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app made with these settings and its client; emptied afterwards like `app`."""
    settings: Settings = make_settings(database_url, **overrides)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                yield app, c
        finally:
            await runtime(app).mailer.drain(10)
            async with runtime(app).engine.begin() as connection:
                for table in reversed(SQLModel.metadata.sorted_tables):
                    await connection.execute(table.delete())
