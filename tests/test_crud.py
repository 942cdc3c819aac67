"""The last-admin guard under a deterministic interleaving of two transactions."""

import asyncio

import pytest
from fastapi import FastAPI
from sqlalchemy import update
from sqlmodel import col, select

from backend import crud
from backend.auth import accounts
from backend.errors import ConflictError
from backend.models import User, UserCreate, UserRole, UserUpdate
from tests.helpers import ADMIN_EMAIL


async def test_a_second_demotion_waits_for_the_first_and_is_refused(app: FastAPI) -> None:
    runtime = app.state.runtime
    sessionmaker = runtime.sessionmaker
    async with sessionmaker() as setup:
        second = await accounts.create_user(
            setup,
            data=UserCreate(
                email="second@example.com",
                name="Second",
                password="Amber-Lantern-27",
                role=UserRole.ADMIN,
            ),
            hasher=runtime.password_hasher,
            audit=True,
        )
        first = await crud.get_user_by_email(setup, email=ADMIN_EMAIL)
    assert first is not None

    async with sessionmaker() as one, sessionmaker() as two:
        second_in_two = await two.get(User, second.id)
        assert second_in_two is not None
        # Transaction one takes the locks a demotion takes (the active admins' rows on
        # PostgreSQL; SQLite ignores FOR UPDATE, and the UPDATE takes its write lock)
        # and demotes the first admin...
        active_admins = select(User.id).where(
            User.role == UserRole.ADMIN, col(User.is_active).is_(True)
        )
        await one.exec(active_admins.with_for_update())
        await one.exec(update(User).where(col(User.id) == first.id).values(role=UserRole.USER))
        demote_second = asyncio.create_task(
            accounts.update_user(
                two,
                user=second_in_two,
                changes=UserUpdate(role=UserRole.USER),
                hasher=runtime.password_hasher,
            )
        )
        await asyncio.sleep(0.3)
        assert not demote_second.done(), "the second demotion did not wait for the first"
        # ...and commits: the second must now see no other active admin and be refused.
        await one.commit()
        with pytest.raises(ConflictError):
            await demote_second
