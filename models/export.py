"""Export a trained checkpoint to the artifact folder every consumer loads (models/artifact.py).

    recs export                                   # artifacts/checkpoints/model.pt -> artifacts/model
    recs export --checkpoint ck.pt --out DIR --eval bench/results/model_quality.json

Folder layout:
    item_tower.onnx   token_ids (B, T) int64, token_mask (B, T) bool  -> item_embedding (B, d)
    user_tower.onnx   item_vectors (B, n, d) float32, mask (B, n) bool -> user_embedding (B, d)
                      the item-tower vectors of the last n <= N clicks, most recent in the last column
    tokenizer.json    the BPE tokenizer, padding/truncation to T included
    metadata.json     model_version, dim, max_len (N), max_tokens (T), vocab_hash, data summary,
                      training summary, evaluation figures, sha256 of every file

model_version is derived from the weights and the tokenizer (same training result, same version),
so an index filled by one export and user vectors from another can be told apart. Batch is a
dynamic axis of both graphs, and the user tower's clicks axis is one too: a batch of short windows
runs on as many columns as its longest window has (windows of 4 clicks: 12.8 us a row on 4
columns, 85.6 us padded to 50; bench/results/towers.json "user_tower_clicks"). An artifact
exported before that has N fixed; ``recs export --upgrade DIR`` rewrites its user tower from the
graph's own weights (same model_version, parity checked before the file is replaced). Both graphs
are exported with the TorchScript exporter (dynamo=False) at opset 17.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from models.artifact import sha256_file
from models.tokenizer import vocab_hash
from models.train import Trained

if TYPE_CHECKING:
    from conf.settings import ModelSettings

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
OPSET = 17
ITEM_FILE, USER_FILE, TOKENIZER_FILE, METADATA_FILE = (
    "item_tower.onnx", "user_tower.onnx", "tokenizer.json", "metadata.json")


def model_version(t: Trained) -> str:
    buf = io.BytesIO()
    for name, tensor in sorted(t.model.state_dict().items()):
        buf.write(name.encode())
        buf.write(tensor.detach().cpu().numpy().tobytes())
    buf.write(t.tokenizer.to_str().encode())
    return "tt-" + hashlib.sha256(buf.getvalue()).hexdigest()[:12]


def _export(module: nn.Module, args: tuple, path: Path, names_in: list[str], name_out: str,
            clicks_axis: bool = False) -> None:
    """``clicks_axis``: axis 1 of every input is dynamic too (the user tower: a batch whose longest
    window has n clicks runs on n columns, not N; bench/results/towers.json "user_tower_clicks")."""
    dyn = {n: {0: "batch", 1: "clicks"} if clicks_axis else {0: "batch"} for n in names_in}
    dyn[name_out] = {0: "batch"}
    torch.onnx.export(module, args, str(path), input_names=names_in, output_names=[name_out],
                      dynamic_axes=dyn, opset_version=OPSET, dynamo=False)


def user_tower_inputs(n: int, d: int) -> dict[str, Any]:
    """metadata.json's description of the user tower's inputs (export and upgrade write the same)."""
    return {"item_vectors": ["batch", "clicks", d, "float32"], "mask": ["batch", "clicks", "bool"],
            "alignment": f"most recent click in the last column; padding masked out; 1 <= clicks <= max_len ({n})"}


def export(t: Trained, out_dir: Path, evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the four files; return the metadata."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model, cfg = t.model.eval(), t.settings
    n, d, tt = cfg.max_len, cfg.dim, cfg.max_tokens
    with torch.no_grad():
        ids = torch.randint(2, int(model.config["vocab_size"]), (2, tt))          # (2, T)
        tmask = torch.ones(2, tt, dtype=torch.bool)                          # (2, T)
        _export(model.item, (ids, tmask), out_dir / ITEM_FILE, ["token_ids", "token_mask"],
                "item_embedding")
        vecs = torch.nn.functional.normalize(torch.randn(2, n, d), dim=-1)    # (2, N, d)
        umask = torch.ones(2, n, dtype=torch.bool)                           # (2, N)
        _export(model.user, (vecs, umask), out_dir / USER_FILE, ["item_vectors", "mask"],
                "user_embedding", clicks_axis=True)
    t.tokenizer.save(str(out_dir / TOKENIZER_FILE))
    files = [ITEM_FILE, USER_FILE, TOKENIZER_FILE]
    meta = {
        "format_version": FORMAT_VERSION,
        "model_version": model_version(t),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dim": d,
        "max_len": n,
        "max_tokens": tt,
        "vocab_size": model.config["vocab_size"],
        "vocab_hash": vocab_hash(t.tokenizer),
        "user_encoder": cfg.user_encoder,
        "inputs": {
            "item_tower": {"token_ids": ["batch", tt, "int64"], "token_mask": ["batch", tt, "bool"]},
            "user_tower": user_tower_inputs(n, d),
        },
        "output": "L2-normalized float32 (batch, dim); score = inner product",
        "model_config": model.config,
        "training": {"settings": cfg.model_dump(mode="json"), "best_epoch": t.best_epoch,
                     "best_val_recall@10": t.best_val, "seconds": round(t.seconds, 1),
                     "epochs": len(t.history)},
        "data": t.data,
        "evaluation": evaluation or {},
        "files": {f: sha256_file(out_dir / f) for f in files},
    }
    (out_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    log.info("exported %s (d=%d, N=%d) to %s", meta["model_version"], d, n, out_dir)
    return meta


def export_untrained(cfg: ModelSettings, out_dir: Path, texts: list[str], seed: int = 0) -> dict[str, Any]:
    """An artifact of the configured shapes with random weights (tokenizer trained on ``texts``):
    what speed benchmarks and pipeline tests need, where the weights do not matter. Deterministic
    for a seed."""
    from models.tokenizer import train_tokenizer
    from models.train import build_model

    torch.manual_seed(seed)
    tok = train_tokenizer(texts, cfg.vocab_size, cfg.max_tokens)
    return export(Trained(build_model(cfg, cfg.vocab_size).eval(), tok, cfg), out_dir)


def upgrade_user_tower(path: Path) -> bool:
    """Give an artifact whose user tower has N fixed the dynamic clicks axis, from the graph's own
    weights (the ONNX initializers carry the torch parameter names): same weights, same
    model_version. The new graph must agree with the old one on random windows before it replaces
    it. Returns False when there was nothing to do."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from models.artifact import ArtifactError, load_artifact
    from models.towers import UserTower

    art = load_artifact(path)
    if art.clicks_axis:
        return False
    meta = art.metadata
    cfg = meta["model_config"]
    user = UserTower(dim=cfg["dim"], hidden=cfg["hidden"], encoder=cfg["encoder"], heads=cfg["heads"],
                     layers=cfg["layers"], max_len=cfg["max_len"]).eval()
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
               for t in onnx.load(str(path / USER_FILE)).graph.initializer}
    try:
        user.load_state_dict({k: weights[k] for k in user.state_dict()}, strict=True)
    except (KeyError, RuntimeError) as e:
        raise ArtifactError(f"{path}: the user tower's weights cannot be read back ({e}); "
                            "export it again from its checkpoint") from None
    n, d = art.max_len, art.dim
    new = path / (USER_FILE + ".new")
    with torch.no_grad():
        vecs = torch.nn.functional.normalize(torch.randn(2, n, d), dim=-1)
        _export(user, (vecs, torch.ones(2, n, dtype=torch.bool)), new, ["item_vectors", "mask"],
                "user_embedding", clicks_axis=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    m = rng.random((64, n)) < 0.5
    m[:, -1] = True
    sess = ort.InferenceSession(str(new), providers=["CPUExecutionProvider"])
    gap = float(np.abs(sess.run(None, {"item_vectors": x, "mask": m})[0] - art.embed_users(x, m)).max())
    if gap > 1e-5:
        new.unlink()
        raise ArtifactError(f"{path}: the upgraded user tower differs from the old one by {gap:.2e}")
    new.replace(path / USER_FILE)
    meta["inputs"]["user_tower"] = user_tower_inputs(n, d)
    meta["files"][USER_FILE] = sha256_file(path / USER_FILE)
    meta["upgraded"] = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "what": "user tower: dynamic clicks axis", "max_abs_gap": gap}
    (path / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    log.info("upgraded %s (%s): user tower takes 1..%d clicks, gap %.1e", path, meta["model_version"], n, gap)
    return True
