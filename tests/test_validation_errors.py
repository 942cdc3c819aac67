"""422 answers name the fields as clients sent them, once each, whatever the model's
types look like inside (optional fields are unions to pydantic)."""

from typing import Any

import httpx
import pytest

from tests.helpers import API

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
