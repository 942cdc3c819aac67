"""The mailer: real SMTP servers that take mail, never answer, refuse it, or are not
there; logged mail without SMTP; and the settings that decide which features mail."""

import asyncio
import gc
import logging
import os
import re
import secrets
import subprocess
import sys
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from backend.auth import links
from backend.auth.links import Issued
from backend.auth.models import LinkPurpose
from backend.clock import utcnow
from backend.config import Settings, load_settings
from backend.mail import MAIL_SENDERS, MAX_QUEUED, Mailer
from backend.models import User
from tests.helpers import API, REPO_ROOT, TEST_SECRET_KEY, free_port
from tests.smtp import (
    MAIL_FROM,
    Mailbox,
    app_with,
    delivered,
    html_of,
    mail_settings,
    runtime,
    silent_server,
    text_of,
    token_in,
)

SERVE_APP = "from backend.main import served_app; served_app()"
ADMIN_LOGIN = {"username": "admin@example.com", "password": "Admin-Password-1"}


async def admin_headers_of(client: httpx.AsyncClient) -> dict[str, str]:
    tokens = (await client.post(f"{API}/auth/login", data=ADMIN_LOGIN)).json()
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def test_a_message_has_plain_text_and_html_and_the_same_link(
    database_url: str, smtp: Mailbox
) -> None:
    async with app_with(database_url, **mail_settings(smtp.port)) as (app, client):
        headers = await admin_headers_of(client)
        invited = {"email": "ada@example.com", "name": "Ada <script>"}
        assert (
            await client.post(f"{API}/users/invite", json=invited, headers=headers)
        ).status_code == 201
        [message] = await delivered(app, smtp)
    assert message.get_content_type() == "multipart/alternative"
    assert message["From"] == MAIL_FROM
    assert message["Message-ID"].endswith("@example.com>")
    assert message["Date"]
    token = token_in(message)
    assert token in html_of(message)
    assert "Hello Ada <script>," in text_of(message)
    assert "Hello Ada &lt;script&gt;," in html_of(message)  # names are escaped in HTML


async def test_a_mail_to_an_unproven_address_carries_no_name_the_registrant_chose(
    database_url: str, smtp: Mailbox
) -> None:
    """Anyone may register someone else's address: the verification mail they cause must
    not carry their words (a name like "Call +1 555 0100 to claim your refund")."""
    lure = "Call +1 555 0100 to claim your refund"
    settings = mail_settings(smtp.port, EMAIL_VERIFICATION="optional")
    async with app_with(database_url, **settings) as (app, client):
        body = {"email": "victim@example.com", "name": lure, "password": "Correct-Horse-9-x"}
        assert (await client.post(f"{API}/auth/register", json=body)).status_code == 200
        [message] = await delivered(app, smtp)
    assert lure not in text_of(message)
    assert lure not in html_of(message)
    assert "Hello victim@example.com," in text_of(message)


