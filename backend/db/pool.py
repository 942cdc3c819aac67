"""A connection pool that serves waiting requests in the order they came."""

import asyncio
from collections import deque
from typing import Any

from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import await_
from sqlalchemy.util.queue import AsyncAdaptedQueue, Empty, Full


class FirstComeFirstServedQueue(AsyncAdaptedQueue[Any]):
    """The pool's idle connections, handed to waiting requests in the order they came.

    SQLAlchemy's queue is an asyncio.Queue, and its checkout first takes an idle
    connection without waiting when one is there. A returned connection wakes the
    longest waiter but stays in the queue until that waiter runs; a request arriving
    meanwhile takes it, and the woken waiter finds the queue empty and queues again at
    the back. With 32 clients on 20 connections some requests lost that race for
    seconds: pool TimeoutErrors (503) and a p99 many times the p50 (bench/README.md).
    Here a returned connection goes straight to the longest waiter, and a request
    takes an idle connection only when nobody waits, so a wait lasts at most as long
    as the requests ahead of it.
    """

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        super().__init__(maxsize, use_lifo)
        self._idle: deque[Any] = deque()
        self._waiters: deque[asyncio.Future[Any]] = deque()

    def empty(self) -> bool:
        return not self._idle

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._idle)

    def qsize(self) -> int:
        return len(self._idle)

    def put_nowait(self, item: Any) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # one that timed out or was cancelled is skipped
                waiter.set_result(item)
                return
        if self.full():
            raise Full()
        self._idle.append(item)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.put_nowait(item)  # never blocks: the queue holds at most the pool's connections

    def get_nowait(self) -> Any:
        if not self._idle:
            raise Empty()
        return self._idle.pop() if self.use_lifo else self._idle.popleft()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        # Connections sit idle here only while nobody waits (put_nowait hands them over).
        if self._idle or not block:
            return self.get_nowait()
        return await_(self._wait(seconds=timeout))

    async def _wait(self, *, seconds: float | None) -> Any:
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(seconds):
                return await waiter
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                # Handed a connection just as the wait ended: pass it on, or it is lost.
                self.put_nowait(waiter.result())
            else:
                waiter.cancel()
            if isinstance(error, TimeoutError):
                raise Empty() from None  # the pool turns this into its TimeoutError
            raise


class FirstComeFirstServedPool(AsyncAdaptedQueuePool):
    _queue_class = FirstComeFirstServedQueue
    # Logs under "sqlalchemy", like SQLAlchemy's own pools: that logger is at WARNING
    # unless DB_ECHO, so a disposal is not an INFO line in the server's log.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.FirstComeFirstServedPool"
