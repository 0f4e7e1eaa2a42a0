"""The Transformer of Vaswani et al. 2017, "Attention Is All You Need", for translation.

B batch, S source len, T target len, H heads, K head dim (D / H), D model dim, V vocab

A pure `nn.Module` built from one `ModelConfig`: no file access, no printing. Masks
are derived from token ids inside (`masks.py`), so callers pass ids only:

    model = Transformer(cfg)
    logits = model(src, tgt_in)                   # (B, T, V)
    memory = model.encode(src)                    # (B, S, D)
    hidden = model.decode_hidden(tgt_in, memory, src)
    logits = model.logits(hidden[real])           # project only the positions you need

Incremental decoding (greedy and beam search) passes each decoder layer a cache of its
keys and values (`attention.LayerState`); the caches, and decoding with them, live in
`decoding/kv_cache.py` and `decoding/slots.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from transformer_cli.core.config import ModelConfig

# fast path: a cheaper dropout mask on the CPU, equal in distribution to nn.Dropout
from transformer_cli.fast.dropout import Dropout
from transformer_cli.model.attention import CrossAttention, LayerState, SelfAttention
from transformer_cli.model.masks import decoder_mask, padding_mask


def sinusoidal_table(positions: int, d_model: int) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...) (section 3.5).

    Each pair of dimensions is a rotation at its own frequency, so PE(pos + k) is a
    fixed linear function of PE(pos): the model can attend by relative position.

    Returns:
        (positions, d_model) float32, computed in float64.
    """
    pos = torch.arange(positions, dtype=torch.float64)[:, None]  # (P, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(D/2),)
    angle = pos / 10000.0 ** (two_i / d_model)  # (P, 1) / (ceil(D/2),) -> (P, ceil(D/2))
    table = torch.empty(positions, d_model, dtype=torch.float64)
    table[:, 0::2] = angle.sin()
    table[:, 1::2] = angle[:, : d_model // 2].cos()
    return table.float()


class SinusoidalPositions(nn.Module):
    """The fixed positional encoding, precomputed once for `max_positions` positions."""

    table: Tensor  # (max_positions, D), a buffer

    def __init__(self, d_model: int, max_positions: int) -> None:
        super().__init__()
        # not persistent: it is a function of the config, so checkpoints need not carry it
        self.register_buffer("table", sinusoidal_table(max_positions, d_model), persistent=False)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Encodings of positions offset .. offset+length-1: (length, D)."""
        return self.table[offset : offset + length]


class LearnedPositions(nn.Module):
    """A learned embedding per position (the paper's alternative, section 3.5)."""

    def __init__(self, d_model: int, max_positions: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.empty(max_positions, d_model))

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Embeddings of positions offset .. offset+length-1: (length, D)."""
        return self.table[offset : offset + length]


class FeedForward(nn.Sequential):
    """FFN(x) = max(0, x W1 + b1) W2 + b2 (eq. 2), with dropout on the hidden layer."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(d_model, d_ff), nn.ReLU(), Dropout(dropout), nn.Linear(d_ff, d_model)
        )


class EncoderLayer(nn.Module):
    """Self-attention, then feed-forward; each wrapped in a residual and LayerNorm.

    Post-norm, LayerNorm(x + Dropout(Sublayer(x))), is the paper's (section 3.1 and
    5.4); pre-norm, x + Dropout(Sublayer(LayerNorm(x))), trains more stably in deep
    stacks and needs a final LayerNorm on the stack.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = SelfAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, cfg.attention)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.dropout = Dropout(cfg.dropout)
        self.pre_norm = cfg.norm == "pre"

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Encode one layer.

        Args:
            x: (B, S, D).
            mask: (B, 1, 1, S) bool source padding mask.
        Returns:
            (B, S, D).
        """
        drop = self.dropout
        if self.pre_norm:
            x = x + drop(self.self_attn(self.norm1(x), mask))
            return x + drop(self.ff(self.norm2(x)))
        x = self.norm1(x + drop(self.self_attn(x, mask)))
        return self.norm2(x + drop(self.ff(x)))


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention, feed-forward; each with residual and norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, h, p, path = cfg.d_model, cfg.heads, cfg.attention_dropout, cfg.attention
        self.self_attn = SelfAttention(d, h, p, path)
        self.cross_attn = CrossAttention(d, h, p, path)
        self.ff = FeedForward(d, cfg.d_ff, cfg.dropout)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.dropout = Dropout(cfg.dropout)
        self.pre_norm = cfg.norm == "pre"

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        self_mask: Tensor | None,
        cross_mask: Tensor,
        cache: LayerState | None = None,
    ) -> Tensor:
        """Decode one layer.

        Args:
            x: (B, T, D).
            memory: (B, S, D) encoder output; None when the cache holds its keys and values.
            self_mask: bool, broadcastable to (B, 1, T, T + cached length); None = all.
            cross_mask: (B, 1, 1, S) bool source padding mask.
            cache: this layer's keys and values for incremental decoding.
        Returns:
            (B, T, D).
        """
        drop = self.dropout
        if self.pre_norm:
            x = x + drop(self.self_attn(self.norm1(x), self_mask, cache))
            x = x + drop(self.cross_attn(self.norm2(x), memory, cross_mask, cache))
            return x + drop(self.ff(self.norm3(x)))
        x = self.norm1(x + drop(self.self_attn(x, self_mask, cache)))
        x = self.norm2(x + drop(self.cross_attn(x, memory, cross_mask, cache)))
        return self.norm3(x + drop(self.ff(x)))


