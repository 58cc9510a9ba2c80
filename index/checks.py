"""Validation of what callers send the index: vectors, item ids, k, search knobs, filters.

Pure functions over the settings; each raises ``InvalidRequest`` with a message meant for the
caller (the gRPC server sends it back). No FAISS here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from conf.settings import IndexSettings
from index.errors import InvalidRequest
from index.types import FILTER_FIELDS, NO_FILTER, STATUSES, Filter

_INTEGER = (int, np.integer)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_vectors(vectors: Any, dim: int, what: str) -> np.ndarray:
    """(n, d) float32, finite, normalised; one pass (NaN and inf show up in the squared norm)."""
    if type(vectors) is np.ndarray and vectors.dtype == np.float32 and vectors.shape == (dim,):
        sq = float(vectors @ vectors)            # the serving hot path: one query, one BLAS call
        if math.isfinite(sq) and sq > 0:
            if abs(sq - 1.0) < 1e-6 and vectors.flags.c_contiguous:
                return vectors[None, :]
            return (vectors / math.sqrt(sq))[None, :]
    try:
        x = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"{what}: not numeric ({e})") from None
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise InvalidRequest(f"{what}: expected dimension {dim}, got shape {tuple(x.shape)}")
    sq = np.einsum("ij,ij->i", x, x)
    if not np.isfinite(sq).all():
        raise InvalidRequest(f"{what}: contains NaN or infinity (or values too large to square)")
    if not sq.all():
        raise InvalidRequest(f"{what}: contains an all-zero vector (no direction to compare)")
    return np.ascontiguousarray(x / np.sqrt(sq)[:, None])   # FAISS reads raw C-order rows


def check_ids(ids: Sequence[str], settings: IndexSettings) -> None:
    """Item ids: non-empty strings of at most ``max_id_chars`` characters (the contract's limit),
    UTF-8 encodable, without control characters; else ``InvalidRequest`` naming the first bad one."""
    limit = settings.max_id_chars
    if limit is None:
        raise RuntimeError("index.max_id_chars is unset: build IndexSettings through Settings")
    for item in ids:
        if not isinstance(item, str) or not item:
            raise InvalidRequest("item ids must be non-empty strings")
        if len(item) > limit:
            raise InvalidRequest(f"item id {item[:32]!r}... is {len(item)} characters, "
                                 f"limit {limit} (contracts.max_id_chars)")
        if item.isascii() and item.isprintable():
            continue                                  # the common case, two C loops
        if _CONTROL.search(item):
            raise InvalidRequest(f"item id {item!r} contains a control character")
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(f"item id {item!r} is not valid UTF-8 (a lone surrogate)") from None


def check_k(k: int, settings: IndexSettings) -> int:
    if isinstance(k, bool) or not isinstance(k, _INTEGER) or not 1 <= k <= settings.max_k:
        raise InvalidRequest(f"k must be an integer in 1..{settings.max_k}, got {k!r}")
    return int(k)


def check_knobs(knobs: Mapping[str, int], settings: IndexSettings) -> dict[str, int]:
    """``ef_search`` in 1..``max_ef_search``, ``nprobe`` in 1..``max_nprobe``; nothing else."""
    limits = {"ef_search": settings.max_ef_search, "nprobe": settings.max_nprobe}
    for name, v in knobs.items():
        if name not in limits:
            raise InvalidRequest(f"unknown search knob {name!r}; known: {sorted(limits)}")
        if isinstance(v, bool) or not isinstance(v, _INTEGER) or not 1 <= v <= limits[name]:
            raise InvalidRequest(f"{name} must be an integer in 1..{limits[name]} "
                                 f"(index.max_{name}), got {v!r}")
    return {name: int(v) for name, v in knobs.items()}


def parse_filters(filters: Mapping[str, Collection[str]] | None, settings: IndexSettings) -> Filter:
    """``{"category": [...], "status": ["active"|"inactive"]}``; default: active, any category."""
    if not filters:
        return NO_FILTER
    unknown = set(filters) - set(FILTER_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown filter field(s) {sorted(unknown)}; known: {list(FILTER_FIELDS)}")
    cats: frozenset[str] | None = None
    if "category" in filters:
        values = list(filters["category"])
        if not values or len(values) > settings.max_categories:
            raise InvalidRequest(f"category filter needs 1..{settings.max_categories} values")
        if any(not isinstance(v, str) or not v for v in values):
            raise InvalidRequest("category filter values must be non-empty strings")
        cats = frozenset(values)      # names: codes are looked up under the read lock
    active, inactive = True, False
    if "status" in filters:
        statuses = set(filters["status"])
        if not statuses or statuses - set(STATUSES):
            raise InvalidRequest(f"status filter values must be among {list(STATUSES)}")
        active, inactive = "active" in statuses, "inactive" in statuses
    f = Filter(cats, active, inactive)
    return NO_FILTER if f == NO_FILTER else f
