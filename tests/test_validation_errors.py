"""422 answers name the fields as clients sent them, once each, whatever the model's
types look like inside (optional fields are unions to pydantic)."""

from typing import Any

import httpx
import pytest

from tests.helpers import API, USER_PASSWORD

BAD_VALUES: dict[str, Any] = {
    "email": "not-an-email",
    "name": "",
    "role": "boss",
    "is_active": 1,
    "password": "short",
}


@pytest.mark.parametrize("method", ["PATCH", "PUT", "POST"])
async def test_each_bad_field_is_named_once_by_its_own_name(
    client: httpx.AsyncClient, admin_headers: dict[str, str], method: str
) -> None:
    admin_id = (await client.get(f"{API}/users/me", headers=admin_headers)).json()["id"]
    url = f"{API}/users" if method == "POST" else f"{API}/users/{admin_id}"
    response = await client.request(method, url, json=BAD_VALUES, headers=admin_headers)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert sorted(error["field"] for error in errors) == sorted(BAD_VALUES)
    assert all("should be None" not in error["message"] for error in errors)
    assert response.json()["detail"].startswith("Invalid input: ")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Ada\u202egnp.exe", "must not contain bidirectional control characters"),
        ("\u2066Ada\u2069", "must not contain bidirectional control characters"),
        ("\u200b", "must not be empty (invisible characters alone are empty)"),
        ("\u3164", "must not be empty (invisible characters alone are empty)"),
        ("\u200b \u034f\ufe0f", "must not be empty (invisible characters alone are empty)"),
        ("\U000e0041", "must not be empty (invisible characters alone are empty)"),
    ],
    ids=["rtl override", "isolates", "zero width space", "hangul filler", "mixed", "tag"],
)
async def test_a_name_that_looks_empty_or_reorders_text_is_refused(
    client: httpx.AsyncClient, name: str, message: str
) -> None:
    body = {"email": "ada@example.com", "password": USER_PASSWORD, "name": name}
    refused = await client.post(f"{API}/auth/register", json=body)
    assert refused.status_code == 422
    assert refused.json()["errors"] == [
        {"field": "name", "message": message, "code": "value_error"}
    ]


async def test_names_in_any_script_and_joined_emoji_are_kept(client: httpx.AsyncClient) -> None:
    for number, name in enumerate(["Zoë", "李雷", "محمد", "Ada \u200dLovelace", "👩\u200d💻 Ada"]):
        body = {"email": f"n{number}@example.com", "password": USER_PASSWORD, "name": name}
        answer = await client.post(f"{API}/auth/register", json=body)
        assert answer.status_code == 200, (name, answer.text)
        assert answer.json()["user"]["name"] == name
