"""After BCRYPT_ROUNDS changes, stored hashes keep their old cost until each user logs in
again. A login for an unknown email must then cost what a known email's hash costs, or
its time tells which emails have accounts (a probe measured 5.0 ms against 71.3 ms)."""

import statistics
import time

import httpx
from fastapi import FastAPI

from backend.main import create_app
from tests.helpers import RegisterUser, make_settings, post_login, running

KNOWN = [f"known{n}@example.com" for n in range(5)]
SAMPLES = 25


async def _timed_login(client: httpx.AsyncClient, email: str) -> float:
    started = time.perf_counter()
    response = await post_login(client, email, "Wrong-Password-1")  # no match: no rehash
    elapsed = time.perf_counter() - started
    assert response.status_code == 401
    return elapsed


async def test_unknown_emails_cost_what_known_ones_do_after_a_rounds_change(
    app: FastAPI, register: RegisterUser, database_url: str
) -> None:
    for email in KNOWN:
        await register(email=email)  # hashed at the suite's cost, 4
    # The app restarted at a higher cost: every stored hash is still at 4.
    raised = create_app(make_settings(database_url, BCRYPT_ROUNDS=10))
    async with running(raised) as client:
        known: list[float] = []
        unknown: list[float] = []
        for n in range(SAMPLES):  # interleaved, so a noisy moment hits both alike
            known.append(await _timed_login(client, KNOWN[n % len(KNOWN)]))
            unknown.append(await _timed_login(client, f"nobody{n}@example.com"))
    # The probe's statistic: medians. Before the fix unknown emails took ~10x as long here
    # (cost 10 against cost 4); a generous bound keeps a noisy machine from failing it.
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.5 < ratio < 2, (ratio, statistics.median(known), statistics.median(unknown))
