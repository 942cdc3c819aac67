"""Mail: plain-text and HTML messages sent over SMTP (aiosmtplib) by a few sender tasks.

Nothing here runs on a request's path. A request hands over a letter, the few fields a
message is made from (recipient, purpose, link), and answers. Up to MAIL_SENDERS sender
tasks take the letters in order; each renders its message, connects and sends within
SMTP_TIMEOUT_SECONDS in all, so a slow or dead server costs a sender that long and a
line in the log, never a response. The queue is bounded by count (MAX_QUEUED) and by
bytes (MAIL_QUEUE_MAX_BYTES): past either, new mail is dropped, with one error line when
dropping starts and one when there is room again. Without SMTP_HOST (local and test
only: see Settings.check_mail) each message is logged, link included, instead of sent.
"""

import asyncio
import dataclasses
import logging
import sys
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any, ClassVar, Protocol

import aiosmtplib

from backend.config import Settings

logger = logging.getLogger(__name__)

# Senders at once. Mail is rare (rate-limited per address and per email) and a healthy
# server takes a message in well under a second, so four keep up; while the server
# hangs, four connections and four rendered messages are all it holds. Measured with a
# server that accepts and never answers: a task per send held 89 kB each (the rendered
# EmailMessage keeps every header's parse tree), 89 MB traced for 1,000 sends.
MAIL_SENDERS = 4
# Letters waiting for a sender (and bounded by MAIL_QUEUE_MAX_BYTES too): a flood of
# requests for mail from many addresses while the server is down must not grow memory
# without end. Past this, new mail is dropped.
MAX_QUEUED = 1000
# Work handed over before its letter exists (looking an address up, issuing its link):
# database work, not SMTP, bounded the same way.
MAX_PENDING = 1000


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str
    html: str


