"""Train the two-tower model on next-click targets with in-batch sampled softmax + logQ correction.

    recs train --data data/movielens                      # settings [model] from conf/defaults.toml
    recs train --data data/movielens --config my.toml     # a [model] table overriding the defaults
    .venv/bin/python -m models.train data/movielens       # the same, without the CLI

What one step does (Yi et al., "Sampling-bias-corrected neural modeling", RecSys 2019):
  1. take B training windows of N + 1 consecutive clicks from users' training prefixes
     (window ends shifted by a random offset each epoch, so windows differ between epochs);
  2. run the item tower once over the distinct items of the batch -> (M, d);
  3. feed the item vectors of the first N clicks to the user tower -> (B, N, d), the user vector
     after every prefix (causal), each predicting the click that follows it;
  4. logits = user . item / temperature - log q(item) over the distinct target items of the batch
     (the in-batch negatives), q = the item's share of training targets; cross-entropy.
After every epoch: Recall@10 on the validation split (full catalogue ranking, or the split's
validation candidates); the best epoch's weights are kept; training stops after `patience` epochs
without gain or at `max_epochs`, never on the clock. `max_train_minutes` is only a safety: a run
that passes it raises TrainingTimeout instead of returning a model cut short.

Reproducible: the same data, settings and seed give the same weights and the same figures on a
busy or a quiet machine: seeded torch/numpy, a fixed torch thread count (`threads`),
deterministic algorithms, and stopping decided by epochs only (tests/models/test_train_export.py).
The checkpoint (`<checkpoint_dir>/model.pt`) holds the weights, the config that rebuilds the model,
the settings, the tokenizer and the training history.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm

from conf.settings import ModelSettings
from models.data import Dataset, Split, last_n
from models.evaluate import evaluate
from models.tokenizer import configure, encode, train_tokenizer
from models.towers import TwoTower

log = logging.getLogger(__name__)


class TrainingTimeout(RuntimeError):
    """Training ran past [model] max_train_minutes: a safety stop, not a result."""


@dataclass
class Trained:
    model: TwoTower
    tokenizer: Tokenizer
    settings: ModelSettings
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val: float = 0.0
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def scorer(self, ds: Dataset):
        """A full-catalogue scorer (models.evaluate.Scorer) over ds's items."""
        return TwoTowerScorer(self.model, self.tokenizer, ds.texts)


class TwoTowerScorer:
    """Item vectors computed once; a batch of histories -> user vectors -> (B, I) cosine scores."""

    def __init__(self, model: TwoTower, tok: Tokenizer, texts: list[str]) -> None:
        self.model = model
        self.items = item_vectors(model, tok, texts)                 # (I, d)

    @torch.no_grad()
    def __call__(self, histories: list[np.ndarray]) -> np.ndarray:
        ids, mask = last_n(histories, self.model.user.max_len)      # (B, N), (B, N)
        x = torch.from_numpy(self.items[ids])                        # (B, N, d)
        self.model.eval()
        u = self.model.user(x, torch.from_numpy(mask)).numpy()       # (B, d)
        return u @ self.items.T                                      # (B, I)