async def test_a_server_that_never_answers_costs_no_request_any_time(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with silent_server() as port:
        overrides = mail_settings(port, SMTP_TIMEOUT_SECONDS=1.5)
        async with app_with(database_url, **overrides) as (app, client):
            headers = await admin_headers_of(client)
            started = time.monotonic()
            invited = await client.post(
                f"{API}/users/invite", json={"email": "a@example.com", "name": "A"}, headers=headers
            )
            forgot = await client.post(
                f"{API}/auth/password/forgot", json={"email": "admin@example.com"}
            )
            answered = time.monotonic() - started
            assert invited.status_code == 201
            assert forgot.status_code == 202
            assert answered < 1.0  # both answered before a single send could time out
            with caplog.at_level(logging.ERROR, logger="backend.mail"):
                started = time.monotonic()
                await runtime(app).mailer.drain(10)
                waited = time.monotonic() - started
    assert waited < 3  # each bounded by SMTP_TIMEOUT_SECONDS, in parallel
    failures = [r.getMessage() for r in caplog.records if r.name == "backend.mail"]
    assert len(failures) == 2, failures
    assert all("gave no answer within 1.5 s" in failure for failure in failures)
    assert not any(TEST_SECRET_KEY in failure or "#token=" in failure for failure in failures)


async def test_a_refusing_server_and_a_closed_port_are_logged(
    database_url: str, smtp: Mailbox, caplog: pytest.LogCaptureFixture
) -> None:
    smtp.refuse = True
    for port in (smtp.port, free_port()):
        async with app_with(database_url, **mail_settings(port)) as (app, client):
            with caplog.at_level(logging.ERROR, logger="backend.mail"):
                forgot = await client.post(
                    f"{API}/auth/password/forgot", json={"email": "admin@example.com"}
                )
                assert forgot.status_code == 202
                await runtime(app).mailer.drain(10)
    failures = [r.getMessage() for r in caplog.records if r.name == "backend.mail"]
    assert len(failures) == 2, failures
    assert "SMTPRecipientsRefused" in failures[0]
    assert "SMTPConnect" in failures[1]
    assert smtp.messages == []


async def test_without_smtp_the_message_and_its_link_are_logged(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    assert settings.SMTP_HOST is None
    assert runtime(app).mailer.sends is False
    with caplog.at_level(logging.INFO, logger="backend.mail"):
        answer = await client.post(
            f"{API}/auth/password/forgot", json={"email": "admin@example.com"}
        )
        assert answer.status_code == 202
        await runtime(app).mailer.drain(10)
    [logged] = [r.getMessage() for r in caplog.records if r.name == "backend.mail"]
    assert "mail not sent (no SMTP_HOST), reset link for user" in logged
    assert "admin@example.com" in logged
    # The local default (test_defaults): the dashboard's address when it is built.
    assert settings.public_url.startswith("http://127.0.0.1:8000")
    assert f"{settings.public_url}/reset-password#token=" in logged


async def test_the_start_up_log_says_where_mail_goes(
    database_url: str, smtp: Mailbox, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="backend.main"):
        async with app_with(database_url):
            pass
        async with app_with(database_url, **mail_settings(smtp.port)):
            pass
    lines = [r for r in caplog.records if r.name == "backend.main" and "mail" in r.getMessage()]
    logged, sent = lines
    assert logged.levelno == logging.WARNING
    assert logged.getMessage().startswith("SMTP_HOST is not set: no mail is sent")
    assert sent.levelno == logging.INFO
    assert sent.getMessage().startswith(f"mail goes to 127.0.0.1:{smtp.port} (TLS: none)")


# --- settings ------------------------------------------------------------------------


def production(**values: object) -> Settings:
    return load_settings(
        _env_file=None,
        STAGE="production",
        SECRET_KEY=TEST_SECRET_KEY,
        DATABASE_URL="postgresql://u:p@127.0.0.1/db",
        **values,
    )


def test_in_production_without_smtp_the_mail_features_are_off() -> None:
    settings = production()
    assert settings.INVITATIONS_ENABLED is False
    assert settings.PASSWORD_RESET_ENABLED is False
    assert settings.mail_features == []


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"PASSWORD_RESET_ENABLED": True}, "PASSWORD_RESET_ENABLED=true"),
        ({"INVITATIONS_ENABLED": True}, "INVITATIONS_ENABLED=true"),
        ({"EMAIL_CHANGE_ENABLED": True}, "EMAIL_CHANGE_ENABLED=true"),
        ({"EMAIL_VERIFICATION": "optional"}, "EMAIL_VERIFICATION=optional"),
        ({"EMAIL_VERIFICATION": "required"}, "EMAIL_VERIFICATION=required"),
    ],
)
def test_a_mail_feature_without_smtp_stops_production(
    setting: dict[str, object], named: str
) -> None:
    with pytest.raises(SystemExit) as raised:
        production(**setting)
    message = str(raised.value)
    assert message.startswith(f"Configuration error: {named} send mail")
    assert "STAGE=production needs SMTP_HOST (with MAIL_FROM and PUBLIC_URL)" in message


def test_with_smtp_production_mails() -> None:
    settings = production(**mail_settings(587, SMTP_TLS="starttls"), EMAIL_VERIFICATION="required")
    assert settings.mail_features == [
        "INVITATIONS_ENABLED=true",
        "PASSWORD_RESET_ENABLED=true",
        "EMAIL_CHANGE_ENABLED=true",
        "EMAIL_VERIFICATION=required",
    ]