class Encoder(nn.Module):
    """A stack of encoder layers (and a final LayerNorm in pre-norm mode)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else None

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """(B, S, D) embedded source -> (B, S, D) memory."""
        for layer in self.layers:
            x = layer(x, mask)
        return x if self.norm is None else self.norm(x)


class Decoder(nn.Module):
    """A stack of decoder layers (and a final LayerNorm in pre-norm mode)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        self.norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else None

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        self_mask: Tensor | None,
        cross_mask: Tensor,
        caches: Sequence[LayerState] | None = None,
    ) -> Tensor:
        """(B, T, D) embedded target -> (B, T, D) hidden states; see DecoderLayer.

        `caches`: one per layer, for incremental decoding (decoding/kv_cache.py).
        """
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, self_mask, cross_mask, None if caches is None else caches[i])
        return x if self.norm is None else self.norm(x)


class Transformer(nn.Module):
    """The encoder-decoder Transformer; `ModelConfig` is its only input."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.src_vocab <= 0 or cfg.tgt_vocab <= 0:
            raise ValueError(
                f"model.src_vocab and model.tgt_vocab must be > 0 (got {cfg.src_vocab}, "
                f"{cfg.tgt_vocab}); they come from the tokenizer"
            )
        if cfg.share_embeddings and cfg.src_vocab != cfg.tgt_vocab:
            raise ValueError(
                f"model.share_embeddings needs one joint vocabulary, but src_vocab is "
                f"{cfg.src_vocab} and tgt_vocab is {cfg.tgt_vocab}"
            )
        self.cfg = cfg
        d = cfg.d_model
        self.src_embed = nn.Embedding(cfg.src_vocab, d)
        self.tgt_embed = self.src_embed if cfg.share_embeddings else nn.Embedding(cfg.tgt_vocab, d)
        self.src_pos: SinusoidalPositions | LearnedPositions
        self.tgt_pos: SinusoidalPositions | LearnedPositions
        if cfg.positional == "learned":
            self.src_pos = LearnedPositions(d, cfg.max_positions)
            self.tgt_pos = LearnedPositions(d, cfg.max_positions)
        else:
            self.src_pos = self.tgt_pos = SinusoidalPositions(d, cfg.max_positions)
        self.embed_dropout = Dropout(cfg.dropout)
        # section 3.4: embeddings are multiplied by sqrt(d_model), which brings them to
        # the scale of the positional encodings they are added to
        self.embed_scale = math.sqrt(d)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.out_proj = nn.Linear(d, cfg.tgt_vocab, bias=False)
        if cfg.tie_output:
            # section 3.4: one matrix for the decoder's input embedding and pre-softmax
            # projection; a token's input and output meaning are learned together
            self.out_proj.weight = self.tgt_embed.weight
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Xavier-uniform matrices, zero biases, LayerNorm at identity.

        The recipe of `torch.nn.Transformer` (fused Q/K/V projections initialised as
        one matrix), with biases zeroed as `torch.nn.MultiheadAttention` does.
        Shared parameters are listed once, so they are initialised once.
        """
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def _embed(self, ids: Tensor, embed: nn.Embedding, positions: Tensor) -> Tensor:
        """Scaled token embeddings plus positional encodings, then dropout."""
        return self.embed_dropout(embed(ids) * self.embed_scale + positions)

    def _check_length(self, end: int) -> None:
        if end > self.cfg.max_positions:
            raise ValueError(
                f"sequence reaches position {end}, beyond model.max_positions "
                f"({self.cfg.max_positions})"
            )

    def embed_target(self, tgt_in: Tensor, offset: int = 0) -> Tensor:
        """Decoder input ids (B, T) at positions offset .. offset+T-1 -> (B, T, D)."""
        self._check_length(offset + tgt_in.size(1))
        return self._embed(tgt_in, self.tgt_embed, self.tgt_pos(tgt_in.size(1), offset))

    def embed_target_at(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """One token per row, each at its own position: (N,), (N,) -> (N, D).

        The caller keeps `positions` below `model.max_positions`.
        """
        return self._embed(tokens, self.tgt_embed, self.tgt_pos.table[positions])

    def encode(self, src: Tensor) -> Tensor:
        """Encode source ids.

        Args:
            src: (B, S) source ids, right-padded with PAD_ID.
        Returns:
            (B, S, D) memory; rows at pad positions are finite but meaningless.
        """
        self._check_length(src.size(1))
        x = self._embed(src, self.src_embed, self.src_pos(src.size(1)))  # (B,S,D) + (S,D)
        return self.encoder(x, padding_mask(src))

    def decode_hidden(self, tgt_in: Tensor, memory: Tensor, src: Tensor) -> Tensor:
        """The decoder's final hidden states, before the output projection.

        Args:
            tgt_in: (B, T) decoder input ids (BOS + target, right-padded).
            memory: (B, S, D), the output of `encode(src)`.
            src: (B, S) source ids, for the source padding mask.
        Returns:
            (B, T, D).
        """
        x = self.embed_target(tgt_in)
        return self.decoder(x, memory, decoder_mask(tgt_in), padding_mask(src))

    def logits(self, hidden: Tensor) -> Tensor:
        """The output projection: (..., D) -> (..., V) unnormalised scores."""
        return self.out_proj(hidden)

    def decode(self, tgt_in: Tensor, memory: Tensor, src: Tensor) -> Tensor:
        """`logits(decode_hidden(...))`: (B, T, V)."""
        return self.logits(self.decode_hidden(tgt_in, memory, src))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits.

        Args:
            src: (B, S) source ids; tgt_in: (B, T) decoder input ids (BOS + target).
        Returns:
            (B, T, V) logits for the next token at each target position.
        """
        return self.decode(tgt_in, self.encode(src), src)