@torch.no_grad()
def item_vectors(model: TwoTower, tok: Tokenizer, texts: list[str], batch: int = 4096) -> np.ndarray:
    model.eval()
    out = []
    for lo in range(0, len(texts), batch):
        ids, mask = encode(tok, texts[lo:lo + batch])                # (b, T), (b, T)
        out.append(model.item(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())
    return np.concatenate(out) if out else np.zeros((0, int(model.config["dim"])), np.float32)


def _windows(train: list[np.ndarray], n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Cut every training prefix into windows of at most n + 1 clicks, overlapping by one click,
    with the window ends shifted by a random offset; every click after the first is a target
    (the clicks after the offset once more, in an extra window ending at the last click)."""
    out = []
    for s in train:
        if len(s) < 2:
            continue
        end = len(s) - int(rng.integers(0, n)) if len(s) > n + 1 else len(s)
        ends = list(range(end, 1, -n))
        if end < len(s):
            ends.append(len(s))
        out += [s[max(0, e - n - 1):e] for e in ends]
    return out


def build_model(cfg: ModelSettings, vocab_size: int) -> TwoTower:
    return TwoTower(vocab_size=vocab_size, dim=cfg.dim, hidden=cfg.hidden, encoder=cfg.user_encoder,
                    heads=cfg.heads, layers=cfg.layers, max_len=cfg.max_len, dropout=cfg.dropout)


def train(ds: Dataset, split: Split, cfg: ModelSettings, *, progress: bool = True,
          checkpoint: Path | None = None) -> Trained:
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(ds, split, cfg, progress=progress, checkpoint=checkpoint)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _train(ds: Dataset, split: Split, cfg: ModelSettings, *, progress: bool,
           checkpoint: Path | None) -> Trained:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)   # a fixed count: float sums are reduced in a fixed order
    rng = np.random.default_rng(cfg.seed)
    t0 = time.monotonic()

    # tokenizer: trained on the texts the model may see (held-out new items excluded)
    seen = np.ones(ds.n_items, bool)
    seen[split.excluded_items] = False
    tok = train_tokenizer([t for t, s in zip(ds.texts, seen, strict=True) if s],
                          cfg.vocab_size, cfg.max_tokens)
    tok_ids, tok_mask = (torch.from_numpy(a) for a in encode(tok, ds.texts))  # (I, T), (I, T)

    model = build_model(cfg, tok.get_vocab_size())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    counts = split.target_counts(ds.n_items)
    logq = torch.from_numpy(np.log(np.maximum(counts, 1) / max(counts.sum(), 1)).astype(np.float32))
    if not cfg.logq_correction:
        logq = torch.zeros_like(logq)
    n = cfg.max_len
    val_hist, val_tgt = split.val_history, split.val_target
    result = Trained(model, tok, cfg, data=ds.summary())
    best_state, bad = copy.deepcopy(model.state_dict()), 0

    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        wins = _windows(split.train, n, rng)
        order = rng.permutation(len(wins))
        bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"epoch {epoch}", leave=False,
                   disable=not progress)
        losses = []
        for lo in bar:
            batch = [wins[i] for i in order[lo:lo + cfg.batch_size]]
            ids, valid = last_n(batch, n + 1)                        # (B, N+1), (B, N+1)
            ids_t, valid_t = torch.from_numpy(ids), torch.from_numpy(valid)
            uniq, inv = torch.unique(ids_t[valid_t], return_inverse=True)    # (M,), (P',)
            v = model.item(tok_ids[uniq], tok_mask[uniq])            # (M, d)
            pos = torch.zeros(ids.shape, dtype=torch.long)           # (B, N+1) index into uniq
            pos[valid_t] = inv
            x = v[pos[:, :-1]] * valid_t[:, :-1, None]               # (B, N, d) inputs
            mask_in = valid_t[:, :-1]                                # (B, N)
            u = model.user.encode_all(x, mask_in)[mask_in]           # (P, d) one per target
            tgt = pos[:, 1:][mask_in]                                # (P,) targets, uniq space
            cand, label = torch.unique(tgt, return_inverse=True)     # (C,), (P,)
            logits = u @ v[cand].T / cfg.temperature - logq[uniq[cand]]  # (P, C)
            loss = F.cross_entropy(logits, label)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")

        val = evaluate(TwoTowerScorer(model, tok, ds.texts), val_hist, val_tgt, ds.n_items,
                       candidates=split.val_candidates)
        minutes = (time.monotonic() - t0) / 60
        result.history.append({"epoch": epoch, "loss": float(np.mean(losses)),
                               "val_recall@10": val["recall@10"], "val_ndcg@10": val["ndcg@10"],
                               "minutes": minutes})
        improved = val["recall@10"] > result.best_val
        if improved:
            result.best_val, result.best_epoch, bad = val["recall@10"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        msg = (f"epoch {epoch}: loss {np.mean(losses):.4f}  val recall@10 {val['recall@10']:.4f}"
               f"  ndcg@10 {val['ndcg@10']:.4f}{'  *' if improved else ''}  {minutes:.1f} min")
        tqdm.write(msg) if progress else log.info(msg)
        if bad >= cfg.patience:
            break
        if minutes >= cfg.max_train_minutes and epoch < cfg.max_epochs:
            raise TrainingTimeout(
                f"training passed the {cfg.max_train_minutes:g}-minute safety limit at epoch "
                f"{epoch} of up to {cfg.max_epochs} (best so far: epoch {result.best_epoch}); "
                "raise [model] max_train_minutes or lower max_epochs: a run cut short by the "
                "clock would not be reproducible")

    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.monotonic() - t0
    if checkpoint is not None:
        save_checkpoint(result, checkpoint)
    return result


def save_checkpoint(t: Trained, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_config": t.model.config, "settings": t.settings.model_dump(mode="json"),
                "state_dict": t.model.state_dict(), "tokenizer": t.tokenizer.to_str(),
                "history": t.history, "best_epoch": t.best_epoch, "best_val": t.best_val,
                "seconds": t.seconds, "data": t.data}, path)
    log.info("checkpoint written to %s", path)


def load_checkpoint(path: Path) -> Trained:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    cfg = ModelSettings(**ck["settings"])
    model = build_model(cfg, ck["model_config"]["vocab_size"])
    model.load_state_dict(ck["state_dict"])
    model.eval()
    tok = configure(Tokenizer.from_str(ck["tokenizer"]), cfg.max_tokens)
    return Trained(model, tok, cfg, history=ck["history"], best_epoch=ck["best_epoch"],
                   best_val=ck["best_val"], seconds=ck["seconds"], data=ck["data"])


if __name__ == "__main__":
    import sys

    from conf import load_settings
    from models.data import leave_last_out, load_dataset

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings().model
    data = load_dataset(Path(sys.argv[1]))
    out = train(data, leave_last_out(data), settings, checkpoint=settings.checkpoint_dir / "model.pt")
    print(f"best epoch {out.best_epoch}: val recall@10 {out.best_val:.4f} in {out.seconds:.0f} s")
