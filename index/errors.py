"""The index's errors, importable without FAISS or gRPC (the backend and every client use them).

- ``InvalidRequest``: a request the index refuses (bad dimension, NaN, k out of range, unknown
  filter, a limit); gRPC status INVALID_ARGUMENT.
- ``ModelVersionMismatch``: a vector of one model version met an index of another; FAILED_PRECONDITION.
- ``IndexUnavailable``: no replica of a shard answered in time (the client's retries are spent).
"""

from __future__ import annotations


class InvalidRequest(ValueError):
    """A request the index refuses; the message says why (it is sent back to gRPC callers)."""


class ModelVersionMismatch(Exception):
    """A vector of one model version met an index of another (invariant 1: never compared)."""

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"index holds model_version {expected!r}, request has {got!r}")
        self.expected = expected
        self.got = got


class IndexUnavailable(Exception):
    """No replica of a shard answered in time."""
