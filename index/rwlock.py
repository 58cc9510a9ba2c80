"""A phase-fair readers-writer lock.

Searches take the read side (many at once: FAISS releases the GIL while it searches); writes take
the write side for one short chunk at a time. A waiting writer stops new readers from entering (so
a stream of searches cannot starve it), and when a writer releases, every reader that was waiting
enters before the next writer (so a stream of write chunks cannot starve searches). Together with
searches that hold the read side for one bounded group of queries (``ItemIndex.search_raw``), a
search waits at most for one group of searches and one write chunk, never a rebuild or a whole
upsert request.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RWLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._readers_waiting = 0
        self._admit = 0        # readers that waited through the last write; they go before the next
        self._phase = 0        # bumped by every write release

    def acquire_read(self) -> None:
        with self._cond:
            if not (self._writer or self._writers_waiting):
                self._readers += 1
                return
            phase = self._phase
            self._readers_waiting += 1
            while self._writer or (self._writers_waiting and self._phase == phase):
                self._cond.wait()
            self._readers_waiting -= 1
            if self._phase != phase and self._admit:
                self._admit -= 1
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    @contextmanager
    def read(self) -> Iterator[None]:
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers or self._admit:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._admit = self._readers_waiting
                self._phase += 1
                self._cond.notify_all()
