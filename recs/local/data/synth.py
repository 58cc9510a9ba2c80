"""Deterministic synthetic e-commerce data: a catalogue with real-looking text, users with latent
interests that drift, sessions of clicks with Zipf-like popularity, listings added and removed.

    recs data synth --out data/synth --events 1000000 --seed 42

The world, in the order it is built:
  catalogue   16 categories x product types, ~200 brands, 10 colour families written with synonyms
              (red / scarlet / crimson / ruby ...), materials, sizes, prices; 80 % of items are
              listed before the first click, 20 % appear during the period, 10 % are removed.
  users       1-3 interest categories (popular categories more often), a preferred colour family,
              an activity weight (log-normal: a few users click a lot); 30 % drift once: one
              interest is replaced by another category at a random time.
  sessions    a user, a start time, ~8 clicks ~40 s apart, mostly in one category of the user's
              current interests; within it, mostly the user's colour; item rank ~ Zipf.

Clicks are generated chunk by chunk (fixed memory whatever --events is) and written as row groups;
within a chunk they are in event-time order, across chunks sessions may spill a few minutes, as
real streams do. Same seed, same arguments: byte-identical Parquet.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from recs.local.data.schema import (
    CLICK_SCHEMA,
    CLICKS_FILE,
    LISTING_SCHEMA,
    LISTINGS_FILE,
    USER_SCHEMA,
    USERS_FILE,
    write_manifest,
)

log = logging.getLogger(__name__)

CATEGORIES: dict[str, list[str]] = {
    "dresses": ["dress", "maxi dress", "midi dress", "sundress", "evening gown", "shirt dress"],
    "tops": ["t-shirt", "blouse", "tank top", "sweater", "hoodie", "cardigan"],
    "jeans": ["jeans", "skinny jeans", "bootcut jeans", "denim shorts", "mom jeans"],
    "shoes": ["sneakers", "ankle boots", "sandals", "loafers", "high heels", "running shoes"],
    "bags": ["handbag", "backpack", "tote bag", "clutch", "crossbody bag"],
    "jackets": ["jacket", "parka", "blazer", "raincoat", "puffer jacket"],
    "watches": ["wristwatch", "smartwatch", "chronograph", "dive watch"],
    "jewellery": ["necklace", "ring", "bracelet", "earrings", "pendant"],
    "furniture": ["sofa", "armchair", "bookshelf", "coffee table", "desk", "bar stool"],
    "bedding": ["duvet cover", "pillowcase", "throw blanket", "sheet set", "quilt"],
    "kitchen": ["kettle", "frying pan", "knife set", "blender", "mug", "teapot"],
    "sports": ["yoga mat", "dumbbell", "tennis racket", "football", "cycling jersey"],
    "toys": ["teddy bear", "jigsaw puzzle", "building blocks", "doll", "toy car"],
    "electronics": ["headphones", "phone case", "charger", "bluetooth speaker", "keyboard"],
    "beauty": ["lipstick", "nail polish", "perfume", "eyeshadow palette", "hair brush"],
    "garden": ["plant pot", "garden hose", "watering can", "deck chair", "bird feeder"],
}
COLOURS: dict[str, list[str]] = {
    "red": ["red", "scarlet", "crimson", "ruby"],
    "blue": ["blue", "navy", "azure", "cobalt"],
    "green": ["green", "olive", "emerald", "sage"],
    "black": ["black", "jet", "ebony", "onyx"],
    "white": ["white", "ivory", "cream", "snow"],
    "yellow": ["yellow", "mustard", "lemon", "gold"],
    "pink": ["pink", "rose", "blush", "fuchsia"],
    "brown": ["brown", "tan", "chocolate", "camel"],
    "grey": ["grey", "charcoal", "slate", "silver"],
    "purple": ["purple", "violet", "lilac", "plum"],
}
MATERIALS: dict[str, list[str]] = {
    "dresses": ["cotton", "silk", "linen", "satin", "chiffon"],
    "tops": ["cotton", "wool", "linen", "cashmere", "jersey"],
    "jeans": ["denim", "stretch denim", "organic cotton"],
    "shoes": ["leather", "suede", "canvas", "mesh", "patent leather"],
    "bags": ["leather", "canvas", "nylon", "suede", "faux leather"],
    "jackets": ["wool", "down", "nylon", "tweed", "waxed cotton"],
    "watches": ["steel", "titanium", "leather strap", "ceramic", "rose gold"],
    "jewellery": ["sterling silver", "gold plated", "pearl", "crystal", "brass"],
    "furniture": ["oak", "walnut", "velvet", "rattan", "metal"],
    "bedding": ["cotton", "linen", "bamboo", "flannel", "percale"],
    "kitchen": ["stainless steel", "cast iron", "ceramic", "glass", "copper"],
    "sports": ["rubber", "neoprene", "carbon", "foam", "polyester"],
    "toys": ["plush", "wood", "plastic", "felt", "cardboard"],
    "electronics": ["aluminium", "plastic", "silicone", "rubberised", "fabric"],
    "beauty": ["matte", "glossy", "satin finish", "shimmer", "vegan"],
    "garden": ["terracotta", "plastic", "galvanised steel", "teak", "bamboo"],
}
SIZES: dict[str, list[str]] = {
    "clothing": ["XS", "S", "M", "L", "XL"],
    "shoes": ["36", "37", "38", "39", "40", "41", "42", "43", "44"],
    "other": ["small", "medium", "large"],
}
ADJECTIVES = ["classic", "elegant", "everyday", "lightweight", "premium", "vintage", "modern",
              "cosy", "durable", "handmade", "minimalist", "oversized", "slim", "soft"]
_SYLLABLES = ["nor", "vik", "al", "tu", "ra", "ka", "zen", "lo", "mi", "sa", "bel", "ox", "ter",
              "va", "qui", "den", "ro", "lu", "fen", "ia"]
CATEGORY_NAMES = list(CATEGORIES)
COLOUR_NAMES = list(COLOURS)
DAY_MS = 86_400_000
DEFAULT_START_MS = 1_790_812_800_000  # 2026-10-01 00:00 UTC


@dataclass(frozen=True)
class SynthConfig:
    events: int = 100_000
    items: int | None = None       # default: events / 40, within [100, 100_000] (bounded memory)
    users: int | None = None       # default: events / 40, within [100, 250_000]
    days: float = 30.0             # period the clicks span
    start_ms: int = DEFAULT_START_MS
    seed: int = 42
    chunk: int = 250_000           # clicks generated and written at a time (memory bound)
    session_mean: float = 8.0      # mean clicks per session
    gap_mean_s: float = 40.0       # mean seconds between clicks in a session
    p_session_interest: float = 0.85  # session category drawn from the user's interests
    p_in_session_category: float = 0.9  # click stays in the session's category
    p_colour: float = 0.6          # click picks the user's colour family when the category has it
    new_item_share: float = 0.2    # listed during the period rather than before it
    removed_share: float = 0.1     # removed during the period
    update_share: float = 0.05     # get one price-change event
    drift_share: float = 0.3       # users whose interests change once

    def n_items(self) -> int:
        return self.items if self.items else int(np.clip(self.events // 40, 100, 100_000))

    def n_users(self) -> int:
        return self.users if self.users else int(np.clip(self.events // 40, 100, 250_000))


def _ids(prefix: str, idx: np.ndarray) -> pa.Array:
    """'u17'-style ids, built in Arrow (fast for millions of rows)."""
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(idx), pa.string()), "")


def _log_uniform_rank(rng: np.random.Generator, sizes: np.ndarray) -> np.ndarray:
    """Rank in [0, size) with P(r) ~ 1/(r+1): Zipf with exponent 1, sampled by inverse CDF."""
    u = rng.random(len(sizes))
    r = np.floor(np.exp(u * np.log(sizes + 1.0))).astype(np.int64) - 1
    return np.minimum(r, sizes - 1)


class Catalogue:
    """Items as parallel numpy arrays plus their text; grouped for fast sampling."""

    def __init__(self, cfg: SynthConfig, rng: np.random.Generator) -> None:
        n = cfg.n_items()
        n_cat, n_col = len(CATEGORY_NAMES), len(COLOUR_NAMES)
        # Categories are not equally large or popular: Zipf-ish shares.
        cat_w = 1.0 / np.arange(1, n_cat + 1) ** 0.7
        self.category_weights = cat_w / cat_w.sum()
        self.category = rng.choice(n_cat, size=n, p=self.category_weights)
        self.colour = rng.integers(0, n_col, size=n)
        brands = sorted({"".join(rng.choice(_SYLLABLES, size=rng.integers(2, 4))).capitalize()
                         for _ in range(260)})[:200]
        self.brand = rng.integers(0, len(brands), size=n)
        span = int(cfg.days * DAY_MS)
        is_new = rng.random(n) < cfg.new_item_share
        self.created = np.where(is_new, cfg.start_ms + rng.integers(0, span, size=n),
                                cfg.start_ms - rng.integers(DAY_MS, 90 * DAY_MS, size=n))
        removed = rng.random(n) < cfg.removed_share
        end = cfg.start_ms + span
        removal = self.created + (rng.random(n) * (end - np.maximum(self.created, cfg.start_ms))
                                  ).astype(np.int64) + np.maximum(0, cfg.start_ms - self.created)
        self.removed = np.where(removed, removal, np.iinfo(np.int64).max)
        self.updated = np.where(rng.random(n) < cfg.update_share,
                                np.maximum(self.created, cfg.start_ms) + rng.integers(0, span, size=n),
                                -1)
        # Rank within each group is a random permutation: popularity independent of everything else.
        order = rng.permutation(n)
        self.by_cat = _Groups(self.category[order], order, n_cat)
        self.by_cat_colour = _Groups(self.category[order] * n_col + self.colour[order], order,
                                     n_cat * n_col)
        evergreen = order[(self.created[order] <= cfg.start_ms) & (self.removed[order] == np.iinfo(np.int64).max)]
        self.evergreen = _Groups(self.category[evergreen], evergreen, n_cat)
        self._rng_text = np.random.default_rng(cfg.seed + 1)
        self._brands = brands

    def __len__(self) -> int:
        return len(self.category)

    def live(self, items: np.ndarray, ts: np.ndarray) -> np.ndarray:
        return (self.created[items] <= ts) & (self.removed[items] > ts)

    def listing_table(self, cfg: SynthConfig) -> pa.Table:
        """One row per listing event (created, price change, removed), in event-time order."""
        rng = self._rng_text
        n = len(self)
        rows: dict[str, list] = {k: [] for k in LISTING_SCHEMA.names}
        base_price = np.exp(rng.normal(3.5, 0.8, size=n)).round(2)
        for i in range(n):
            cat = CATEGORY_NAMES[self.category[i]]
            ptype = CATEGORIES[cat][rng.integers(len(CATEGORIES[cat]))]
            colour_word = COLOURS[COLOUR_NAMES[self.colour[i]]][rng.integers(4)]
            material = MATERIALS[cat][rng.integers(len(MATERIALS[cat]))]
            sizes = SIZES["clothing" if cat in ("dresses", "tops", "jeans", "jackets")
                          else "shoes" if cat == "shoes" else "other"]
            size = sizes[rng.integers(len(sizes))]
            brand = self._brands[self.brand[i]]
            adjective = ADJECTIVES[rng.integers(len(ADJECTIVES))]
            title = f"{brand} {colour_word} {material} {ptype}"
            article = "An" if adjective[0] in "aeiou" else "A"
            description = (f"{article} {adjective} {ptype} in {colour_word} {material}, size {size}. "
                           f"From {brand}'s {cat} collection.")
            attrs = json.dumps({"brand": brand, "colour": colour_word, "material": material,
                                "size": size})
            events = [(int(self.created[i]), "active", float(base_price[i]))]
            if self.updated[i] >= 0 and self.updated[i] < self.removed[i]:
                events.append((int(self.updated[i]), "active", float((base_price[i] * 0.8).round(2))))
            if self.removed[i] != np.iinfo(np.int64).max:
                events.append((int(self.removed[i]), "removed", events[-1][2]))
            for ts, status, price in events:
                rows["item_id"].append(f"i{i}")
                rows["title"].append(title)
                rows["description"].append(description)
                rows["category"].append(cat)
                rows["attributes"].append(attrs)
                rows["price"].append(price)
                rows["status"].append(status)
                rows["ts"].append(ts)
        table = pa.Table.from_pydict(rows, schema=LISTING_SCHEMA)
        return table.take(pc.sort_indices(table, [("ts", "ascending"), ("item_id", "ascending")]))


class _Groups:
    """Items grouped by a key, each group in popularity-rank order, as one flat array."""

    def __init__(self, keys: np.ndarray, items: np.ndarray, n_groups: int) -> None:
        order = np.argsort(keys, kind="stable")
        self.items = items[order]
        self.sizes = np.bincount(keys, minlength=n_groups)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])

    def sample(self, rng: np.random.Generator, groups: np.ndarray) -> np.ndarray:
        """One Zipf-ranked item per requested group; -1 where the group is empty."""
        sizes = self.sizes[groups]
        out = np.full(len(groups), -1, dtype=np.int64)
        ok = sizes > 0
        ranks = _log_uniform_rank(rng, sizes[ok])
        out[ok] = self.items[self.offsets[groups[ok]] + ranks]
        return out


class Users:
    def __init__(self, cfg: SynthConfig, cat_weights: np.ndarray, rng: np.random.Generator) -> None:
        n, n_cat = cfg.n_users(), len(CATEGORY_NAMES)
        self.n_interests = rng.integers(1, 4, size=n)
        self.interests = np.stack([rng.choice(n_cat, size=n, p=cat_weights) for _ in range(3)], 1)
        self.colour = rng.integers(0, len(COLOUR_NAMES), size=n)
        self.activity = rng.lognormal(0.0, 1.0, size=n)
        self.activity_cdf = np.cumsum(self.activity) / self.activity.sum()
        drifts = rng.random(n) < cfg.drift_share
        self.drift_ts = np.where(drifts, cfg.start_ms + rng.integers(0, int(cfg.days * DAY_MS), size=n),
                                 np.iinfo(np.int64).max)
        slot = rng.integers(0, 3, size=n) % self.n_interests
        self.after = self.interests.copy()
        new_cat = (self.interests[np.arange(n), slot] + rng.integers(1, n_cat, size=n)) % n_cat
        self.after[np.arange(n), slot] = new_cat

    def __len__(self) -> int:
        return len(self.colour)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self.activity_cdf, rng.random(size)), len(self) - 1)

    def table(self) -> pa.Table:
        def names(rows: np.ndarray) -> list[list[str]]:
            return [[CATEGORY_NAMES[c] for c in dict.fromkeys(r[:k])]
                    for r, k in zip(rows, self.n_interests, strict=True)]

        drift = [None if t == np.iinfo(np.int64).max else int(t) for t in self.drift_ts]
        return pa.Table.from_pydict({
            "user_id": _ids("u", np.arange(len(self))),
            "interests": names(self.interests),
            "colour": [COLOUR_NAMES[c] for c in self.colour],
            "drift_ts": pa.array(drift, type=pa.int64()),
            "interests_after": names(self.after),
        }, schema=USER_SCHEMA)


def _click_chunk(cfg: SynthConfig, cat: Catalogue, users: Users, rng: np.random.Generator,
                 n: int, t0: int, t1: int, session_base: int) -> tuple[pa.Table, int]:
    n_cat, n_col = len(CATEGORY_NAMES), len(COLOUR_NAMES)
    # Sessions: lengths ~ 1 + geometric, enough of them to cover n clicks.
    n_sessions = int(n / cfg.session_mean * 1.2) + 2
    lengths = rng.geometric(1.0 / cfg.session_mean, size=n_sessions)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n) + 1]
    lengths[-1] -= lengths.sum() - n                                   # exactly n clicks
    n_sessions = len(lengths)
    s_user = users.sample(rng, n_sessions)                            # (S,)
    s_start = rng.integers(t0, max(t0 + 1, t1), size=n_sessions)      # (S,)
    # Session category: one of the user's interests (current at the session start) or any.
    drifted = s_start >= users.drift_ts[s_user]
    pick = rng.integers(0, 3, size=n_sessions) % users.n_interests[s_user]
    interest = np.where(drifted, users.after[s_user, pick], users.interests[s_user, pick])
    s_cat = np.where(rng.random(n_sessions) < cfg.p_session_interest, interest,
                     rng.choice(n_cat, size=n_sessions, p=cat.category_weights))
    # Expand to clicks.
    session = np.repeat(np.arange(n_sessions), lengths)               # (n,)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    gaps = rng.exponential(cfg.gap_mean_s * 1000.0, size=n).astype(np.int64)
    gaps[first] = 0
    csum = np.cumsum(gaps)
    ts = s_start[session] + csum - csum[first][session]               # (n,) epoch ms
    user = s_user[session]
    category = np.where(rng.random(n) < cfg.p_in_session_category, s_cat[session],
                        rng.choice(n_cat, size=n, p=cat.category_weights))
    want_colour = rng.random(n) < cfg.p_colour
    items = np.full(n, -1, dtype=np.int64)
    # Rejection sampling for items live at the click time, a few rounds, then evergreen items.
    todo = np.arange(n)
    for _ in range(6):
        if len(todo) == 0:
            break
        by_colour = cat.by_cat_colour.sample(rng, category[todo] * n_col + users.colour[user[todo]])
        plain = cat.by_cat.sample(rng, category[todo])
        cand = np.where(want_colour[todo] & (by_colour >= 0), by_colour, plain)
        ok = (cand >= 0) & cat.live(np.maximum(cand, 0), ts[todo])
        items[todo[ok]] = cand[ok]
        todo = todo[~ok]
    if len(todo):
        fallback = cat.evergreen.sample(rng, category[todo])
        fallback[fallback < 0] = cat.evergreen.items[0]
        items[todo] = fallback
    order = np.argsort(ts, kind="stable")
    table = pa.table({
        "user_id": _ids("u", user[order]),
        "item_id": _ids("i", items[order]),
        "ts": pa.array(ts[order], type=pa.int64()),
        "event": pa.array(np.full(n, "click", dtype=object), type=pa.string()),
        "session_id": _ids("s", session[order] + session_base),
    }, schema=CLICK_SCHEMA)
    return table, session_base + n_sessions


def generate(out_dir: Path, cfg: SynthConfig | None = None, *, progress: bool = True,
             **overrides: object) -> dict[str, int]:
    """Write clicks.parquet, listings.parquet, users.parquet and manifest.json; return counts."""
    cfg = cfg or SynthConfig(**overrides)  # type: ignore[arg-type]
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    catalogue = Catalogue(cfg, rng)
    users = Users(cfg, catalogue.category_weights, rng)
    span = int(cfg.days * DAY_MS)
    n_chunks = max(1, -(-cfg.events // cfg.chunk))
    session_base = 0
    with pq.ParquetWriter(out_dir / CLICKS_FILE, CLICK_SCHEMA, compression="zstd") as writer, \
         tqdm(total=cfg.events, unit="click", desc="clicks", disable=not progress) as bar:
        for c in range(n_chunks):
            n = min(cfg.chunk, cfg.events - c * cfg.chunk)
            t0 = cfg.start_ms + span * c // n_chunks
            t1 = cfg.start_ms + span * (c + 1) // n_chunks
            table, session_base = _click_chunk(cfg, catalogue, users, rng, n, t0, t1, session_base)
            writer.write_table(table)
            bar.update(n)
    listings = catalogue.listing_table(cfg)
    pq.write_table(listings, out_dir / LISTINGS_FILE, compression="zstd")
    pq.write_table(users.table(), out_dir / USERS_FILE, compression="zstd")
    counts = {"clicks": cfg.events, "users": len(users), "items": len(catalogue),
              "listing_events": listings.num_rows, "sessions": session_base}
    write_manifest(out_dir, source="recs data synth", config=cfg.__dict__, **counts)
    return counts
