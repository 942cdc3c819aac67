"""One clock for the whole app: tests move it instead of sleeping."""

from datetime import UTC, datetime, timedelta


class Clock:
    """The time every timestamp and lifetime is taken from. Tests move it forward
    (tests/conftest.py, `clock`) to cross a session's lifetime without sleeping."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


clock = Clock()


def utcnow() -> datetime:
    return clock.now()
