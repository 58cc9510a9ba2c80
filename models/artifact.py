"""Load and check a model artifact folder (written by models/export.py); run both towers with ONNX
Runtime. This is what the Flink jobs, the Spark job and the index load; it needs no torch.

    art = load_artifact(Path("artifacts/model"), expect_dim=128, expect_version=None)
    v = art.embed_items(["Scarlet silk midi dress", "blue denim jeans"])     # (2, d) float32
    u = art.embed_users(item_vecs, mask)          # (B, N, d) float32, (B, N) bool -> (B, d)

Checks at load time, each failing with ArtifactError naming the mismatch: metadata.json present and
of a known format, every file present with the sha256 recorded at export, the tokenizer's
vocabulary hash equal to metadata's, each ONNX graph's input/output shapes equal to metadata's
dim / max_len / max_tokens, and the caller's expectations (expect_dim, expect_version).

Providers: CUDAExecutionProvider when onnxruntime offers it, else CPUExecutionProvider; the choice
is logged. Inputs are processed in batches of ``batch_size`` rows.

Threads: ``threads`` is the caller's process role from settings ([threads] flink_worker,
index_service or batch: intra-op and inter-op thread counts, sequential execution when inter-op
is 1). Without it, one thread each: ONNX Runtime's own default (one thread per core) would make
every worker and service on a machine compete for all of its cores.

embed_users contract: item_vecs are item-tower vectors of the same model_version, most recent click
last. A history shorter than N may be passed as (B, n, d) with n < N; longer ones keep their last N
columns. A row with no valid click is refused (cold-start users belong to the trending fallback,
not to a vector computed from nothing). Artifacts exported since the ``clicks`` axis exists run a
batch on the columns of its longest window (leading columns no row uses are dropped: they are
masked out, so the result is the same, bench/results/towers.json "user_tower_clicks"); older ones,
whose graph has N fixed, get the batch left-padded to N.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from models.tokenizer import configure, encode, load_tokenizer, vocab_hash

if TYPE_CHECKING:
    from conf.settings import ModelSettings, RoleThreads

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
REQUIRED = ("format_version", "model_version", "dim", "max_len", "max_tokens", "vocab_hash", "files")


class ArtifactError(RuntimeError):
    """The artifact folder is missing, damaged, or not the one the caller expects."""


def _providers() -> list[str]:
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (export writes it, the loader checks it)."""
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Artifact:
    path: Path
    metadata: dict[str, Any]
    item_session: ort.InferenceSession
    user_session: ort.InferenceSession
    tokenizer: Any
    batch_size: int = 1024

    @property
    def model_version(self) -> str:
        return str(self.metadata["model_version"])

    @property
    def dim(self) -> int:
        return int(self.metadata["dim"])

    @property
    def max_len(self) -> int:
        return int(self.metadata["max_len"])

    @cached_property
    def clicks_axis(self) -> bool:
        """True when the user tower takes any number of clicks up to N (axis 1 symbolic)."""
        return not isinstance(self.user_session.get_inputs()[0].shape[1], int)

    @property
    def providers(self) -> list[str]:
        return self.user_session.get_providers()

    def embed_items(self, texts: list[str]) -> np.ndarray:
        """Item text -> (B, d) float32, L2-normalized."""
        out = [np.zeros((0, self.dim), np.float32)]
        for lo in range(0, len(texts), self.batch_size):
            ids, mask = encode(self.tokenizer, list(texts[lo:lo + self.batch_size]))  # (b, T)
            out.append(self.item_session.run(None, {"token_ids": ids, "token_mask": mask})[0])
        return np.concatenate(out).astype(np.float32, copy=False)

    def embed_users(self, item_vecs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, n, d) float32 item vectors of the last clicks (most recent last), (B, n) bool
        -> (B, d) float32, L2-normalized."""
        item_vecs = np.asarray(item_vecs, dtype=np.float32)
        mask = np.asarray(mask, dtype=bool)
        if item_vecs.ndim != 3 or item_vecs.shape[2] != self.dim:
            raise ValueError(f"item_vecs must be (B, N, {self.dim}), got {item_vecs.shape}")
        if mask.shape != item_vecs.shape[:2]:
            raise ValueError(f"mask must be {item_vecs.shape[:2]}, got {mask.shape}")
        if len(mask) and not mask.any(axis=1).all():
            empty = np.flatnonzero(~mask.any(axis=1))[:5].tolist()
            raise ValueError(f"rows {empty} have no valid click; use the cold-start fallback")
        b, n, _ = item_vecs.shape
        if n > self.max_len:                                   # keep the most recent N
            item_vecs, mask = item_vecs[:, -self.max_len:], mask[:, -self.max_len:]
            n = self.max_len
        if self.clicks_axis:                                   # drop the columns no row uses
            first = int(mask.any(axis=0).argmax()) if len(mask) else 0
            item_vecs, mask = item_vecs[:, first:], mask[:, first:]
        elif n < self.max_len:                                 # a fixed-N graph: left-pad to N
            pad = self.max_len - n
            item_vecs = np.concatenate([np.zeros((b, pad, self.dim), np.float32), item_vecs], 1)
            mask = np.concatenate([np.zeros((b, pad), bool), mask], 1)
        out = [np.zeros((0, self.dim), np.float32)]
        for lo in range(0, b, self.batch_size):
            feed = {"item_vectors": np.ascontiguousarray(item_vecs[lo:lo + self.batch_size]),
                    "mask": np.ascontiguousarray(mask[lo:lo + self.batch_size])}
            out.append(self.user_session.run(None, feed)[0])
        return np.concatenate(out).astype(np.float32, copy=False)


def _check_io(sess: ort.InferenceSession, name: str, inputs: dict[str, list], out_dim: int,
              symbolic_ok: int | None = None) -> None:
    """Input shapes after the batch axis must equal ``inputs``; a symbolic axis (a name in the
    graph) stands for any size and is accepted where its size is ``symbolic_ok`` (the clicks axis)."""
    got = {i.name: list(i.shape[1:]) for i in sess.get_inputs()}
    for key, want in inputs.items():
        if key not in got:
            raise ArtifactError(f"{name}: input {key!r} missing (has {sorted(got)})")
        same = len(got[key]) == len(want) and all(
            g == w or (isinstance(g, str) and w == symbolic_ok) for g, w in zip(got[key], want, strict=True))
        if not same:
            raise ArtifactError(f"{name}: input {key!r} has shape [batch, {got[key]}], "
                                f"metadata says [batch, {want}]")
    # the output's last axis may be symbolic in the graph: run one row to see its real size
    feed = {i.name: np.zeros([1, *inputs[i.name]], dtype=np.float32 if "float" in i.type
                             else bool if "bool" in i.type else np.int64)
            for i in sess.get_inputs()}
    for i in sess.get_inputs():
        if "bool" in i.type:
            feed[i.name][..., -1] = True  # one valid token / click
    out = sess.run(None, feed)[0]
    if out.shape != (1, out_dim):
        raise ArtifactError(f"{name}: output shape {list(out.shape[1:])} for one row, "
                            f"metadata says dim={out_dim}")


def session_options(threads: RoleThreads | None) -> ort.SessionOptions:
    """ONNX Runtime options with the role's thread counts (1 and 1 without a role)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads.ort_intra_op if threads else 1
    opts.inter_op_num_threads = threads.ort_inter_op if threads else 1
    opts.execution_mode = (ort.ExecutionMode.ORT_SEQUENTIAL if opts.inter_op_num_threads == 1
                           else ort.ExecutionMode.ORT_PARALLEL)
    return opts