def test_a_served_app_refuses_to_start_with_one_line() -> None:
    env = {
        "PATH": os.environ["PATH"],
        "STAGE": "staging",
        "SECRET_KEY": TEST_SECRET_KEY,
        "DATABASE_URL": "postgresql://u:p@127.0.0.1/db",
        "EMAIL_VERIFICATION": "required",
    }
    result = subprocess.run(
        [sys.executable, "-c", SERVE_APP],
        cwd=REPO_ROOT / "tests",  # no .env there
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        "Configuration error: EMAIL_VERIFICATION=required send mail, and STAGE=staging needs"
    )
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"SMTP_HOST": "smtp.example.com"}, "SMTP_HOST is set, so MAIL_FROM and PUBLIC_URL"),
        (
            {"SMTP_HOST": "smtp.example.com", "MAIL_FROM": MAIL_FROM},
            "SMTP_HOST is set, so PUBLIC_URL must be too",
        ),
        ({"SMTP_TLS": "ssl"}, "SMTP_TLS: Input should be 'none', 'starttls' or 'implicit'"),
        ({"SMTP_PORT": 0}, "SMTP_PORT: Input should be greater than or equal to 1"),
        ({"SMTP_TIMEOUT_SECONDS": 0}, "SMTP_TIMEOUT_SECONDS: Input should be greater than 0"),
        (
            {"MAIL_QUEUE_MAX_BYTES": 1000},
            "MAIL_QUEUE_MAX_BYTES: Input should be greater than or equal to 16384",
        ),
        ({"PUBLIC_URL": "app.example.com"}, "PUBLIC_URL: must be an http:// or https:// URL"),
        ({"PUBLIC_URL": "https://a.example/?x=1"}, "without a query or fragment"),
        ({"MAIL_FROM": "nobody"}, "MAIL_FROM: 'nobody' is not an address"),
        ({"SMTP_PASSWORD": "pw"}, "SMTP_PASSWORD is set without SMTP_USERNAME"),
        ({"EMAIL_VERIFICATION": "on"}, "EMAIL_VERIFICATION: Input should be 'off', 'optional'"),
        ({"RESET_EXPIRE_MINUTES": 1}, "RESET_EXPIRE_MINUTES: Input should be greater"),
        ({"INVITE_EXPIRE_HOURS": 0}, "INVITE_EXPIRE_HOURS: Input should be greater"),
        ({"RATE_LIMIT_MAIL_PER_IP": "often"}, "RATE_LIMIT_MAIL_PER_IP: 'often' is not a rate"),
        ({"RATE_LIMIT_MAIL_PER_EMAIL": "5"}, "RATE_LIMIT_MAIL_PER_EMAIL: '5' is not a rate"),
    ],
)
def test_mail_settings_name_the_variable(values: dict[str, object], message: str) -> None:
    with pytest.raises(SystemExit) as raised:
        load_settings(_env_file=None, **values)
    assert message in str(raised.value)


def test_defaults() -> None:
    settings = load_settings(_env_file=None)
    assert settings.SMTP_TLS == "starttls"
    assert settings.SMTP_PORT == 587
    assert settings.INVITE_EXPIRE_HOURS == 72
    assert settings.RESET_EXPIRE_MINUTES == 30
    assert settings.EMAIL_VERIFICATION == "off"
    assert settings.INVITATIONS_ENABLED is settings.PASSWORD_RESET_ENABLED is True  # local
    assert load_settings(_env_file=None, ADMIN_DIR="").public_url == "http://127.0.0.1:8000"
    assert load_settings(_env_file=None, PUBLIC_URL="https://a.example/").public_url == (
        "https://a.example"
    )


def test_links_open_the_served_dashboards_pages_by_default(tmp_path: Path) -> None:
    """Without PUBLIC_URL (local), a served dashboard is where the logged links point:
    it has the pages that open them (/admin/accept-invite, ...)."""
    (tmp_path / "index.html").write_text("<!doctype html>")
    settings = load_settings(_env_file=None, ADMIN_DIR=str(tmp_path))
    assert settings.public_url == "http://127.0.0.1:8000/admin"
    explicit = load_settings(_env_file=None, ADMIN_DIR=str(tmp_path), PUBLIC_URL="https://a.b")
    assert explicit.public_url == "https://a.b"


