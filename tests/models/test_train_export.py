"""Training, checkpoint, ONNX export, parity and the artifact loader's refusals, on the tiny
synthetic model of conftest.py."""

import json
import shutil

import numpy as np
import pytest
import torch

from models.artifact import ArtifactError, load_artifact
from models.data import last_n, leave_last_out
from models.evaluate import evaluate
from models.export import export
from models.tokenizer import encode
from models.train import item_vectors, load_checkpoint


def test_training_learns_something(trained, synth_ds):
    """Validation recall of the kept weights is well above popularity on the same split."""
    from models.baselines import Popularity

    sp = leave_last_out(synth_ds)
    pop = evaluate(Popularity(sp.train, synth_ds.n_items), sp.val_history, sp.val_target,
                   synth_ds.n_items)["recall@10"]
    assert trained.best_val == max(h["val_recall@10"] for h in trained.history)
    assert trained.best_val > 1.5 * pop
    assert trained.history[-1]["loss"] < trained.history[0]["loss"]


def test_checkpoint_rebuilds_the_same_model(trained):
    t2 = load_checkpoint(trained.settings.checkpoint_dir / "model.pt")
    assert t2.settings == trained.settings
    texts = ["Sava red cotton sundress", "new brand xyzzy"]
    np.testing.assert_array_equal(item_vectors(t2.model, t2.tokenizer, texts),
                                  item_vectors(trained.model, trained.tokenizer, texts))


def test_onnx_parity_random_and_real_inputs(trained, artifact_dir, synth_ds):
    art = load_artifact(artifact_dir, expect_dim=trained.settings.dim)
    model, tok = trained.model.eval(), trained.tokenizer
    # item tower: real catalogue texts and made-up ones
    texts = synth_ds.texts[:300] + ["scarlett drss", "", "🙂 " * 40]
    ids, mask = encode(tok, texts)
    with torch.no_grad():
        ref = model.item(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(art.embed_items(texts), ref, atol=1e-5, rtol=0)
    # user tower, real: the item vectors of real click histories
    items = art.embed_items(synth_ds.texts)
    hist_ids, hist_mask = last_n(synth_ds.sequences[:200], art.max_len)
    real = items[hist_ids]                                   # (B, N, d)
    # user tower, random: random unit vectors and random masks (at least one click a row)
    rng = np.random.default_rng(0)
    rnd = rng.normal(size=(64, art.max_len, art.dim)).astype(np.float32)
    rnd /= np.linalg.norm(rnd, axis=-1, keepdims=True)
    rnd_mask = rng.random((64, art.max_len)) < 0.5
    rnd_mask[:, -1] = True
    for x, m in ((real, hist_mask), (rnd, rnd_mask)):
        with torch.no_grad():
            ref = model.user(torch.from_numpy(x), torch.from_numpy(m)).numpy()
        out = art.embed_users(x, m)
        assert out.dtype == np.float32 and out.shape == (len(x), art.dim)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_embed_users_pads_short_histories_and_refuses_empty_rows(artifact_dir):
    art = load_artifact(artifact_dir)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, art.dim)).astype(np.float32)
    m = np.ones((2, 3), bool)
    padded = np.zeros((2, art.max_len, art.dim), np.float32)
    padded[:, -3:] = x
    pm = np.zeros((2, art.max_len), bool)
    pm[:, -3:] = True
    np.testing.assert_allclose(art.embed_users(x, m), art.embed_users(padded, pm), atol=1e-6)
    m[1] = False
    with pytest.raises(ValueError, match=r"rows \[1\] have no valid click"):
        art.embed_users(x, m)
    with pytest.raises(ValueError, match="item_vecs must be"):
        art.embed_users(x[..., :5], np.ones((2, 3), bool))