def load_configured(model: ModelSettings, threads: RoleThreads | None = None) -> Artifact:
    """The artifact settings name (``model.artifact_dir``), checked against ``model.dim`` and, in a
    version lane (conf/versions.py), ``model.version``."""
    return load_artifact(model.artifact_dir, expect_dim=model.dim, expect_version=model.version or None,
                         threads=threads)


def load_artifact(path: Path | str, *, expect_dim: int | None = None,
                  expect_version: str | None = None, batch_size: int = 1024,
                  threads: RoleThreads | None = None) -> Artifact:
    """Open and check an artifact folder; raise ArtifactError on any mismatch."""
    path = Path(path)
    meta_file = path / "metadata.json"
    if not meta_file.is_file():
        raise ArtifactError(f"{path}: no metadata.json (not a model artifact folder?)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{meta_file}: not valid JSON ({e})") from None
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ArtifactError(f"{meta_file}: missing keys {missing}")
    if meta["format_version"] != FORMAT_VERSION:
        raise ArtifactError(f"{meta_file}: format_version {meta['format_version']}, "
                            f"this loader reads {FORMAT_VERSION}")
    if expect_dim is not None and int(meta["dim"]) != expect_dim:
        raise ArtifactError(f"{path}: dim mismatch: artifact has dim={meta['dim']}, "
                            f"caller expects dim={expect_dim}")
    if expect_version is not None and meta["model_version"] != expect_version:
        raise ArtifactError(f"{path}: model_version mismatch: artifact is "
                            f"{meta['model_version']!r}, caller expects {expect_version!r}")
    for name, digest in meta["files"].items():
        f = path / name
        if not f.is_file():
            raise ArtifactError(f"{path}: file {name} listed in metadata is missing")
        if sha256_file(f) != digest:
            raise ArtifactError(f"{path}: {name} does not match its sha256 in metadata.json "
                                "(file replaced or damaged after export)")
    tok = configure(load_tokenizer(path / "tokenizer.json"), int(meta["max_tokens"]))
    if vocab_hash(tok) != meta["vocab_hash"]:
        raise ArtifactError(f"{path}: tokenizer vocabulary hash differs from metadata.json")

    providers = _providers()
    opts = session_options(threads)
    item = ort.InferenceSession(str(path / "item_tower.onnx"), opts, providers=providers)
    user = ort.InferenceSession(str(path / "user_tower.onnx"), opts, providers=providers)
    d, n, t = int(meta["dim"]), int(meta["max_len"]), int(meta["max_tokens"])
    _check_io(item, "item_tower.onnx", {"token_ids": [t], "token_mask": [t]}, d)
    _check_io(user, "user_tower.onnx", {"item_vectors": [n, d], "mask": [n]}, d, symbolic_ok=n)
    log.info("loaded model %s (d=%d, N=%d) from %s on %s", meta["model_version"], d, n, path,
             user.get_providers()[0])
    return Artifact(path, meta, item, user, tok, batch_size)
