"""glibc heap hygiene for the long-running index service (no-ops where glibc is absent).

A rebuild allocates a whole second index in the compaction thread and frees the old one at the swap,
while gRPC handler threads allocate on their own. glibc keeps freed pages in per-thread arenas, so
the service's RSS climbed with every rebuild in the 20-minute soak (bench/soak.py: index 166 -> 280
MiB, ~4.5 MiB a minute, with a constant live catalogue), though the Python heap stayed flat
(tracemalloc) and the same churn in one thread stayed flat. Two measures:

- ``cap_arenas(n)`` at start (``recs index serve``): at most ``n`` malloc arenas, so pages freed by
  one thread are reused by the others (in-process gRPC churn at soak rates, 7 rounds:
  182 -> 222 MiB without, 167 -> 180 MiB with 2 arenas);
- ``release_free_heap()`` after every compaction: ``malloc_trim(0)`` hands the freed pages back
  (single-thread churn, 30 rounds: 147 -> 277 MiB without, flat 113-129 MiB with). No index lock is
  held while it runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from typing import Any

_M_ARENA_MAX = -8   # mallopt parameter (malloc.h)


def _libc() -> Any | None:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt") else None


_LIBC = _libc()


def cap_arenas(n: int) -> bool:
    """Limit glibc to ``n`` malloc arenas (call before threads start); False where not glibc."""
    return bool(_LIBC is not None and n > 0 and _LIBC.mallopt(_M_ARENA_MAX, n) == 1)


def release_free_heap() -> float:
    """Return the free heap pages to the OS; the seconds it took (0 where not glibc)."""
    if _LIBC is None:
        return 0.0
    t0 = time.perf_counter()
    _LIBC.malloc_trim(0)
    return time.perf_counter() - t0
