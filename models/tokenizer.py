"""Subword tokenizer for item text: byte-pair encoding trained on the catalogue (`tokenizers`).

    tok = train_tokenizer(texts, vocab_size=8000, max_tokens=32)
    ids, mask = encode(tok, ["Scarlet silk dress", "blue jeans"])   # (B, T) int64, (B, T) bool
    tok.save("tokenizer.json"); vocab_hash(tok)

Why BPE: a word never seen as a whole ("scarlett", a new brand) still splits into known pieces,
so a new or misspelled listing gets a vector from its text alone. Text is NFKC-normalized and
lower-cased; words and punctuation are split before merges. Token 0 is [PAD], 1 is [UNK]. The
padding and truncation settings are saved inside tokenizer.json, so the artifact's consumers encode
exactly as training did.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

PAD, UNK = "[PAD]", "[UNK]"


def train_tokenizer(texts: list[str], vocab_size: int, max_tokens: int) -> Tokenizer:
    """Train BPE on ``texts`` (deterministic for the same input); pad/truncate to ``max_tokens``."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.Digits(individual_digits=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=[PAD, UNK], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    configure(tok, max_tokens)
    return tok


def configure(tok: Tokenizer, max_tokens: int) -> Tokenizer:
    tok.enable_truncation(max_length=max_tokens)
    tok.enable_padding(pad_id=tok.token_to_id(PAD), pad_token=PAD, length=max_tokens)
    return tok


def load_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def encode(tok: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(B, T) token ids (int64) and (B, T) bool mask; an empty text keeps one [UNK] so that its
    mean-pooled vector is defined."""
    encs = tok.encode_batch(texts)
    ids = np.array([e.ids for e in encs], dtype=np.int64)           # (B, T)
    mask = np.array([e.attention_mask for e in encs], dtype=bool)   # (B, T)
    empty = ~mask.any(axis=1)
    if empty.any():
        ids[empty, 0] = tok.token_to_id(UNK)
        mask[empty, 0] = True
    return ids, mask


def vocab_hash(tok: Tokenizer) -> str:
    """sha256 of the vocabulary and merges (not of the JSON layout): equal hash, equal token ids."""
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    h = hashlib.sha256("\n".join(f"{t}\t{i}" for t, i in vocab).encode())
    h.update(tok.to_str().encode())  # merges + normalizer + padding/truncation settings
    return h.hexdigest()
