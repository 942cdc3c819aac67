"""Password hashes are admitted only as many as the measured hash rate finishes within
LOGIN_MAX_WAIT_SECONDS; the rest are refused at once (503 server_busy, Retry-After).
And an unknown email is checked at a cost drawn from the stored hashes' costs."""

import asyncio
import time
from collections import Counter

import httpx
import pytest
from fastapi import FastAPI

from backend.auth.passwords import Admission, PasswordHasher, bcrypt_cost
from backend.main import create_app
from tests.helpers import API, USER_PASSWORD, make_settings, post_login, running


def test_admission_holds_what_the_measured_rate_finishes_within_the_budget() -> None:
    admission = Admission(concurrency=1, cap=33, max_wait_seconds=2)
    assert admission.limit == 33  # nothing measured yet: the cap alone
    admission.record(0.2)
    assert admission.limit == 10  # the 10th finishes after 10 x 0.2 s = 2 s
    assert admission.admits(9)
    assert not admission.admits(10)
    assert admission.retry_after(10) == 2  # 10 x 0.2 s to drain
    assert admission.retry_after(1) == 1  # never under a second

    admission.record(1.2)  # a slower hash moves the mean a fifth of the way
    assert admission.mean_seconds == pytest.approx(0.4)
    assert admission.limit == 5


def test_a_hash_running_longer_than_the_mean_lowers_the_limit_at_once() -> None:
    """The mean lags: when reads take the CPU, the hash running now says more."""
    admission = Admission(concurrency=1, cap=33, max_wait_seconds=2)
    admission.record(0.2)
    admission.running[1] = time.perf_counter() - 0.1  # running, not yet past the mean
    assert admission.limit == 10
    admission.running[1] = time.perf_counter() - 0.8  # four times the mean, still running
    assert admission.limit == 2
    assert admission.retry_after(2) == 2
    del admission.running[1]
    assert admission.limit == 10


def test_admission_never_below_concurrency_nor_above_the_cap() -> None:
    slow = Admission(concurrency=2, cap=34, max_wait_seconds=2)
    slow.record(10.0)  # a machine slower than the budget still serves one per thread
    assert slow.limit == 2
    assert slow.retry_after(2) == 10
    fast = Admission(concurrency=2, cap=34, max_wait_seconds=2)
    fast.record(0.001)
    assert fast.limit == 34
    threads = Admission(concurrency=2, cap=34, max_wait_seconds=2)
    threads.record(0.5)
    assert threads.limit == 8  # two threads drain twice as fast


async def test_the_hasher_measures_its_hashes() -> None:
    hasher = PasswordHasher(rounds=4, concurrency=1, queue_limit=32, max_wait_seconds=2)
    try:
        assert hasher.hash_seconds == 0
        await hasher.calibrate()
        assert 0 < hasher.hash_seconds < 2
        assert hasher.admission_limit == 33  # cost 4 is ~1 ms: the cap limits
    finally:
        hasher.close()


async def test_unknown_emails_draw_a_stable_cost_weighted_like_the_stored_hashes() -> None:
    hasher = PasswordHasher(rounds=12, concurrency=1, queue_limit=0, secret="k" * 32)
    try:
        assert hasher._cost_for(None, "a@example.com") == 12  # nothing learnt: the setting
        hasher.learn_costs({4: 3, 10: 1, 8: 0})
        emails = [f"user{n}@example.com" for n in range(2000)]
        drawn = Counter(hasher._cost_for(None, email) for email in emails)
        assert set(drawn) == {4, 10}
        assert 0.2 < drawn[10] / len(emails) < 0.3  # a quarter of the stored hashes
        assert [hasher._cost_for(None, email) for email in emails[:50]] == [
            hasher._cost_for(None, email) for email in emails[:50]
        ]
        # A known account's hash sets its own cost, whatever was learnt.
        stored = await hasher.hash("Some-Password-1")
        assert hasher._cost_for(stored, "a@example.com") == bcrypt_cost(stored) == 12
    finally:
        hasher.close()


async def test_the_learnt_costs_follow_rehashes() -> None:
    old = PasswordHasher(rounds=4, concurrency=1, queue_limit=0)
    stored = await old.hash("Some-Password-1")
    old.close()
    hasher = PasswordHasher(rounds=5, concurrency=1, queue_limit=0)
    try:
        hasher.learn_costs({4: 1})
        assert hasher._cost_for(None, "nobody@example.com") == 4
        matched, new_hash = await hasher.verify("Some-Password-1", stored)
        assert matched
        assert new_hash is not None
        assert bcrypt_cost(new_hash) == 5
        assert hasher._cost_for(None, "nobody@example.com") == 5  # the one hash moved
    finally:
        hasher.close()


async def test_a_burst_past_the_budget_is_refused_at_once_and_the_admitted_succeed(
    app: FastAPI, database_url: str
) -> None:
    # Cost 12 (~0.3 s a hash here) and a 1 s budget on one thread: about 3 admitted.
    settings = make_settings(
        database_url,
        BCRYPT_ROUNDS=12,
        HASH_CONCURRENCY=1,
        HASH_QUEUE_LIMIT=32,
        LOGIN_MAX_WAIT_SECONDS=1,
        RATE_LIMIT_ENABLED=False,
    )
    strict = create_app(settings)
    async with running(strict) as client:
        body = {"email": "burst@example.com", "name": "Burst", "password": USER_PASSWORD}
        assert (await client.post(f"{API}/auth/register", json=body)).status_code == 200
        hasher = strict.state.runtime.password_hasher
        limit = hasher.admission_limit
        assert 1 <= limit < 32  # sized by the measured rate, not the cap

        async def timed_login() -> tuple[httpx.Response, float]:
            started = time.perf_counter()
            response = await post_login(client, "burst@example.com", USER_PASSWORD)
            return response, time.perf_counter() - started

        answers = await asyncio.gather(*(timed_login() for _ in range(limit + 6)))
    admitted = [seconds for response, seconds in answers if response.status_code == 200]
    refused = [(response, seconds) for response, seconds in answers if response.status_code == 503]
    assert len(admitted) + len(refused) == len(answers)
    assert 1 <= len(admitted) <= limit
    assert len(refused) >= 6
    for response, _ in refused:
        assert response.json()["code"] == "server_busy"
        assert int(response.headers["retry-after"]) >= 1
    # Refused without waiting for a hash: each answered before the first admitted one.
    assert max(seconds for _, seconds in refused) < min(admitted)
