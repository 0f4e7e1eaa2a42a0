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

from torch import Tensor, nn

from transformer_cli.core.config import ModelConfig

# fast path: a cheaper dropout mask on the CPU, equal in distribution to nn.Dropout
from transformer_cli.fast.dropout import Dropout
from transformer_cli.model.attention import CrossAttention, LayerState, SelfAttention
from transformer_cli.model.masks import decoder_mask, padding_mask
from transformer_cli.model.positions import (
    LearnedPositions,
    Positions,
    RelativePositions,
    Rotary,
    SinusoidalPositions,
)


def attention_positions(cfg: ModelConfig) -> Rotary | RelativePositions | None:
    """What one self-attention layer needs of `model.positional` (model/positions.py)."""
    head_dim = cfg.d_model // cfg.heads
    if cfg.positional == "rope":
        return Rotary(head_dim, cfg.max_positions)
    if cfg.positional == "relative":
        return RelativePositions(head_dim, cfg.max_relative_distance)
    return None


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
        self.self_attn = SelfAttention(
            cfg.d_model, cfg.heads, cfg.attention_dropout, cfg.attention, attention_positions(cfg)
        )
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.dropout = Dropout(cfg.dropout)
        self.pre_norm = cfg.norm == "pre"

    def forward(self, x: Tensor, mask: Tensor, positions: Positions | None = None) -> Tensor:
        """Encode one layer.

        Args:
            x: (B, S, D).
            mask: (B, 1, 1, S) bool source padding mask.
            positions: for `rope` and `relative` self-attention; None = 0 .. S-1.
        Returns:
            (B, S, D).
        """
        drop = self.dropout
        if self.pre_norm:
            x = x + drop(self.self_attn(self.norm1(x), mask, None, positions))
            return x + drop(self.ff(self.norm2(x)))
        x = self.norm1(x + drop(self.self_attn(x, mask, None, positions)))
        return self.norm2(x + drop(self.ff(x)))


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention, feed-forward; each with residual and norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, h, p, path = cfg.d_model, cfg.heads, cfg.attention_dropout, cfg.attention
        self.self_attn = SelfAttention(d, h, p, path, attention_positions(cfg))
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
        positions: Positions | None = None,
    ) -> Tensor:
        """Decode one layer.

        Args:
            x: (B, T, D).
            memory: (B, S, D) encoder output; None when the cache holds its keys and values.
            self_mask: bool, broadcastable to (B, 1, T, T + cached length); None = all.
            cross_mask: (B, 1, 1, S) bool source padding mask.
            cache: this layer's keys and values for incremental decoding.
            positions: of the new queries and all keys, for `rope` and `relative`
                self-attention; None = 0 .. T-1 (without a cache).
        Returns:
            (B, T, D).
        """
        drop = self.dropout
        if self.pre_norm:
            x = x + drop(self.self_attn(self.norm1(x), self_mask, cache, positions))
            x = x + drop(self.cross_attn(self.norm2(x), memory, cross_mask, cache))
            return x + drop(self.ff(self.norm3(x)))
        x = self.norm1(x + drop(self.self_attn(x, self_mask, cache, positions)))
        x = self.norm2(x + drop(self.cross_attn(x, memory, cross_mask, cache)))
        return self.norm3(x + drop(self.ff(x)))


class Encoder(nn.Module):
    """A stack of encoder layers (and a final LayerNorm in pre-norm mode)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else None

    def forward(self, x: Tensor, mask: Tensor, positions: Positions | None = None) -> Tensor:
        """(B, S, D) embedded source -> (B, S, D) memory; see EncoderLayer."""
        for layer in self.layers:
            x = layer(x, mask, positions)
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
        positions: Positions | None = None,
    ) -> Tensor:
        """(B, T, D) embedded target -> (B, T, D) hidden states; see DecoderLayer.

        `caches`: one per layer, for incremental decoding (decoding/kv_cache.py), which
        then gives the `positions` of the new tokens too.
        """
        for i, layer in enumerate(self.layers):
            cache = None if caches is None else caches[i]
            x = layer(x, memory, self_mask, cross_mask, cache, positions)
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
        # the table added to the input; None where self-attention takes positions instead
        self.src_pos: SinusoidalPositions | LearnedPositions | None = None
        self.tgt_pos: SinusoidalPositions | LearnedPositions | None = None
        if cfg.positional == "learned":
            self.src_pos = LearnedPositions(d, cfg.max_positions)
            self.tgt_pos = LearnedPositions(d, cfg.max_positions)
        elif cfg.positional == "sinusoidal":
            self.src_pos = self.tgt_pos = SinusoidalPositions(d, cfg.max_positions)
        self.embed_dropout = Dropout(cfg.dropout)
        # section 3.4: embeddings are multiplied by sqrt(d_model), so that the token, not
        # its position, makes up most of their sum (`model.embedding_init` sets the start)
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
        """Xavier-uniform matrices, zero biases, LayerNorm at identity; then the embeddings.

        The recipe of `torch.nn.Transformer` (fused Q/K/V projections initialised as
        one matrix), with biases zeroed as `torch.nn.MultiheadAttention` does.
        Shared parameters are listed once, so they are initialised once. With
        `model.embedding_init: normal`, the token embeddings (and a projection tied to
        them) are then drawn from N(0, d_model^-0.5), as fairseq does: N(0, 1) after the
        sqrt(d_model) scale, larger than the sinusoid's entries (std 0.71).
        """
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        if self.cfg.embedding_init == "normal":
            shared = self.tgt_embed is self.src_embed
            for embed in [self.src_embed] if shared else [self.src_embed, self.tgt_embed]:
                nn.init.normal_(embed.weight, std=self.cfg.d_model**-0.5)

    def _embed(self, ids: Tensor, embed: nn.Embedding, positions: Tensor | None) -> Tensor:
        """Scaled token embeddings plus positional encodings (if added), then dropout."""
        x = embed(ids) * self.embed_scale
        return self.embed_dropout(x if positions is None else x + positions)

    def _check_length(self, end: int) -> None:
        if end > self.cfg.max_positions:
            raise ValueError(
                f"sequence reaches position {end}, beyond model.max_positions "
                f"({self.cfg.max_positions})"
            )

    def embed_target(self, tgt_in: Tensor, offset: int = 0) -> Tensor:
        """Decoder input ids (B, T) at positions offset .. offset+T-1 -> (B, T, D)."""
        self._check_length(offset + tgt_in.size(1))
        table = None if self.tgt_pos is None else self.tgt_pos(tgt_in.size(1), offset)
        return self._embed(tgt_in, self.tgt_embed, table)

    def embed_target_at(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """One token per row, each at its own position: (N,), (N,) -> (N, D).

        The caller keeps `positions` below `model.max_positions`.
        """
        table = None if self.tgt_pos is None else self.tgt_pos.table[positions]
        return self._embed(tokens, self.tgt_embed, table)

    def encode(self, src: Tensor) -> Tensor:
        """Encode source ids.

        Args:
            src: (B, S) source ids, right-padded with PAD_ID.
        Returns:
            (B, S, D) memory; rows at pad positions are finite but meaningless.
        """
        self._check_length(src.size(1))
        table = None if self.src_pos is None else self.src_pos(src.size(1))
        x = self._embed(src, self.src_embed, table)  # (B,S,D) + (S,D)
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
