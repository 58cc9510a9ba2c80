"""The two towers (PyTorch). Both end in an L2-normalized vector of size d, so a dot product is a
cosine and the index can use inner-product search.

    item = ItemTower(vocab_size=8000, dim=128, hidden=256)
    v = item(token_ids, token_mask)              # (B, T), (B, T) -> (B, d)
    user = UserTower(dim=128, hidden=256, encoder="attention", heads=2, layers=1, max_len=50)
    u = user(item_vecs, mask)                    # (B, N, d), (B, N) -> (B, d)
    U = user.encode_all(item_vecs, mask)         # (B, N, d): the user vector after every prefix

Item tower: token embeddings -> masked mean pooling -> residual MLP -> L2 norm. Text only, so a
listing never seen in training gets a vector.

User tower: its input is the ITEM-TOWER VECTORS of the last N clicks (ARCHITECTURE.md, "user
tower input"), right-aligned (most recent at column N-1) with a bool mask; padding may sit anywhere,
the output is read at the last valid column. A click on a listing that appeared after training
still moves the user vector, because the listing's vector comes from its text.
  "mean":      causal masked mean of the click vectors -> residual MLP -> L2 norm (order-blind).
  "attention": input projection -> `layers` pre-norm blocks of causal multi-head self-attention
               with a learned per-head recency bias (ALiBi-style: score - slope_h * (t - j),
               relative, so it is the same for every prefix length) + feed-forward -> residual
               MLP -> L2 norm.
The causal form lets one forward pass produce the user vector after every prefix of a training
window (N next-click targets for the price of one sequence), exactly as inference computes it
for the last column. Written with plain ops so that ONNX export is exact.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


class ResidualMLP(nn.Module):
    """x + W2 gelu(W1 LN(x)), then a linear map to the output size."""

    def __init__(self, dim: int, hidden: int, out: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.out = nn.Linear(dim, out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.fc2(F.gelu(self.fc1(self.norm(x)))))
        return self.out(x)


class ItemTower(nn.Module):
    def __init__(self, vocab_size: int, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim, padding_idx=0)
        nn.init.normal_(self.tok.weight, std=0.1)
        self.mlp = ResidualMLP(dim, hidden, dim, dropout)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(torch.float32).unsqueeze(-1)                    # (B, T, 1)
        x = (self.tok(ids) * m).sum(1) / m.sum(1).clamp_min(1.0)   # (B, d) mean over tokens
        return l2norm(self.mlp(x))                                  # (B, d)


class RecencyAttention(nn.Module):
    """Causal multi-head self-attention with a learned recency bias per head."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        assert dim % heads == 0, "dim must be divisible by heads"
        self.heads, self.hd = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # slopes start at ALiBi's geometric series: head h forgets at rate 2^-(h+1) per click
        self.log_slope = nn.Parameter(torch.log(2.0 ** -torch.arange(1, heads + 1).float()))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)
        q = q.view(B, N, self.heads, self.hd).transpose(1, 2)        # (B, H, N, hd)
        k = k.view(B, N, self.heads, self.hd).transpose(1, 2)        # (B, H, N, hd)
        v = v.view(B, N, self.heads, self.hd).transpose(1, 2)        # (B, H, N, hd)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.hd)         # (B, H, N, N)
        pos = torch.arange(N, device=x.device)
        age = (pos.view(N, 1) - pos.view(1, N)).to(x.dtype)           # (N, N) t - j
        att = att - self.log_slope.exp().view(1, -1, 1, 1) * age     # older clicks count less
        allowed = (age >= 0) & (mask.unsqueeze(1) | (age == 0))      # (B, N, N) causal, valid
        att = att.masked_fill(~allowed.unsqueeze(1), -1e9)           # (B, H, N, N)
        att = self.drop(att.softmax(dim=-1))
        y = (att @ v).transpose(1, 2).reshape(B, N, D)               # (B, N, d)
        return self.proj(y)

    def forward_last(self, x: torch.Tensor, mask: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """Inference: only the query at column ``last`` (B,), i.e. forward(x, mask)[b, last[b]]
        without computing the other N - 1 queries. (B, N, d) -> (B, d)."""
        B, N, D = x.shape
        w_q, w_kv = self.qkv.weight.split([D, 2 * D])
        b_q, b_kv = self.qkv.bias.split([D, 2 * D])
        k, v = F.linear(x, w_kv, b_kv).split(D, dim=2)               # (B, N, d) each
        x_last = x.gather(1, last.view(B, 1, 1).expand(B, 1, D))     # (B, 1, d)
        q = F.linear(x_last, w_q, b_q).view(B, 1, self.heads, self.hd).transpose(1, 2)  # (B, H, 1, hd)
        k = k.view(B, N, self.heads, self.hd).transpose(1, 2)        # (B, H, N, hd)
        v = v.view(B, N, self.heads, self.hd).transpose(1, 2)        # (B, H, N, hd)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.hd)         # (B, H, 1, N)
        pos = torch.arange(N, device=x.device).view(1, N)
        age = (last.view(B, 1) - pos).to(x.dtype)                     # (B, N) last - j
        att = att - self.log_slope.exp().view(1, -1, 1, 1) * age.view(B, 1, 1, N)
        allowed = (age >= 0) & (mask | (age == 0))                    # (B, N)
        att = att.masked_fill(~allowed.view(B, 1, 1, N), -1e9).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, D)                  # (B, d)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = RecencyAttention(dim, heads, dropout)
        self.ff = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask))
        return x + self.drop(self.ff(self.ln2(x)))

    def forward_last(self, x: torch.Tensor, mask: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """forward(x, mask)[b, last[b]] for inference: (B, N, d) -> (B, d)."""
        B, _, D = x.shape
        x_last = x.gather(1, last.view(B, 1, 1).expand(B, 1, D)).squeeze(1)  # (B, d)
        y = x_last + self.attn.forward_last(self.ln1(x), mask, last)          # (B, d)
        return y + self.ff(self.ln2(y))


class UserTower(nn.Module):
    def __init__(self, dim: int, hidden: int, encoder: Literal["mean", "attention"],
                 heads: int = 2, layers: int = 1, max_len: int = 50, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder, self.max_len = encoder, max_len
        # mean: a linear map after pooling; attention: the item vectors enter the blocks as they
        # are (a projection there would cost a (B, N, d) x (d, d) product per request)
        self.inp = nn.Linear(dim, dim) if encoder == "mean" else nn.Identity()
        self.blocks = nn.ModuleList(
            [Block(dim, heads, hidden, dropout) for _ in range(layers)] if encoder == "attention"
            else [])
        self.mlp = ResidualMLP(dim, hidden, dim, dropout)

    def encode_all(self, item_vecs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, N, d), (B, N) bool -> (B, N, d): the user vector after each prefix 1..t."""
        m = mask.to(item_vecs.dtype).unsqueeze(-1)                          # (B, N, 1)
        if self.encoder == "mean":
            h = (item_vecs * m).cumsum(1) / m.cumsum(1).clamp_min(1.0)      # (B, N, d)
            h = self.inp(h)
        else:
            h = self.inp(item_vecs) * m                                      # (B, N, d)
            for block in self.blocks:
                h = block(h, mask)                                           # (B, N, d)
        return l2norm(self.mlp(h))                                           # (B, N, d)

    def forward(self, item_vecs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, N, d), (B, N) bool -> (B, d): the user vector after the last valid click, i.e.
        encode_all(...)[b, last valid column], computed for that column only (inference path)."""
        B, N, D = item_vecs.shape
        pos = torch.arange(N, device=item_vecs.device).unsqueeze(0)          # (1, N)
        last = (pos * mask.to(pos.dtype)).amax(dim=1)                        # (B,)
        m = mask.to(item_vecs.dtype).unsqueeze(-1)                          # (B, N, 1)
        if self.encoder == "mean":
            h = (item_vecs * m).sum(1) / m.sum(1).clamp_min(1.0)            # (B, d)
            return l2norm(self.mlp(self.inp(h)))                             # (B, d)
        h = self.inp(item_vecs) * m                                          # (B, N, d)
        for block in self.blocks[:-1]:
            h = block(h, mask)                                               # (B, N, d)
        final: Any = self.blocks[-1]  # a block of ModuleList; typed Any for forward_last
        h = final.forward_last(h, mask, last)                                # (B, d)
        return l2norm(self.mlp(h))                                           # (B, d)


class TwoTower(nn.Module):
    """Both towers and the config that built them (stored in every checkpoint)."""

    def __init__(self, vocab_size: int, dim: int, hidden: int, encoder: Literal["mean", "attention"],
                 heads: int, layers: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.config = dict(vocab_size=vocab_size, dim=dim, hidden=hidden, encoder=encoder,
                           heads=heads, layers=layers, max_len=max_len, dropout=dropout)
        self.item = ItemTower(vocab_size, dim, hidden, dropout)
        self.user = UserTower(dim, hidden, encoder, heads, layers, max_len, dropout)
