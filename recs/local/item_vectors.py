"""Bootstrap item vectors from a listings file: the batch stand-in for the item_index job.

    ids, vecs, version = embed_listings(settings, data_dir)      # active listings, item tower (ONNX)
    put_item_vectors(settings, ids, vecs, version, listings)     # KV item:{id}, what user_embeddings reads

The user-embedding job looks up the item-tower vector of every clicked item in KV ``item:{id}``
(ARCHITECTURE.md, contracts). Until the streaming item_index job exists, the demo, the tests and the
stream benchmark fill those keys with this: the current state of each listing (its last event),
active ones only, embedded with the artifact in settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conf.settings import Settings
from recs.contracts import ContractError, Listing, parse_listing
from recs.local.data.schema import LISTINGS_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ItemVectors:
    listings: list[Listing]        # active listings, by item_id
    vectors: np.ndarray            # (n, d) float32, row i is listings[i]
    model_version: str


def current_listings(settings: Settings, data_dir: Path) -> list[Listing]:
    """The last event of every listing in ``data_dir``, active ones, sorted by item id."""
    from recs.local.produce import iter_rows, row_to_event

    latest: dict[str, Listing] = {}
    for row in iter_rows(data_dir / LISTINGS_FILE):
        try:
            lst = parse_listing(row_to_event("listing", row), settings.contracts)
        except ContractError:
            continue
        if lst.item_id not in latest or lst.ts >= latest[lst.item_id].ts:
            latest[lst.item_id] = lst
    return sorted((x for x in latest.values() if x.active), key=lambda x: x.item_id)


def embed_listings(settings: Settings, data_dir: Path, limit: int | None = None) -> ItemVectors:
    from models.artifact import load_configured

    active = current_listings(settings, data_dir)[:limit]
    if not active:
        raise ValueError(f"no active listing in {data_dir / LISTINGS_FILE}")
    art = load_configured(settings.model, settings.threads.batch)
    return ItemVectors(active, art.embed_items([x.text() for x in active]), art.model_version)


def put_item_vectors(settings: Settings, items: ItemVectors, chunk: int = 1000) -> int:
    """Write every vector to KV ``item:{id}`` (event-time rule: an older write is refused); returns
    how many were written."""
    from recs.stores import ItemVector, open_store

    store = open_store(settings)
    written = 0
    try:
        for lo in range(0, len(items.listings), chunk):
            part = items.listings[lo:lo + chunk]
            written += sum(store.put_items([
                ItemVector(x.item_id, items.vectors[lo + j], items.model_version, x.ts, "active", x.category)
                for j, x in enumerate(part)]))
    finally:
        store.close()
    log.info("wrote %d item vectors (model %s) to KV", written, items.model_version)
    return written
