"""A login the password hasher cannot take is refused before any database work, so that
in a login storm a refusal is cheap and fast instead of waiting for a connection."""

import asyncio

import httpx
from fastapi import FastAPI

from backend.auth.passwords import PasswordHasher
from tests.helpers import USER_PASSWORD, RegisterUser, post_login
from tests.test_access_order import counting_statements


async def test_a_full_hash_queue_refuses_a_login_before_any_query(
    app: FastAPI, client: httpx.AsyncClient, register: RegisterUser
) -> None:
    await register(email="storm@example.com")
    runtime = app.state.runtime
    usual = runtime.password_hasher
    # One slot and no queue, taken by a hash that lasts a second or more (cost 14).
    busy = PasswordHasher(rounds=14, concurrency=1, queue_limit=0)
    runtime.password_hasher = busy
    occupying = asyncio.create_task(busy.hash("a password being hashed"))
    await asyncio.sleep(0)  # the task takes the slot, then waits on its thread
    try:
        with counting_statements(runtime.engine) as statements:
            refused = await post_login(client, "storm@example.com", USER_PASSWORD)
        assert (refused.status_code, refused.json()["code"]) == (503, "server_busy")
        assert refused.headers["retry-after"] == "1"
        assert statements == []
    finally:
        await occupying
        busy.close()
        runtime.password_hasher = usual
    assert (await post_login(client, "storm@example.com", USER_PASSWORD)).status_code == 200


async def test_logins_arriving_together_take_the_free_places_before_any_query(
    app: FastAPI, client: httpx.AsyncClient, register: RegisterUser
) -> None:
    """One place (one hash thread, no queue) and five logins at once: the first holds the
    place from before its reads, so the other four are refused without a query, not
    after reading their user like the first."""
    await register(email="together@example.com")
    runtime = app.state.runtime
    usual = runtime.password_hasher
    runtime.password_hasher = one_place = PasswordHasher(rounds=4, concurrency=1, queue_limit=0)
    try:
        with counting_statements(runtime.engine) as statements:
            answers = await asyncio.gather(
                *(post_login(client, "together@example.com", USER_PASSWORD) for _ in range(5))
            )
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [200, 503, 503, 503, 503]
        look_ups = [sql for sql in statements if "WHERE users.email =" in sql]
        assert len(look_ups) == 1, statements  # the admitted login's own
    finally:
        one_place.close()
        runtime.password_hasher = usual
