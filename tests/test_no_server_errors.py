"""Inputs that used to end in a 500 (issue 10, item 5), one class per test: each now gets
a problem+json 4xx naming what was wrong; and a 500, when a bug does happen, carries
the same headers as any other response and is logged once."""

import logging

import httpx
import pytest
from fastapi import FastAPI

from backend.config import Settings
from backend.http.parsing import INT32_MAX, MAX_JSON_CHARS, MAX_JSON_DEPTH
from backend.main import create_app
from tests.helpers import API

HUGE = "1" * 5000  # past int()'s 4,300-digit limit


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    if field is not None:
        assert field in [error["field"] for error in response.json()["errors"]], response.text


async def admin_id(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    me = await client.get(f"{API}/users/me", headers=headers)
    identifier: int = me.json()["id"]
    return identifier


@pytest.mark.parametrize("user_id", [HUGE, str(INT32_MAX + 1), "0"])
@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
async def test_path_ids_out_of_the_columns_range_are_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str], method: str, user_id: str
) -> None:
    response = await client.request(
        method, f"{API}/users/{user_id}", headers=admin_headers, json={"name": "X"}
    )
    assert_problem(response, 422, "user_id")


async def test_a_huge_path_id_without_a_token_is_401(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"{API}/users/{HUGE}"), 401)


async def test_path_ids_still_route_only_digits(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    assert_problem(await client.get(f"{API}/users/abc", headers=admin_headers), 404)
    assert_problem(await client.get(f"{API}/users/²", headers=admin_headers), 404)
    padded = "0" * 5000 + str(await admin_id(client, admin_headers))
    assert (await client.get(f"{API}/users/{padded}", headers=admin_headers)).status_code == 200


@pytest.mark.parametrize("name", ["page", "per_page", "_start", "_end"])
@pytest.mark.parametrize("value", [HUGE, "²", "١٢", "1_0", "-1"])
async def test_paging_numbers_are_ascii_digits_within_bounds(
    client: httpx.AsyncClient, user_headers: dict[str, str], name: str, value: str
) -> None:
    response = await client.get(f"{API}/users", params={name: value}, headers=user_headers)
    assert_problem(response, 422, name)
    assert "must be an integer from" in response.json()["errors"][0]["message"]


async def test_leading_zeros_do_not_count_against_the_digit_limit(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await client.get(
        f"{API}/users", params={"page": "0" * 5000 + "1"}, headers=user_headers
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("name", ["filter", "range", "sort"])
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        # Deeper than Python's recursion limit, and small enough to pass the size cap.
        ("[" * 2000 + "]" * 2000, f"at most {MAX_JSON_DEPTH} levels"),
        ("[" + '{"a":' * MAX_JSON_DEPTH + "1" + "}" * MAX_JSON_DEPTH + "]", "levels"),
        ("[" + "1," * MAX_JSON_CHARS + "1]", f"at most {MAX_JSON_CHARS} characters"),
        ("[0,NaN]", "valid JSON"),
    ],
)
async def test_json_parameters_are_bounded_in_size_and_depth(
    client: httpx.AsyncClient, user_headers: dict[str, str], name: str, raw: str, message: str
) -> None:
    response = await client.get(f"{API}/users", params={name: raw}, headers=user_headers)
    assert_problem(response, 422, name)
    assert message in response.json()["errors"][0]["message"]


async def test_a_json_string_may_contain_brackets(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    text = "[[[[[[[[[[" + '\\"' + "{{{{{{{{{{"
    response = await client.get(
        f"{API}/users", params={"filter": f'{{"q":"{text}"}}'}, headers=user_headers
    )
    assert response.status_code == 200, response.text


EDGE_DATES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]


@pytest.mark.parametrize("date", EDGE_DATES)
@pytest.mark.parametrize(
    ("resource", "params", "field"),
    [
        ("users", {"created_after": "{}"}, "created_after"),
        ("users", {"created_before": "{}"}, "created_before"),
        ("users", {"created_at_gte": "{}"}, "created_at_gte"),
        ("users", {"updated_at": "{}"}, "updated_at"),
        ("users", {"filter": '{{"created_at_lte": "{}"}}'}, "filter.created_at_lte"),
        ("audit", {"created_after": "{}"}, "created_after"),
        ("audit", {"created_at_ne": "{}"}, "created_at_ne"),
    ],
)
async def test_dates_outside_the_years_1_to_9999_in_utc_are_422(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    resource: str,
    params: dict[str, str],
    field: str,
    date: str,
) -> None:
    query = {key: value.format(date) for key, value in params.items()}
    response = await client.get(f"{API}/{resource}", params=query, headers=admin_headers)
    assert_problem(response, 422, field)
    assert "between years 1 and 9999" in response.text


@pytest.mark.parametrize(
    "params",
    [
        {"created_after": "0001-01-01T00:00:00Z"},
        {"created_after": "0001-01-01T00:00:00-14:00"},
        {"created_before": "9999-12-31T23:59:59.999999Z"},
        {"created_before": "9999-12-31T23:59:59+14:00"},
    ],
)
async def test_the_extreme_dates_that_exist_in_utc_are_accepted(
    client: httpx.AsyncClient, admin_headers: dict[str, str], params: dict[str, str]
) -> None:
    response = await client.get(f"{API}/users", params=params, headers=admin_headers)
    assert response.status_code == 200, response.text
    assert len(response.json()) == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"filter": '{"name_like":"\\ud800"}'}, "filter.name_like"),
        ({"filter": '{"email":"a\\udfffb"}'}, "filter.email"),
        ({"filter": '{"q":"\\ud800"}'}, "q"),
        ({"filter": '{"\\ud800":1}'}, "filter.\ud800"),
    ],
)
async def test_lone_surrogates_from_json_are_422(
    client: httpx.AsyncClient, user_headers: dict[str, str], params: dict[str, str], field: str
) -> None:
    response = await client.get(f"{API}/users", params=params, headers=user_headers)
    assert_problem(response, 422, field)