def test_user_tower_runs_on_the_columns_of_the_batchs_longest_window(artifact_dir):
    """The clicks axis is dynamic: a batch whose longest window has 3 clicks runs on 3 columns
    (whatever width it came in), with the result of the full N-column run."""
    art = load_artifact(artifact_dir)
    assert art.clicks_axis
    meta = json.loads((artifact_dir / "metadata.json").read_text())
    assert meta["inputs"]["user_tower"]["mask"] == ["batch", "clicks", "bool"]
    session = art.user_session
    widths: list[int] = []

    class Spy:
        def get_inputs(self):
            return session.get_inputs()

        def run(self, out, feed):
            widths.append(feed["mask"].shape[1])
            return session.run(out, feed)

    art.user_session = Spy()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, art.max_len, art.dim)).astype(np.float32)
    m = np.zeros((4, art.max_len), bool)
    m[:, -3:] = True
    m[0, -3:-1] = False                                      # rows of 1 and 3 clicks
    short = art.embed_users(x, m)
    assert widths == [3]
    full = session.run(None, {"item_vectors": x, "mask": m})[0]   # all N columns, as a fixed-N graph
    np.testing.assert_allclose(short, full, atol=1e-6, rtol=0)


def test_upgrade_gives_an_older_artifact_the_clicks_axis(trained, artifact_dir, tmp_path):
    """An artifact exported with N fixed (before the clicks axis) still loads and pads to N;
    `recs export --upgrade` rewrites its user tower from its own weights: same model_version,
    same outputs, the dynamic axis, and the files' hashes still check."""
    from models.artifact import sha256_file
    from models.export import USER_FILE, _export, upgrade_user_tower

    old = tmp_path / "old"
    shutil.copytree(artifact_dir, old)
    n, d = trained.settings.max_len, trained.settings.dim
    with torch.no_grad():
        _export(trained.model.user.eval(), (torch.randn(2, n, d), torch.ones(2, n, dtype=torch.bool)),
                old / USER_FILE, ["item_vectors", "mask"], "user_embedding", clicks_axis=False)
    meta = json.loads((old / "metadata.json").read_text())
    meta["files"][USER_FILE] = sha256_file(old / USER_FILE)
    (old / "metadata.json").write_text(json.dumps(meta))
    fixed = load_artifact(old)
    assert not fixed.clicks_axis
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 3, d)).astype(np.float32)
    m = np.ones((8, 3), bool)
    m[:4, 0] = False
    before = fixed.embed_users(x, m)

    assert upgrade_user_tower(old) is True
    up = load_artifact(old, expect_version=fixed.model_version)
    assert up.clicks_axis and up.metadata["upgraded"]["max_abs_gap"] <= 1e-5
    np.testing.assert_allclose(up.embed_users(x, m), before, atol=1e-5, rtol=0)
    assert upgrade_user_tower(old) is False                  # nothing left to do


def test_metadata_describes_the_artifact(artifact_dir, trained):
    meta = json.loads((artifact_dir / "metadata.json").read_text())
    art = load_artifact(artifact_dir)
    assert art.model_version == meta["model_version"] and art.model_version.startswith("tt-")
    assert (art.dim, art.max_len) == (trained.settings.dim, trained.settings.max_len)
    assert meta["data"]["items"] == trained.data["items"]
    assert set(meta["files"]) == {"item_tower.onnx", "user_tower.onnx", "tokenizer.json"}


def test_loader_refuses_wrong_dim_and_version(artifact_dir):
    with pytest.raises(ArtifactError, match=r"dim mismatch: artifact has dim=32, caller expects dim=128"):
        load_artifact(artifact_dir, expect_dim=128)
    with pytest.raises(ArtifactError, match=r"model_version mismatch: .* caller expects 'tt-other'"):
        load_artifact(artifact_dir, expect_version="tt-other")


