"""Text similarity of the item tower. Encoder: the BPE + mean-pool item tower of the tiny model
that conftest.py trains on synthetic clicks (recs.local.data.synth): its titles write a colour family
with synonyms (red / scarlet / crimson / ruby) and users stick to a colour family, so the tower
can only place "scarlet" near "red" by learning it from co-clicks; a text-overlap encoder cannot."""

import numpy as np

from models.train import item_vectors


def cos(v, a, b):
    return float(v[a] @ v[b])


def test_scarlet_dress_is_closer_to_red_dress_than_to_blue_jeans(trained):
    texts = ["scarlet dress", "red dress", "blue jeans", "blue dress"]
    v = item_vectors(trained.model, trained.tokenizer, texts)
    assert cos(v, 0, 1) > cos(v, 0, 2)
    # the harder half: same product word, only the colour differs -> learned synonymy
    assert cos(v, 0, 1) > cos(v, 0, 3)


def test_colour_synonyms_cluster(trained):
    """Average over product types: every synonym of red is closer to red than to blue."""
    from recs.local.data.synth import COLOURS

    products = ["dress", "sneakers", "handbag", "sofa", "t-shirt"]
    margins = []
    for syn in COLOURS["red"][1:]:
        for p in products:
            v = item_vectors(trained.model, trained.tokenizer, [f"{syn} {p}", f"red {p}", f"blue {p}"])
            margins.append(cos(v, 0, 1) - cos(v, 0, 2))
    assert np.mean(margins) > 0.05 and np.mean(np.array(margins) > 0) >= 0.8


def test_untrained_tower_does_not_know_synonyms(synth_ds, tmp_path, make_tiny_settings):
    """Control: the same architecture before training has no reason to rank red over blue."""
    import torch

    from models.tokenizer import train_tokenizer
    from models.train import build_model

    cfg = make_tiny_settings(tmp_path)
    tok = train_tokenizer(synth_ds.texts, cfg.vocab_size, cfg.max_tokens)
    margins = []
    for seed in range(6):
        torch.manual_seed(seed)
        model = build_model(cfg, tok.get_vocab_size()).eval()
        v = item_vectors(model, tok, ["scarlet dress", "red dress", "blue dress"])
        margins.append(cos(v, 0, 1) - cos(v, 0, 2))
    assert abs(np.mean(margins)) < 0.1
