"""Click logs and listings (Parquet, contract field names) -> the arrays the model trains on.

    ds = load_dataset(Path("data/movielens"))        # catalogue + per-user click sequences
    split = leave_last_out(ds)                        # train / validation / test, per user

The catalogue is the current state of every listing (last row per item_id, recs/local/data/schema.py);
items get dense indices 0..I-1 in catalogue order, and a user's sequence is the list of those
indices in event-time order (ties kept in file order). Clicks on item ids missing from the
listings are dropped and counted, never invented.

Protocol (time-ordered leave-last-out, the same for every model and baseline):
    sequence  s_1 ... s_{L-2}  s_{L-1}  s_L
              '---- train ---' '-val-' '-test-'
    validation: history s_1..s_{L-2}, target s_{L-1}   (early stopping, model choice)
    test:       history s_1..s_{L-1}, target s_L       (reported once, never tuned on)
Users with fewer than 3 clicks only contribute training data.

Protocol 2 (global time split, `time_split`): two cuts in time, val_cut < test_cut.
    training:   every click before val_cut (every model is fitted on these)
    validation: every click in [val_cut, test_cut) on an item listed before val_cut (up to
                `cap` a user), history = all the user's earlier clicks
    test:       every click at or after test_cut on an item listed before test_cut (up to
                `cap` a user), history = all the user's earlier clicks
The models are frozen at the cut while the history grows, as in serving (the Flink job feeds each
click to the user tower); one user gives several pairs, so reports average per user.
Candidates are the items listed before the cut (a listing's first event; for MovieLens its first
rating), so nothing from after the cut is ranked. Items listed after val_cut are also kept out of
tokenizer training. Each split carries its query times (`val_time`, `test_time`: the moment of
the recommendation) for time-aware baselines (models/baselines.py RecentPopularity).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recs.contracts import Listing

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    name: str
    item_ids: list[str]              # (I,) catalogue item ids; index = dense item index
    texts: list[str]                 # (I,) Listing.text() of each item's current state
    categories: list[str | None]     # (I,) current category
    active: np.ndarray               # (I,) bool: current status is "active"
    user_ids: list[str]              # (U,)
    sequences: list[np.ndarray]      # U arrays of item indices (int64), event-time order
    timestamps: list[np.ndarray]     # U arrays of click ts (epoch ms), aligned with sequences
    dropped_clicks: int = 0          # clicks whose item_id has no listing
    listed_ts: np.ndarray | None = None  # (I,) first listing event (epoch ms); None: first click

    def first_listed(self) -> np.ndarray:
        """(I,) when each item became available: its first listing event, or (without listing
        times) its first click; never-clicked items without a time count as always listed."""
        if self.listed_ts is not None:
            return self.listed_ts
        first = np.full(self.n_items, np.iinfo(np.int64).min, np.int64)
        seen = np.full(self.n_items, np.iinfo(np.int64).max, np.int64)
        for s, t in zip(self.sequences, self.timestamps, strict=True):
            np.minimum.at(seen, s, t)
        return np.where(seen == np.iinfo(np.int64).max, first, seen)

    def click_log(self) -> tuple[np.ndarray, np.ndarray]:
        """(n,) ts and (n,) item of every click, in time order (ties kept in sequence order)."""
        ts = np.concatenate(self.timestamps) if self.timestamps else np.zeros(0, np.int64)
        items = np.concatenate(self.sequences) if self.sequences else np.zeros(0, np.int64)
        order = np.argsort(ts, kind="stable")
        return ts[order], items[order]

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def summary(self) -> dict[str, object]:
        lengths = np.array([len(s) for s in self.sequences])
        return {"dataset": self.name, "users": len(self.user_ids), "items": self.n_items,
                "clicks": int(lengths.sum()), "median_clicks_per_user": float(np.median(lengths)),
                "dropped_clicks": self.dropped_clicks,
                "fingerprint": fingerprint(self)}


def fingerprint(ds: Dataset) -> str:
    """A short hash of the catalogue and the click sequences: which data a model was trained on."""
    h = hashlib.sha256()
    h.update(json.dumps(ds.item_ids).encode())
    for s in ds.sequences:
        h.update(s.tobytes())
    return h.hexdigest()[:16]


def _listing(row: dict) -> Listing:
    attrs = row.get("attributes")
    return Listing(item_id=row["item_id"], title=row["title"] or "", status=row["status"],
                   ts=int(row["ts"]), description=row.get("description"),
                   category=row.get("category"), attributes=json.loads(attrs) if attrs else {})


def load_dataset(data_dir: Path, name: str | None = None) -> Dataset:
    """Read DIR/listings.parquet and DIR/clicks.parquet into a Dataset."""
    listings = pd.read_parquet(data_dir / "listings.parquet")
    clicks = pd.read_parquet(data_dir / "clicks.parquet", columns=["user_id", "item_id", "ts"])
    # the last event of an item is its current state (stable sort keeps file order on equal ts)
    current = (listings.sort_values("ts", kind="stable").drop_duplicates("item_id", keep="last")
               .sort_values("item_id", kind="stable").reset_index(drop=True))
    first_ts = listings.groupby("item_id")["ts"].min()
    current = current.astype(object).where(current.notna(), None)
    items = [_listing(r) for r in current.to_dict("records")]
    item_ids = [it.item_id for it in items]
    index = pd.Series(np.arange(len(item_ids)), index=item_ids)

    known = clicks["item_id"].isin(index.index)
    dropped = int((~known).sum())
    if dropped:
        log.warning("%d clicks name items without a listing; dropped", dropped)
    clicks = clicks[known]
    clicks = clicks.assign(item=index.loc[clicks["item_id"]].to_numpy(),
                           row=np.arange(len(clicks)))
    clicks = clicks.sort_values(["user_id", "ts", "row"], kind="stable")
    user_ids, sequences, timestamps = [], [], []
    for uid, g in clicks.groupby("user_id", sort=True):
        user_ids.append(str(uid))
        sequences.append(g["item"].to_numpy(np.int64))
        timestamps.append(g["ts"].to_numpy(np.int64))
    return Dataset(name=name or data_dir.name, item_ids=item_ids,
                   texts=[it.text() for it in items], categories=[it.category for it in items],
                   active=np.array([it.active for it in items], dtype=bool), user_ids=user_ids,
                   sequences=sequences, timestamps=timestamps, dropped_clicks=dropped,
                   listed_ts=first_ts.loc[item_ids].to_numpy(np.int64))


@dataclass
class Split:
    """Leave-last-out: per user a training prefix, and (history, target) pairs to evaluate."""

    train: list[np.ndarray]                  # U arrays: s_1..s_{L-2} (the whole s if L < 3)
    val_users: np.ndarray                    # (V,) user indices with a validation target
    val_history: list[np.ndarray]            # V arrays: s_1..s_{L-2}
    val_target: np.ndarray                   # (V,) s_{L-1}
    test_users: np.ndarray                   # (T,) user indices with a test target (L >= 3)
    test_history: list[np.ndarray]           # T arrays: s_1..s_{L-1}
    test_target: np.ndarray                  # (T,) s_L
    excluded_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    val_time: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))   # (V,) epoch ms
    test_time: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (T,) epoch ms
    val_candidates: np.ndarray | None = None     # items ranked at validation; None: all
    test_candidates: np.ndarray | None = None    # items ranked at test; None: all
    cuts: dict[str, int] = field(default_factory=dict)  # time split: {"val_cut", "test_cut"} ms

    def target_counts(self, n_items: int) -> np.ndarray:
        """(I,) how often each item is a training target (next click): the logQ popularity."""
        counts = np.zeros(n_items, np.int64)
        for s in self.train:
            np.add.at(counts, s[1:], 1)
        return counts


def leave_last_out(ds: Dataset, exclude_items: np.ndarray | None = None) -> Split:
    """The protocol of the module docstring. ``exclude_items`` (new-item report) are removed from
    every training and validation sequence, so the model never sees them; test pairs keep them."""
    excl = np.zeros(ds.n_items, bool)
    if exclude_items is not None:
        excl[exclude_items] = True
    train, vu, vh, vt, th, tt, vtime, ttime = [], [], [], [], [], [], [], []
    for u, s in enumerate(ds.sequences):
        if len(s) < 3:
            train.append(s[~excl[s]])
            continue
        prefix = s[:-2]
        train.append(prefix[~excl[prefix]])
        vu.append(u)
        vh.append(prefix[~excl[prefix]])
        vt.append(s[-2])
        th.append(s[:-1])
        tt.append(s[-1])
        vtime.append(ds.timestamps[u][-3])   # the recommendation is made after the last history
        ttime.append(ds.timestamps[u][-2])   # click: later clicks (the target's too) are unseen
    vt_arr, tt_arr = np.array(vt, np.int64), np.array(tt, np.int64)
    keep = ~excl[vt_arr]  # a validation target that is an excluded item would leak it
    return Split(train=train, val_users=np.array(vu, np.int64)[keep],
                 val_history=[h for h, k in zip(vh, keep, strict=True) if k],
                 val_target=vt_arr[keep], test_users=np.array(vu, np.int64), test_history=th, test_target=tt_arr,
                 excluded_items=np.flatnonzero(excl), val_time=np.array(vtime, np.int64)[keep],
                 test_time=np.array(ttime, np.int64))


def time_cuts(ds: Dataset, test_share: float, val_share: float) -> tuple[int, int]:
    """(val_cut, test_cut) in epoch ms: the last ``test_share`` of all clicks (by time) fall at
    or after test_cut, the ``val_share`` before them between val_cut and test_cut."""
    if not (test_share > 0 and val_share > 0 and test_share + val_share < 1):
        raise ValueError(f"need 0 < test_share, val_share and a sum < 1, got {test_share}, {val_share}")
    ts, _ = ds.click_log()
    if not len(ts):
        raise ValueError(f"{ds.name}: no clicks to cut")
    test_cut = int(np.quantile(ts, 1 - test_share, method="higher"))
    val_cut = int(np.quantile(ts, 1 - test_share - val_share, method="higher"))
    if not val_cut < test_cut:
        raise ValueError(f"{ds.name}: cuts collapse (val_cut {val_cut} >= test_cut {test_cut})")
    return val_cut, test_cut


def _pairs(s: np.ndarray, t: np.ndarray, lo: int, hi: int | None, allowed: np.ndarray,
           cap: int) -> list[tuple[np.ndarray, int, int]]:
    """The user's clicks in [lo, hi) (ms) as (history, target, query time) pairs: history = every
    earlier click, query time = the last history click's ts; only targets in ``allowed`` and not
    already in the history; at most ``cap``, the earliest."""
    out: list[tuple[np.ndarray, int, int]] = []
    for p in np.flatnonzero((t >= lo) & (t < (hi if hi is not None else np.iinfo(np.int64).max))):
        if len(out) == cap:
            break
        if p > 0 and allowed[s[p]] and not (s[:p] == s[p]).any():
            out.append((s[:p], int(s[p]), int(t[p - 1])))
    return out


def time_split(ds: Dataset, test_share: float = 0.1, val_share: float = 0.1,
               cap: int = 20) -> Split:
    """Protocol 2 of the module docstring; cuts from `time_cuts`. Every click after a cut (up to
    ``cap`` per user, the earliest) is a target, with all the user's earlier clicks as history
    (the model is frozen at the cut; the history grows, as in serving). So one user gives several
    pairs: `Split.val_users` / `test_users` name the user of each pair (report per-user means)."""
    val_cut, test_cut = time_cuts(ds, test_share, val_share)
    listed = ds.first_listed()
    train: list[np.ndarray] = []
    val: list[tuple[int, tuple[np.ndarray, int, int]]] = []
    test: list[tuple[int, tuple[np.ndarray, int, int]]] = []
    for u, (s, t) in enumerate(zip(ds.sequences, ds.timestamps, strict=True)):
        train.append(s[t < val_cut])
        val += [(u, p) for p in _pairs(s, t, val_cut, test_cut, listed < val_cut, cap)]
        test += [(u, p) for p in _pairs(s, t, test_cut, None, listed < test_cut, cap)]
    return Split(train=train, val_users=np.array([u for u, _ in val], np.int64),
                 val_history=[p[0] for _, p in val], val_target=np.array([p[1] for _, p in val], np.int64),
                 test_users=np.array([u for u, _ in test], np.int64),
                 test_history=[p[0] for _, p in test],
                 test_target=np.array([p[1] for _, p in test], np.int64),
                 excluded_items=np.flatnonzero(listed >= val_cut),
                 val_time=np.array([p[2] for _, p in val], np.int64),
                 test_time=np.array([p[2] for _, p in test], np.int64),
                 val_candidates=np.flatnonzero(listed < val_cut),
                 test_candidates=np.flatnonzero(listed < test_cut),
                 cuts={"val_cut": val_cut, "test_cut": test_cut})


def last_n(histories: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-aligned last-N windows: (B, N) item indices (0 where padded) and (B, N) bool mask.
    The most recent click sits at column N-1, as the user tower's ONNX input expects."""
    ids = np.zeros((len(histories), n), np.int64)
    mask = np.zeros((len(histories), n), bool)
    for b, h in enumerate(histories):
        h = h[-n:]
        if len(h):
            ids[b, n - len(h):] = h
            mask[b, n - len(h):] = True
    return ids, mask
