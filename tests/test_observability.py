"""Request log lines, JSON logs without secrets, and the Prometheus endpoint."""

import json
import logging

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from backend.config import Settings
from backend.http.observability import configure_logging
from backend.main import create_app
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, API, bearer, login, running


async def test_one_log_line_per_request_with_its_context(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="backend.access"):
        await client.get(
            f"{API}/users/{tokens['user']['id']}",
            headers={**bearer(tokens["access_token"]), "X-Request-ID": "trace-1"},
        )
        await client.get("/nowhere/%0Aforged line?token=secret")
    first, second = (record for record in caplog.records if record.name == "backend.access")
    fields = ("method", "route", "status", "request_id", "user_id")
    assert {name: first.__dict__[name] for name in fields} == {
        "method": "GET",
        "route": "/api/v1/users/{user_id}",
        "status": 200,
        "request_id": "trace-1",
        "user_id": tokens["user"]["id"],
    }
    assert first.__dict__["duration_ms"] > 0
    assert (second.__dict__["route"], second.__dict__["status"]) == ("unmatched", 404)
    # The path an unmatched request asked for, on one line, without its query string.
    assert second.__dict__["path"] == "/nowhere/\\nforged line"
    assert second.getMessage().startswith("GET /nowhere/\\nforged line 404 ")
    assert "path" not in first.__dict__


def test_json_log_format(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(settings.model_copy(update={"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}))
        logging.getLogger("backend.access").info("GET / 200", extra={"status": 200})
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        root.handlers[:], root.level = saved
    assert line["message"] == "GET / 200"
    assert line["status"] == 200
    assert {"time", "level", "logger"} <= line.keys()
    assert settings.model_copy(update={"STAGE": "local"}).log_format == "text"
    assert settings.model_copy(update={"STAGE": "production"}).log_format == "json"


async def test_logs_never_contain_passwords_or_tokens(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    secrets: list[str] = ["User-Secret-Pass-1", "Changed-Secret-Pass-2", "Wrong-Secret-Pass-3"]
    with caplog.at_level(logging.DEBUG):
        body = {"email": "logged@example.com", "name": "L", "password": secrets[0]}
        registered = (await client.post(f"{API}/auth/register", json=body)).json()
        await client.post(f"{API}/auth/register", json=body)  # 409
        await client.post(f"{API}/auth/register", json={**body, "password": "short"})  # 422
        await client.post(
            f"{API}/auth/login", data={"username": body["email"], "password": secrets[2]}
        )
        refreshed = (
            await client.post(
                f"{API}/auth/refresh", json={"refresh_token": registered["refresh_token"]}
            )
        ).json()
        changed = (
            await client.post(
                f"{API}/users/me/password",
                json={"current_password": secrets[0], "new_password": secrets[1]},
                headers=bearer(refreshed["access_token"]),
            )
        ).json()
    tokens = [
        registered["access_token"],
        registered["refresh_token"],
        refreshed["access_token"],
        refreshed["refresh_token"],
        changed["access_token"],
        changed["refresh_token"],
    ]
    handler_output = "\n".join(
        json.dumps(record.__dict__, default=str) for record in caplog.records
    )
    assert caplog.records
    for secret in secrets + tokens:
        assert secret not in caplog.text
        assert secret not in handler_output


async def test_metrics_endpoint(settings: Settings) -> None:
    app: FastAPI = create_app(
        settings.model_copy(
            update={
                "METRICS_ENABLED": True,
                "RATE_LIMIT_LOGIN": "1/minute",
                "HASH_CONCURRENCY": 1,
                "HASH_QUEUE_LIMIT": 32,
            }
        )
    )
    async with running(app) as client:
        form = {"username": ADMIN_EMAIL, "password": "Wrong-Password-1"}
        assert (await client.post(f"{API}/auth/login", data=form)).status_code == 401
        assert (await client.post(f"{API}/auth/login", data=form)).status_code == 429
        await client.get("/health")
        response = await client.get("/metrics")
        in_api = await client.get(f"{API}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'http_requests_total{method="POST",route="/api/v1/auth/login",status="401"} 1.0' in text
    assert 'http_request_duration_seconds_bucket{le="0.005",method="GET",route="/health"}' in text
    assert "login_failures_total 1.0" in text
    assert 'rate_limit_rejections_total{limit="login"} 1.0' in text
    assert 'db_pool_connections{state="in_use"}' in text
    assert "password_hash_queue_depth 0.0" in text
    # Measured from the hash timed at start-up and the login's; at cost 4, far under the
    # 2 s budget, so the cap (HASH_CONCURRENCY 1 + HASH_QUEUE_LIMIT 32) limits admission.
    assert "password_hash_seconds 0.0\n" not in text
    assert "password_hash_seconds " in text
    assert f"password_hash_admission_limit {1 + 32}.0" in text
    assert in_api.status_code == 404


METRICS_TOKEN = "Vq3-metrics-scraper-9fKz2LpXw7Rt4Yb8NcJ6"


async def test_metrics_token_is_required_when_set(settings: Settings) -> None:
    app = create_app(
        settings.model_copy(
            update={"METRICS_ENABLED": True, "METRICS_TOKEN": SecretStr(METRICS_TOKEN)}
        )
    )
    async with running(app) as client:
        missing = await client.get("/metrics")
        other_scheme = await client.get("/metrics", headers={"Authorization": "Basic eDp5"})
        wrong = await client.get("/metrics", headers=bearer(METRICS_TOKEN[:-1] + "7"))
        longer = await client.get("/metrics", headers=bearer(METRICS_TOKEN + "x"))
        right = await client.get("/metrics", headers=bearer(METRICS_TOKEN))
        lower_case = await client.get(
            "/metrics", headers={"Authorization": f"bearer {METRICS_TOKEN}"}
        )
    for refused, code in [
        (missing, "not_authenticated"),
        (other_scheme, "not_authenticated"),
        (wrong, "metrics_token_invalid"),
        (longer, "metrics_token_invalid"),
    ]:
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["code"] == code
        assert "METRICS_TOKEN" in refused.json()["detail"]
        assert "http_requests_total" not in refused.text
    assert right.status_code == lower_case.status_code == 200
    assert "http_requests_total" in right.text


async def test_metrics_are_off_by_default(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 404
