"""The last-admin guard under a deterministic interleaving of two transactions."""

import asyncio

import pytest
from fastapi import FastAPI

from backend import crud
from backend.errors import ConflictError
from backend.models import User, UserCreate, UserRole, UserUpdate
from tests.helpers import ADMIN_EMAIL


async def test_a_second_demotion_waits_for_the_first_and_is_refused(app: FastAPI) -> None:
    sessionmaker = app.state.sessionmaker
    async with sessionmaker() as setup:
        second = await crud.create_user(
            setup,
            data=UserCreate(
                email="second@example.com",
                name="Second",
                password="Second-Pass-1",
                role=UserRole.ADMIN,
            ),
            hashed_password="not-a-login",
        )
        first = await crud.get_user_by_email(setup, email=ADMIN_EMAIL)
    assert first is not None

    async with sessionmaker() as one, sessionmaker() as two:
        first_in_one = await one.get(User, first.id)
        second_in_two = await two.get(User, second.id)
        assert first_in_one is not None
        assert second_in_two is not None
        # Transaction one has checked that another admin exists and holds its locks...
        await crud._ensure_another_active_admin(one, user=first_in_one)
        demote_second = asyncio.create_task(
            crud.update_user(two, user=second_in_two, changes=UserUpdate(role=UserRole.USER))
        )
        await asyncio.sleep(0.3)
        assert not demote_second.done(), "the second demotion did not wait for the first"
        # ...then demotes the first admin and commits; the second must now be refused.
        first_in_one.role = UserRole.USER
        one.add(first_in_one)
        await one.commit()
        with pytest.raises(ConflictError):
            await demote_second
