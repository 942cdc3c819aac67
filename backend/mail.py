"""Mail: plain-text and HTML messages sent over SMTP (aiosmtplib) in the background.

Nothing here runs on a request's path. A request hands its work over (`run_later`) and
answers; the work then has SMTP_TIMEOUT_SECONDS in all, so a slow or dead server costs
a background task that long and a line in the log, never a response. Without SMTP_HOST
(local and test only: see Settings.check_mail) each message is logged, link included,
instead of sent.
"""

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any

import aiosmtplib

from backend.config import Settings

logger = logging.getLogger(__name__)

# Work handed over and not finished yet. A flood of requests for mail (each rate-limited
# per address and per email, but from many addresses) must not grow memory without end
# while the SMTP server is down: past this, new work is dropped, with an error logged.
MAX_PENDING = 1000


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str
    html: str


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def sends(self) -> bool:
        """Whether mail goes to an SMTP server (else it is logged)."""
        return self.settings.SMTP_HOST is not None

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
        """Run `work` after the response, in the background; its failure is logged."""
        if len(self._pending) >= MAX_PENDING:
            work.close()
            logger.error("mail work dropped (%s): %d already waiting", what, MAX_PENDING)
            return
        task = asyncio.get_running_loop().create_task(self._logged(work, what))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def send_later(self, mail: Mail, what: str) -> None:
        self.run_later(self.send(mail, what), what)

    async def send(self, mail: Mail, what: str) -> None:
        """Send (or, without SMTP_HOST, log) one message; a failure is logged, not raised."""
        message = self._message(mail)
        settings = self.settings
        if settings.SMTP_HOST is None:
            logger.info("mail not sent (no SMTP_HOST), %s to %s:\n%s", what, mail.to, mail.text)
            return
        password = settings.SMTP_PASSWORD.get_secret_value() if settings.SMTP_PASSWORD else None
        try:
            async with asyncio.timeout(settings.SMTP_TIMEOUT_SECONDS):
                await aiosmtplib.send(
                    message,
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
            logger.error(
                "mail not sent, %s: %s:%d: %s: %s",
                what,
                settings.SMTP_HOST,
                settings.SMTP_PORT,
                error.__class__.__name__,
                error,
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
        """Wait up to timeout_seconds for the work handed over so far; cancel the rest."""
        pending = set(self._pending)
        if not pending:
            return
        _, unfinished = await asyncio.wait(pending, timeout=timeout_seconds)
        for task in unfinished:
            task.cancel()
        if unfinished:
            logger.warning("%d mail tasks cut off at shutdown", len(unfinished))
            await asyncio.wait(unfinished)

    async def close(self) -> None:
        # Each message is bounded by the SMTP timeout: by then every one has ended.
        await self.drain(self.settings.SMTP_TIMEOUT_SECONDS + 1)

    @staticmethod
    async def _logged(work: Coroutine[Any, Any, None], what: str) -> None:
        try:
            await work
        except Exception:  # a background task has nobody else to tell
            logger.exception("mail work failed: %s", what)
