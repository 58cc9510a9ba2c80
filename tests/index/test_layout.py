"""Row layout and FAISS construction (index/layout.py): k-means locality order, spare capacity,
storage kinds across a snapshot."""

from __future__ import annotations

import numpy as np
import pytest

from index.ann import ItemIndex

from .helpers import clustered, top_ids


def test_bulk_build_lays_rows_out_by_cell_and_keeps_every_mapping(make_index_settings):
    """hnsw_reorder renumbers rows after the graph is built: ids, vectors, categories, filters and
    deletes must all follow their row, and neighbouring rows must end up alike."""
    from index.layout import REORDER_MIN_ROWS

    n = REORDER_MIN_ROWS + 1000
    x = clustered(n)
    ids = [f"i{i}" for i in range(n)]
    cats = [f"c{i % 4}" for i in range(n)]
    idx = ItemIndex(make_index_settings(kind="HNSW", ef_search=64))
    idx.load_batch(ids, x, categories=cats)
    st = idx._st
    adjacent = float(np.mean(np.einsum("ij,ij->i", st.vecs[: n - 1], st.vecs[1:n])))
    shuffled = st.vecs[np.random.default_rng(1).permutation(n)]
    random_pairs = float(np.mean(np.einsum("ij,ij->i", shuffled[:-1], shuffled[1:])))
    assert adjacent > random_pairs + 0.3, (adjacent, random_pairs)   # the layout changed
    assert st.ids != ids                                               # ... rows renumbered
    for i in (0, 17, 4242, n - 1):
        assert np.allclose(idx.vector(ids[i]), x[i], atol=1e-6)
    found = [row[0] for row in top_ids(idx, x[:200], 1)]
    assert sum(f == f"i{i}" for i, f in enumerate(found)) >= 196        # fp16 graph: near-exact
    rows = idx.search(x[:50], 10, filters={"category": ["c1"]})
    assert all(int(h.item_id[1:]) % 4 == 1 for row in rows for h in row)
    idx.delete(ids[:10])
    assert not {f"i{i}" for i in range(10)} & {h for row in top_ids(idx, x[:10], 10) for h in row}


def test_no_reorder_below_the_threshold_or_when_off(make_index_settings):
    x = clustered(3000)
    ids = [f"i{i}" for i in range(3000)]
    for s in (make_index_settings(kind="HNSW"),
              make_index_settings(kind="HNSW", hnsw_reorder=False)):
        idx = ItemIndex(s)
        idx.load_batch(ids, x)
        assert idx._st.ids == ids


@pytest.mark.parametrize("kind", ["HNSW", "Flat"])
def test_first_upsert_after_a_build_or_restore_does_not_reallocate(make_index_settings, tmp_path, kind):
    """FAISS sizes its arrays exactly on a bulk add or a read; without spare capacity the next
    insert copies them all under the write lock (the 1 M upsert-visibility p99 of 345 ms)."""
    from index import snapshot

    def storage_address(idx: ItemIndex) -> int:
        fx = idx._st.index
        codes = faiss.downcast_index(fx.storage).codes if kind == "HNSW" else fx.codes
        return int(codes.data())

    import faiss

    s = make_index_settings(kind=kind, compaction_min_dead=10**6)
    x = clustered(2000)
    idx = ItemIndex(s)
    idx.load_batch([f"i{i}" for i in range(2000)], x)
    back, _ = snapshot.load(snapshot.save(idx, tmp_path / "r", {}), s)
    for index in (idx, back):
        before = storage_address(index)
        index.upsert([f"new{j}" for j in range(100)], clustered(100, seed=5))
        assert storage_address(index) == before
        assert top_ids(index, x[:1], 1) == [["i0"]]


def test_snapshot_of_other_hnsw_storage_is_rebuilt(make_index_settings, tmp_path):
    from index import snapshot

    x = clustered(500)
    ids = [f"i{i}" for i in range(500)]
    old = ItemIndex(make_index_settings(kind="HNSW", hnsw_storage="flat"))
    old.load_batch(ids, x)
    path = snapshot.save(old, tmp_path / "r", {})
    back, _ = snapshot.load(path, make_index_settings(kind="HNSW", hnsw_storage="fp16"))
    assert type(back._st.index).__name__ == "IndexHNSWSQ"
    assert [row[0] for row in top_ids(back, x[:50], 1)] == ids[:50]