@pytest.mark.parametrize(
    "if_match",
    [f'"{HUGE}"'.encode(), f'"{INT32_MAX + 1}"'.encode(), b'"\xb2"', b'"-1"', b'" 1"'],
)
@pytest.mark.parametrize("method", ["PATCH", "PUT", "DELETE"])
async def test_if_match_naming_no_possible_version_is_412(
    client: httpx.AsyncClient, admin_headers: dict[str, str], method: str, if_match: bytes
) -> None:
    created = await client.post(
        f"{API}/users",
        json={"email": "target@example.com", "name": "Target", "password": "Sturdy-Kettle-123"},
        headers=admin_headers,
    )
    url = created.headers["location"]
    body = {**created.json(), "name": "Changed"}
    headers = [(name.encode(), value.encode()) for name, value in admin_headers.items()]
    response = await client.request(
        method, url, json=body, headers=[*headers, (b"if-match", if_match)]
    )
    assert_problem(response, 412)
    assert (await client.get(url, headers=admin_headers)).json()["name"] == "Target"


async def test_a_content_length_of_5000_digits_is_413(client: httpx.AsyncClient) -> None:
    request = client.build_request("POST", f"{API}/auth/refresh", content=b"{}")
    request.headers["content-length"] = HUGE
    response = await client.send(request)
    assert_problem(response, 413)


@pytest.fixture
def failing_app(settings: Settings) -> FastAPI:
    app = create_app(settings)

    @app.get(f"{API}/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    return app


async def test_a_500_has_the_headers_of_every_response_and_one_logged_traceback(
    failing_app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    origin = "https://dashboard.example.com"
    # The default transport re-raises what escapes the app: nothing may.
    transport = httpx.ASGITransport(app=failing_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with caplog.at_level(logging.INFO):
            response = await client.get(
                f"{API}/boom", headers={"X-Request-ID": "trace-me", "Origin": origin}
            )
    assert_problem(response, 500)
    assert response.headers["x-request-id"] == "trace-me"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["access-control-allow-origin"] == origin
    assert "secret" not in response.text
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert len(tracebacks) == 1
    assert "trace-me" in tracebacks[0].getMessage()
    access = [record for record in caplog.records if record.name == "backend.access"]
    assert [getattr(record, "status", None) for record in access] == [500]
