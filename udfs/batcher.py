"""An asyncio micro-batcher: concurrent ``await batcher.submit(x)`` calls become one ``run(batch)``.

    batcher = MicroBatcher(run=writer_process_list, max_batch=512, max_wait_ms=10)
    result = await batcher.submit(window)     # inside an async UDF's eval

A batch is handed to ``run`` when it holds ``max_batch`` items, or ``max_wait_ms`` after its first
item arrived, whichever comes first. ``run`` is a blocking function (an ONNX run and a KV write): it
runs in a single worker thread, so the event loop keeps accepting calls while a batch computes, and
the next batch fills meanwhile. ``run`` returns one result per item in order; if it raises, every
caller of that batch gets the exception. Plain asyncio, tested without Flink.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    def __init__(self, run: Callable[[Sequence[T]], Sequence[R]], max_batch: int, max_wait_ms: float) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self._items: list[T] = []
        self._futures: list[asyncio.Future[R]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="micro-batch")
        self.batch_sizes: deque[int] = deque(maxlen=1000)   # sizes of the latest batches handed to run

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        if len(self._items) >= self.max_batch:
            self._flush(loop)
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait_s, self._flush, loop)
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, futures = self._items, self._futures
        self._items, self._futures = [], []
        if not items:
            return
        self.batch_sizes.append(len(items))
        done = loop.run_in_executor(self._executor, self.run, items)
        done.add_done_callback(lambda f: _settle(f, futures))

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _settle(done: asyncio.Future[Sequence[R]], futures: list[asyncio.Future[R]]) -> None:
    error = done.exception()
    if error is None:
        results = done.result()
        if len(results) != len(futures):
            error = RuntimeError(f"batch function returned {len(results)} results for {len(futures)} items")
    for i, f in enumerate(futures):
        if f.done():
            continue
        if error is not None:
            f.set_exception(error)
        else:
            f.set_result(results[i])