def _copy(src, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(src, dst)
    return dst


def test_loader_refuses_damaged_or_inconsistent_folders(artifact_dir, tmp_path, trained):
    with pytest.raises(ArtifactError, match="no metadata.json"):
        load_artifact(tmp_path)
    bad = _copy(artifact_dir, tmp_path)
    meta = json.loads((bad / "metadata.json").read_text())
    # metadata claims another dimension than the graphs have (files untouched)
    (bad / "metadata.json").write_text(json.dumps(meta | {"dim": 64}))
    with pytest.raises(ArtifactError, match="metadata says"):
        load_artifact(bad)
    # a tower replaced by another export's file
    (bad / "metadata.json").write_text(json.dumps(meta))
    (bad / "user_tower.onnx").write_bytes((bad / "item_tower.onnx").read_bytes())
    with pytest.raises(ArtifactError, match="user_tower.onnx does not match its sha256"):
        load_artifact(bad)
    # another vocabulary
    shutil.copy(artifact_dir / "user_tower.onnx", bad / "user_tower.onnx")
    (bad / "metadata.json").write_text(json.dumps(meta | {"vocab_hash": "0" * 64}))
    with pytest.raises(ArtifactError, match="vocabulary hash differs"):
        load_artifact(bad)
    (bad / "metadata.json").write_text(json.dumps(meta | {"format_version": 99}))
    with pytest.raises(ArtifactError, match="format_version 99"):
        load_artifact(bad)


def test_export_is_reproducible(trained, artifact_dir, tmp_path):
    meta = export(trained, tmp_path / "again")
    assert meta["model_version"] == json.loads((artifact_dir / "metadata.json").read_text())[
        "model_version"]


class _BusyClock:
    """time.monotonic for models.train on a machine so busy that every epoch takes a minute."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 60.0
        return self.now


def _fingerprint(t) -> tuple:
    return (t.best_epoch, t.best_val, [(h["epoch"], h["loss"], h["val_recall@10"]) for h in t.history])


@pytest.mark.slow     # trains a model twice
def test_same_seed_same_model_on_a_busy_machine(synth_ds, tmp_path, monkeypatch, make_tiny_settings):
    """Two runs of one seed, one on a quiet machine and one where every epoch takes a minute:
    the same epochs, losses, validation and test metrics and weights (the shipped
    max_train_minutes is a safety, not the stop)."""
    import models.train as train_mod
    from conf import load_settings

    sp = leave_last_out(synth_ds)
    cfg = make_tiny_settings(tmp_path, max_epochs=8, patience=8,
                             max_train_minutes=load_settings().model.max_train_minutes)
    quiet = train_mod.train(synth_ds, sp, cfg, progress=False)
    monkeypatch.setattr(train_mod, "time", _BusyClock())
    busy = train_mod.train(synth_ds, sp, cfg, progress=False)
    assert len(busy.history) == cfg.max_epochs
    assert _fingerprint(busy) == _fingerprint(quiet)
    test = [evaluate(t.scorer(synth_ds), sp.test_history, sp.test_target, synth_ds.n_items)
            for t in (quiet, busy)]
    assert test[0] == test[1]
    for k, v in quiet.model.state_dict().items():
        assert torch.equal(v, busy.model.state_dict()[k]), k


@pytest.mark.slow     # trains a model
def test_training_past_the_safety_limit_fails_loudly(synth_ds, tmp_path, monkeypatch, make_tiny_settings):
    import models.train as train_mod

    cfg = make_tiny_settings(tmp_path, max_epochs=8, patience=8, max_train_minutes=3.0)
    monkeypatch.setattr(train_mod, "time", _BusyClock())
    with pytest.raises(train_mod.TrainingTimeout, match="3-minute safety limit at epoch 3 of up to 8"):
        train_mod.train(synth_ds, leave_last_out(synth_ds), cfg, progress=False)


def test_onnx_sessions_use_the_process_roles_thread_counts(artifact_dir):
    from conf import load_settings
    from conf.settings import RoleThreads

    role = RoleThreads(ort_intra_op=2, ort_inter_op=1, faiss_omp=1)
    art = load_artifact(artifact_dir, threads=role)
    for sess in (art.item_session, art.user_session):
        opts = sess.get_session_options()
        assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)
    # no role: one thread each, never ONNX Runtime's one-per-core default
    opts = load_artifact(artifact_dir).user_session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)
    # the shipped defaults do not oversubscribe 2 cores: a Flink slot or a service uses 1
    threads = load_settings().threads
    assert threads.flink_worker.ort_intra_op * load_settings().flink.taskmanager_slots <= 2
    assert threads.index_service.ort_intra_op == threads.index_service.faiss_omp == 1
