"""Index snapshots: everything needed to come back exactly where the replica was.

    path = save(index, settings.snapshot_dir / settings.replica_id, offsets={"item_embeddings": {0: 42}})
    index, offsets = load_latest(settings)      # -> (ItemIndex, offsets) or None when there is none

A snapshot is one folder ``snap-<unix ms>/`` holding ``meta.json`` (kind, dim, model_version,
categories, row and tombstone counts, and the topic offsets it reflects: the next offset to read,
per partition), ``arrays.npz`` (vectors, category codes, active and live flags per row),
``ids.json`` and ``index.faiss`` (the FAISS structure itself, so a 1 M HNSW graph is not rebuilt).
It is written to a temporary folder and renamed into place, so a crash never leaves a half
snapshot that ``load_latest`` would pick. The two newest snapshots are kept.

Consistency: ``save`` waits for a running rebuild to finish, then copies under the read side of the
index lock, so the offsets passed in must be those of the last record applied before the call
(the feeder calls it between batches).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from conf.settings import IndexSettings
from index.ann import ItemIndex

log = logging.getLogger(__name__)

Offsets = dict[str, dict[int, int]]
KEEP = 2


def save(index: ItemIndex, folder: Path, offsets: Offsets) -> Path:
    t0 = time.perf_counter()
    index.wait_compaction()
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"snap-{time.time_ns() // 1_000_000:015d}"
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        with index.reading():
            meta, arrays, ids, fx = index.export_state()
            meta["offsets"] = {t: {str(p): int(o) for p, o in parts.items()}
                               for t, parts in offsets.items()}
            meta["created_ms"] = time.time_ns() // 1_000_000
            np.savez(tmp / "arrays.npz", **arrays)
            (tmp / "ids.json").write_text(json.dumps(ids))
            faiss.write_index(fx, str(tmp / "index.faiss"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))   # written last: marks complete
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(folder.glob("snap-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("snapshot %s: %d rows in %.2f s", final, meta["rows"], time.perf_counter() - t0)
    return final


def latest(folder: Path) -> Path | None:
    snaps = [p for p in sorted(folder.glob("snap-*")) if (p / "meta.json").is_file()]
    return snaps[-1] if snaps else None


def load(path: Path, settings: IndexSettings) -> tuple[ItemIndex, Offsets]:
    t0 = time.perf_counter()
    meta: dict[str, Any] = json.loads((path / "meta.json").read_text())
    with np.load(path / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    ids = json.loads((path / "ids.json").read_text())
    fx = faiss.read_index(str(path / "index.faiss")) if meta["kind"] == settings.kind else None
    index = ItemIndex.from_state(settings, meta, arrays, ids, fx)
    offsets = {t: {int(p): int(o) for p, o in parts.items()} for t, parts in meta["offsets"].items()}
    log.info("restored %s: %d items in %.2f s", path, len(index), time.perf_counter() - t0)
    return index, offsets


def load_latest(settings: IndexSettings) -> tuple[ItemIndex, Offsets] | None:
    path = latest(settings.snapshot_dir / settings.replica_id)
    return None if path is None else load(path, settings)
