"""What greedy and beam search call on a model, as a `typing.Protocol`.

B batch, S source len, T target len, D model dim, V target vocabulary

`model.transformer.Transformer` has all of it; so can a small hand-made model whose
next-token distributions are known, over which a search can be checked by hand
(tests/decoding/test_search.py). The slot stream needs more of the model (each layer's
cross-attention, `embed_target_at`) and takes a `Transformer`.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import Protocol

from torch import Tensor

from transformer_cli.core.config import ModelConfig
from transformer_cli.model.attention import LayerState
from transformer_cli.model.positions import Positions


class DecoderStack(Protocol):
    """The decoder's layers, run on embedded target tokens (`model.transformer.Decoder`)."""

    @property
    def layers(self) -> Sized:
        """One per layer: `KVCache` keeps a layer cache for each."""
        ...

    def __call__(
        self,
        x: Tensor,
        memory: Tensor | None,
        self_mask: Tensor | None,
        cross_mask: Tensor,
        caches: Sequence[LayerState] | None = None,
        positions: Positions | None = None,
        /,
    ) -> Tensor:
        """(B, T, D) embedded target -> (B, T, D) hidden states."""
        ...


class SearchModel(Protocol):
    """What `search.greedy_search` and `search.beam_search` call, with the cache or without."""

    @property
    def cfg(self) -> ModelConfig:
        """Its `max_positions` caps the output lengths."""
        ...

    @property
    def decoder(self) -> DecoderStack:
        """What the KV cache feeds one new token per sentence at a time."""
        ...

    def encode(self, src: Tensor) -> Tensor:
        """(B, S) source ids -> (B, S, D) memory."""
        ...

    def embed_target(self, tgt_in: Tensor, offset: int = 0) -> Tensor:
        """(B, T) decoder input ids at positions offset .. offset+T-1 -> (B, T, D)."""
        ...

    def decode_hidden(self, tgt_in: Tensor, memory: Tensor, src: Tensor) -> Tensor:
        """(B, T) decoder input ids -> (B, T, D) hidden states, over the whole prefix."""
        ...

    def logits(self, hidden: Tensor) -> Tensor:
        """(..., D) hidden states -> (..., V) unnormalised scores."""
        ...