async def test_features_turned_off_answer_403(database_url: str) -> None:
    overrides = {"INVITATIONS_ENABLED": False, "PASSWORD_RESET_ENABLED": False}
    async with app_with(database_url, **overrides) as (_, client):
        headers = await admin_headers_of(client)
        forgot = await client.post(f"{API}/auth/password/forgot", json={"email": "a@example.com"})
        assert forgot.status_code == 403
        assert forgot.json()["detail"] == (
            "Password reset by email is not available on this server."
        )
        invite = {"email": "a@example.com", "name": "A"}
        invited = await client.post(f"{API}/users/invite", json=invite, headers=headers)
        assert invited.status_code == 403
        assert "Invitations" in invited.json()["detail"]
        admin_id = (await client.get(f"{API}/users/me", headers=headers)).json()["id"]
        reinvited = await client.post(f"{API}/users/{admin_id}/invite", headers=headers)
        assert reinvited.status_code == 403


async def test_starttls_never_falls_back_to_plain_text(
    database_url: str, smtp: Mailbox, caplog: pytest.LogCaptureFixture
) -> None:
    """SMTP_TLS=starttls with a server that offers no STARTTLS: not sent, said why."""
    async with app_with(database_url, **mail_settings(smtp.port, SMTP_TLS="starttls")) as (
        app,
        client,
    ):
        with caplog.at_level(logging.ERROR, logger="backend.mail"):
            await client.post(f"{API}/auth/password/forgot", json={"email": "admin@example.com"})
            await runtime(app).mailer.drain(10)
    [failure] = [r.getMessage() for r in caplog.records if r.name == "backend.mail"]
    assert "STARTTLS" in failure
    assert smtp.messages == []