class Letter(Protocol):
    """What waits in the queue: a dataclass of the fields a message is made from, and
    how to make it. Its fields' sizes are what the byte bound counts."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def what(self) -> str:
        """For the log: what the mail is for, never its link."""
        ...

    def render(self, settings: Settings) -> Mail: ...


def footprint(letter: Letter) -> int:
    """The bytes a queued letter holds: the record and each of its fields' values."""
    fields = dataclasses.fields(letter)
    return sys.getsizeof(letter) + sum(sys.getsizeof(getattr(letter, f.name)) for f in fields)


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._background: set[asyncio.Task[None]] = set()
        self._queue: deque[tuple[Letter, int]] = deque()
        self._senders: set[asyncio.Task[None]] = set()
        self._sending = 0
        self.queued_bytes = 0
        self.dropped = 0  # since start, for the metrics
        self._dropping_since: float | None = None
        self._dropped_in_burst = 0

    @property
    def sends(self) -> bool:
        """Whether mail goes to an SMTP server (else it is logged)."""
        return self.settings.SMTP_HOST is not None

    @property
    def queued(self) -> int:
        """Letters waiting for a sender (not those being sent)."""
        return len(self._queue)

    def describe(self) -> str:
        """One line for the start-up log: where mail goes, and what sends it."""
        settings = self.settings
        features = ", ".join(settings.mail_features) or "none"
        if self.sends:
            return (
                f"mail goes to {settings.SMTP_HOST}:{settings.SMTP_PORT} "
                f"(TLS: {settings.SMTP_TLS}) from {settings.MAIL_FROM}; links point to "
                f"{settings.public_url}; features that send mail: {features}"
            )
        return (
            "SMTP_HOST is not set: no mail is sent, each message (with its link) is written "
            f"to this log instead; features that send mail: {features}"
        )

    def run_later(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """Run `work` (which may hand a letter over) after the response, in the
        background; its failure is logged."""
        if len(self._background) >= MAX_PENDING:
            work.close()
            self._drop(what, f"{MAX_PENDING} look-ups waiting")
            return
        task = asyncio.get_running_loop().create_task(self._logged(work, what))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def send_later(self, letter: Letter) -> None:
        """Queue a letter for the senders; dropped (and counted) when the queue is full."""
        size = footprint(letter)
        if len(self._queue) >= MAX_QUEUED:
            self._drop(letter.what, f"{MAX_QUEUED} mails waiting")
            return
        if self.queued_bytes + size > self.settings.MAIL_QUEUE_MAX_BYTES:
            self._drop(letter.what, f"MAIL_QUEUE_MAX_BYTES={self.settings.MAIL_QUEUE_MAX_BYTES}")
            return
        self._room_again()
        self._queue.append((letter, size))
        self.queued_bytes += size
        if len(self._senders) < MAIL_SENDERS:
            self._senders.add(asyncio.get_running_loop().create_task(self._sender()))

    def _drop(self, what: str, bound: str) -> None:
        self.dropped += 1
        self._dropped_in_burst += 1
        if self._dropping_since is not None:
            return
        self._dropping_since = time.monotonic()
        # One line per burst, not one per mail: a server that hangs for an hour while
        # requests keep coming would otherwise fill the log.
        logger.error(
            "mail queue full (%s): new mail is dropped, not sent, until there is room; "
            "the first dropped: %s",
            bound,
            what,
        )

    def _room_again(self) -> None:
        """A letter queued: a burst of drops, if any, is over. (A look-up accepted says
        nothing of the queue its letter will find.)"""
        if self._dropping_since is None:
            return
        # At the level of the line that opened the burst, so whoever sees one sees both.
        logger.error(
            "mail queue has room again after %.1f s; %d mails dropped meanwhile",
            time.monotonic() - self._dropping_since,
            self._dropped_in_burst,
        )
        self._dropping_since = None
        self._dropped_in_burst = 0

    async def _sender(self) -> None:
        try:
            while self._queue:
                letter, size = self._queue.popleft()
                self.queued_bytes -= size
                self._sending += 1
                try:
                    await self._send(letter)
                except Exception:  # a sender has nobody else to tell, and more to send
                    logger.exception("mail work failed: %s", letter.what)
                finally:
                    self._sending -= 1
        finally:
            # Before returning, with no await since the queue was seen empty: a letter
            # queued from now on starts a sender of its own.
            self._senders -= {asyncio.current_task()}

    async def _send(self, letter: Letter) -> None:
        """Render and send (or, without SMTP_HOST, log) one letter; a failure is logged."""
        settings = self.settings
        what = letter.what
        if settings.SMTP_HOST is None:
            mail = letter.render(settings)
            logger.info("mail not sent (no SMTP_HOST), %s to %s:\n%s", what, mail.to, mail.text)
            return
        password = settings.SMTP_PASSWORD.get_secret_value() if settings.SMTP_PASSWORD else None
        try:
            async with asyncio.timeout(settings.SMTP_TIMEOUT_SECONDS):
                await aiosmtplib.send(
                    self._message(letter.render(settings)),
                    hostname=settings.SMTP_HOST,
                    port=settings.SMTP_PORT,
                    username=settings.SMTP_USERNAME,
                    password=password,
                    use_tls=settings.SMTP_TLS == "implicit",
                    # False, not None: "none" must never try STARTTLS, "starttls" must
                    # never fall back to plain text when the server does not offer it.
                    start_tls=settings.SMTP_TLS == "starttls",
                    timeout=settings.SMTP_TIMEOUT_SECONDS,
                )
        except TimeoutError:
            logger.error(
                "mail not sent, %s: %s:%d gave no answer within %g s",
                what,
                settings.SMTP_HOST,
                settings.SMTP_PORT,
                settings.SMTP_TIMEOUT_SECONDS,
            )
        except (aiosmtplib.SMTPException, OSError) as error:
            # Its text, not the error: a handler that keeps records (a buffer, a test's
            # capture) would keep its traceback's frames, the rendered message among them.
            logger.error(
                "mail not sent, %s: %s:%d: %s: %s",
                what,
                settings.SMTP_HOST,
                settings.SMTP_PORT,
                error.__class__.__name__,
                str(error),
            )
        else:
            logger.info("mail sent, %s", what)

    def _message(self, mail: Mail) -> EmailMessage:
        sender = self.settings.MAIL_FROM or f"{self.settings.PROJECT_NAME} <noreply@localhost>"
        message = EmailMessage()
        message["From"] = sender
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=parseaddr(sender)[1].rpartition("@")[2])
        message.set_content(mail.text)
        message.add_alternative(mail.html, subtype="html")
        return message

    async def drain(self, timeout_seconds: float) -> None:
        """Wait up to timeout_seconds for the work handed over so far, the queue
        included; then cut off the rest: what is not sent by then never is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        while working := self._working():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.wait(working, timeout=remaining)
        unfinished = self._working()
        if not unfinished:
            return
        not_sent = len(self._queue) + self._sending
        looking_up = sum(1 for task in unfinished if task in self._background)
        self._queue.clear()
        self.queued_bytes = 0
        for task in unfinished:
            task.cancel()
        logger.warning(
            "mail cut off at shutdown: %d mails not sent, %d look-ups stopped",
            not_sent,
            looking_up,
        )
        await asyncio.wait(unfinished)

    def _working(self) -> set[asyncio.Task[None]]:
        return {task for task in self._background | self._senders if not task.done()}

    async def close(self, *, within: float) -> None:
        """Drain for at most `within` seconds (what is left of the shutdown grace period).

        The sends in flight get their whole SMTP timeout and the queue behind them that
        long too, but never past the grace period: a server that hangs must not keep the
        process from exiting."""
        await self.drain(min(self.settings.SMTP_TIMEOUT_SECONDS + 1, within))

    @staticmethod
    async def _logged(work: Coroutine[Any, Any, None], what: str) -> None:
        try:
            await work
        except Exception:  # a background task has nobody else to tell
            logger.exception("mail work failed: %s", what)
