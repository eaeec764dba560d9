"""Character language models for next-token prediction over windows of token ids.

Both take int64 ``[batch, context]`` token ids and return logits ``[batch, vocab_size]`` for the
token after the window, which is what the text tasks of :mod:`fedfleet.data._text` label.
Neither has dropout or buffers, so training is deterministic for a seed and the same on every
trainer.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fedfleet.errors import ConfigError

__all__ = ["CausalTransformer", "CharLSTM", "TransformerBlock", "causal_transformer", "char_lstm"]


class CharLSTM(nn.Module):
    """Embedding -> stacked LSTM -> linear read-out of the last step's hidden state."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(tokens))
        return self.head(out[:, -1])


def char_lstm(vocab_size: int, embed: int = 8, hidden: int = 256, layers: int = 2) -> CharLSTM:
    """The character LSTM of LEAF's Shakespeare task and the FedAvg paper (McMahan et al.
    2017): an 8-dimensional embedding, two LSTM layers of 256 units and a linear layer to the
    vocabulary (824,425 parameters for the 97 tokens of :data:`fedfleet.data._text.VOCAB`)."""
    _positive(vocab_size=vocab_size, embed=embed, hidden=hidden, layers=layers)
    return CharLSTM(vocab_size, embed, hidden, layers)


class TransformerBlock(nn.Module):
    """One pre-norm block: ``h + proj(attention(qkv(norm1(h))))``, then ``h + fc2(gelu(fc1(
    norm2(h))))``, with causal attention through :func:`torch.nn.functional.
    scaled_dot_product_attention`.

    Every projection is its own ``nn.Linear`` (``qkv``, ``proj``, ``fc1``, ``fc2``), unlike
    ``nn.MultiheadAttention``, which reads its output projection's weight directly and so
    bypasses a LoRA adapter wrapped around it: here LoRA adapts attention and MLP alike.
    """

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)
        # nn.MultiheadAttention's initialisation (the layer this block replaces)
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        batch, length, width = h.shape
        q, k, v = (
            t.reshape(batch, length, self.heads, width // self.heads).transpose(1, 2)
            for t in self.qkv(self.norm1(h)).chunk(3, dim=-1)
        )
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return h + self.fc2(F.gelu(self.fc1(self.norm2(h))))


class CausalTransformer(nn.Module):
    """A decoder-only transformer: token and learned position embeddings, pre-norm
    :class:`TransformerBlock` s (position t sees positions <= t), a final LayerNorm and a linear
    head. :meth:`forward` reads out the last position; :meth:`sequence_logits` every position
    (for training on every next token, or generating)."""

    def __init__(self, vocab_size: int, context: int, d_model: int, layers: int, heads: int):
        super().__init__()
        self.context = context
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(context, d_model)
        self.blocks = nn.Sequential(*(TransformerBlock(d_model, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def sequence_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, length, vocab_size]``: position t predicts token t + 1."""
        length = tokens.shape[1]
        if length > self.context:
            raise ValueError(f"{length} tokens exceed the model's context of {self.context}")
        positions = torch.arange(length, device=tokens.device)
        h = self.blocks(self.embedding(tokens) + self.position(positions))
        return self.head(self.norm(h))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.sequence_logits(tokens)[:, -1]


def causal_transformer(
    vocab_size: int, context: int, d_model: int = 64, layers: int = 2, heads: int = 4
) -> CausalTransformer:
    """A small causal transformer built from its configuration (nothing is downloaded):
    ``layers`` pre-norm blocks of ``heads``-head self-attention and a ``4 * d_model`` GELU MLP,
    no dropout. With the defaults and a context of 80 on 97 tokens: 117,729 parameters."""
    _positive(vocab_size=vocab_size, context=context, d_model=d_model, layers=layers, heads=heads)
    if d_model % heads:
        raise ConfigError(
            f"transformer: d_model ({d_model}) must be divisible by heads ({heads}); each "
            f"head has d_model / heads dimensions"
        )
    return CausalTransformer(vocab_size, context, d_model, layers, heads)


def _positive(**sizes: int) -> None:
    bad = {k: v for k, v in sizes.items() if v < 1}
    if bad:
        raise ConfigError(f"model sizes must be >= 1, got {bad}")