async def test_shutdown_cuts_off_mail_still_waiting(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with silent_server() as port:
        overrides = mail_settings(port, SMTP_TIMEOUT_SECONDS=30)
        async with app_with(database_url, **overrides) as (app, client):
            await client.post(f"{API}/auth/password/forgot", json={"email": "admin@example.com"})
            with caplog.at_level(logging.WARNING, logger="backend.mail"):
                started = time.monotonic()
                await runtime(app).mailer.drain(0.5)
                assert time.monotonic() - started < 5
    assert "mail cut off at shutdown: 1 mails not sent, 0 look-ups stopped" in caplog.messages


# --- a hung server: what waits, and its bounds --------------------------------------

ADA = User(id=7, email="ada@example.com", name="Ada Lovelace", hashed_password="-")


def hand_over(mailer: Mailer, count: int) -> None:
    """Mail `count` reset links to Ada, as that many requests would."""
    for number in range(count):
        link = Issued(
            token=f"{number}.{secrets.token_urlsafe(32)}",
            expires_at=utcnow() + timedelta(minutes=30),
        )
        links.send_link(mailer, purpose=LinkPurpose.RESET, user=ADA, link=link)


def traced_bytes() -> int:
    gc.collect()
    # The stdlib's cache of compiled patterns (512 at most): the email generator compiles
    # one for each message's MIME boundary.
    re.purge()
    current, _ = tracemalloc.get_traced_memory()
    return current


async def test_a_hung_server_holds_little_per_mail_and_gives_it_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1,000 mails asked for while the server accepts connections and never answers:
    each waits as the few fields its message is made from, and a few senders hold a
    connection each. A task, a rendered message and a connection per mail held 81-116
    kB each. When the outage ends they are done with (here the server is gone for good:
    each send is refused at once, which takes seconds where sending 996 took 30), and
    the memory they held is given back, their failures' tracebacks included."""
    port = free_port()
    mailer = Mailer(load_settings(_env_file=None, **mail_settings(port, SMTP_TIMEOUT_SECONDS=30)))
    tracemalloc.start()
    try:
        with silent_server(port):
            baseline = traced_bytes()
            hand_over(mailer, 1000)
            await asyncio.sleep(0.5)  # the senders connect, and wait for a greeting
            held = traced_bytes() - baseline
            assert mailer.queued == 1000 - MAIL_SENDERS
        # The listener closes: the connections it held are reset, and nothing listens.
        # Their 996 error lines unheard: pytest would keep each record, and count it here.
        caplog.set_level(logging.CRITICAL, logger="backend.mail")
        await mailer.drain(120)
        given_back = traced_bytes() - baseline
    finally:
        tracemalloc.stop()
    print(
        f"\n1,000 mails waiting: {held / 1000:.0f} kB traced; afterwards {given_back / 1000:.0f} kB"
    )
    assert mailer.queued == mailer.queued_bytes == 0
    assert held < 2_000_000  # measured 0.8 MB: 0.5 kB a mail, and four connections
    assert given_back < 300_000  # measured 83 kB


async def test_past_1000_waiting_new_mail_is_dropped_with_a_line_at_start_and_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with silent_server() as port:
        settings = load_settings(_env_file=None, **mail_settings(port, SMTP_TIMEOUT_SECONDS=30))
        mailer = Mailer(settings)
        with caplog.at_level(logging.ERROR, logger="backend.mail"):
            hand_over(mailer, MAX_QUEUED + 14)  # the senders have not started: all wait
            assert (mailer.queued, mailer.dropped) == (MAX_QUEUED, 14)
            await mailer.drain(0)  # the queue empties, as when the server answers again
            hand_over(mailer, 1)
            await mailer.drain(0)
    lines = [r.getMessage() for r in caplog.records if r.name == "backend.mail"]
    assert len(lines) == 2, lines
    assert lines[0] == (
        "mail queue full (1000 mails waiting): new mail is dropped, not sent, until there "
        "is room; the first dropped: reset link for user 7"
    )
    assert lines[1].startswith("mail queue has room again after ")
    assert lines[1].endswith(" s; 14 mails dropped meanwhile")


async def test_past_mail_queue_max_bytes_mail_is_dropped_and_requests_answer_as_before(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with silent_server() as port:
        overrides = mail_settings(
            port,
            SMTP_TIMEOUT_SECONDS=30,
            MAIL_QUEUE_MAX_BYTES=16_384,
            METRICS_ENABLED=True,
            RATE_LIMIT_ENABLED=False,
        )
        async with app_with(database_url, **overrides) as (app, client):
            headers = await admin_headers_of(client)
            mailer = runtime(app).mailer
            with caplog.at_level(logging.ERROR, logger="backend.mail"):
                for number in range(60):
                    invite = {"email": f"user{number}@example.com", "name": f"User {number}"}
                    invited = await client.post(f"{API}/users/invite", json=invite, headers=headers)
                    assert invited.status_code == 201
                assert mailer.queued_bytes <= 16_384
                assert 0 < mailer.queued < MAX_QUEUED  # the bytes bound first
                # Asked for while the queue is full: looked up, then dropped, no new line.
                for _ in range(3):
                    forgot = await client.post(
                        f"{API}/auth/password/forgot", json={"email": "admin@example.com"}
                    )
                    assert forgot.status_code == 202
                dropped = 60 + 3 - MAIL_SENDERS - mailer.queued
                assert dropped > 3
                for _ in range(100):  # the look-ups run after the responses
                    if mailer.dropped == dropped:
                        break
                    await asyncio.sleep(0.05)
                assert mailer.dropped == dropped
                metrics = (await client.get("/metrics")).text
                assert f"mail_dropped_total {float(dropped)}" in metrics
                assert f"mail_queue_depth {float(mailer.queued)}" in metrics
                assert f"mail_queue_bytes {float(mailer.queued_bytes)}" in metrics
                await mailer.drain(0)  # the queue empties, as when the server answers again
                invite = {"email": "late@example.com", "name": "Late"}
                invited = await client.post(f"{API}/users/invite", json=invite, headers=headers)
                assert invited.status_code == 201
                await mailer.drain(0)
    lines = [r.getMessage() for r in caplog.records if r.name == "backend.mail"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("mail queue full (MAIL_QUEUE_MAX_BYTES=16384): new mail is")
    assert lines[1].endswith(f" s; {dropped} mails dropped meanwhile")
