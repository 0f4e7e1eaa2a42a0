"""Word alignments from cross-attention: `tfx translate --alignments`.

For each translation, one teacher-forced pass over the hypothesis the search returned
(greedy, beam or sampled) records the cross-attention of one decoder layer (default: the
second to last), averaged over its heads. Each target piece links to the source piece it
attends to most; pieces are then mapped to words, the whitespace-separated tokens of
the input line and of the output line, and the links are written in Pharaoh format,
`i-j` for source word i and target word j, 0-based, sorted, without repeats.

Mapping pieces to words is where alignments usually go wrong. A SentencePiece piece that
starts with U+2581 (the "lower one eighth block", SentencePiece's mark for a space)
starts a new word; any other piece continues the word before it; a piece that is only
the mark belongs to the word after it (or, at the end, to the last word). `piece_words`
is that rule, tested on hand-built cases and against SentencePiece's own decoding.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from transformer_cli.core import runtime
from transformer_cli.core.config import ResolvedPrecision
from transformer_cli.core.errors import ConfigError
from transformer_cli.core.specials import BOS_ID, PAD_ID, UNK
from transformer_cli.data.tokenizer import Tokenizer
from transformer_cli.model.attention import attend_math
from transformer_cli.model.transformer import DecoderLayer, Transformer

SPACE = "\u2581"
# what SentencePiece decodes <unk> to in an output line (its default unk_surface): a word
# of its own, spaces on both sides
UNK_SURFACE = f"{SPACE}\u2047{SPACE}"


def chosen_layer(layers: int, layer: int | None) -> int:
    """`--align-layer`, 0-based, negative from the end; None: the second to last (the
    last of a one-layer decoder). ConfigError naming the flag if out of range."""
    if layer is None:
        return max(layers - 2, 0)
    if not -layers <= layer < layers:
        raise ConfigError(
            f"--align-layer {layer}: the decoder has {layers} layers (0..{layers - 1}, "
            "or -1 for the last)"
        )
    return layer % layers


def piece_words(pieces: list[str]) -> list[int]:
    """The 0-based word each piece belongs to, words being what the pieces decode to,
    split at whitespace; -1 for every piece when they decode to no word at all.

    For an output line, pass `<unk>` as `UNK_SURFACE` (`output_words` does): decoding
    writes it as a word of its own. In an input line it stands for the characters it
    replaced, which belong to the word around them."""
    words, inside, out = -1, False, []
    for piece in pieces:
        first = None
        for ch in piece.replace(SPACE, " "):
            if ch.isspace():
                inside = False
                continue
            if not inside:
                words, inside = words + 1, True
            first = words if first is None else first
        out.append(words + 1 if first is None else first)  # a bare mark: the next word
    # bare marks at the end start no word (decoding strips them): the last word has them
    return [min(w, words) for w in out]


def output_words(pieces: list[str]) -> list[int]:
    """`piece_words` of a hypothesis, `<unk>` counted as the word it decodes to."""
    return piece_words([UNK_SURFACE if p == UNK else p for p in pieces])


def word_links(
    attention: Tensor, src_words: list[int], tgt_words: list[int]
) -> list[tuple[int, int]]:
    """(source word, target word) links: each target piece's most-attended source piece,
    both mapped to their words (a piece of no word, -1, links nothing).

    Args:
        attention: (T, S) one row per target piece (EOS's row left out), over the source
            pieces whose words are given (S = len(src_words)).
    """
    best = attention.argmax(dim=-1).tolist()  # (T,)
    pairs = {(src_words[s], tgt_words[t]) for t, s in enumerate(best)}
    return sorted((i, j) for i, j in pairs if i >= 0 and j >= 0)


def pharaoh(links: list[tuple[int, int]]) -> str:
    """Links as Pharaoh's `i-j i-j ...`."""
    return " ".join(f"{i}-{j}" for i, j in links)


@contextmanager
def recorded_cross_attention(model: Transformer, layer: int) -> Iterator[list[Tensor]]:
    """Within: decoder layer `layer`'s cross-attention probabilities (B, H, T, S) of each
    forward pass are appended to the list given (eq. 1 written out: the fused kernel never
    forms them; its output is replaced by the written-out one)."""
    seen: list[Tensor] = []
    block = typing.cast("DecoderLayer", model.decoder.layers[layer])

    def hook(_core: nn.Module, args: tuple, _fused: Tensor) -> Tensor:
        q, k, v, mask = args[:4]  # cross-attention has no relative-position terms
        # in float32: bf16 would round near-equal probabilities into ties
        with torch.autocast(q.device.type, enabled=False):
            out, probs = attend_math(q.float(), k.float(), v.float(), mask)
        seen.append(probs.detach())
        return out.to(q.dtype)

    handle = block.cross_attn.scaled_dot_product.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@dataclass(frozen=True)
class Aligner:
    """What `--alignments` needs: the model, its tokenizer, the decoder layer whose
    cross-attention is read, and how to run it (device, decode precision)."""

    model: Transformer
    tokenizer: Tokenizer
    layer: int
    device: torch.device
    precision: ResolvedPrecision
    batch: int  # sentences per teacher-forced pass (decode.batch_sentences)

    def links(self, sources: list[list[int]], hyps: list[list[int]], skip: int = 0) -> list[str]:
        """Pharaoh links for each (source ids, hypothesis ids) pair; "" for an empty one.

        `skip`: leading source pieces that are not words of the input (a corpus tag).
        """
        out: list[str] = []
        for start in range(0, len(sources), self.batch):
            part = slice(start, start + self.batch)
            out += self._links(sources[part], hyps[part], skip)
        return out

    @torch.no_grad()
    def _links(self, sources: list[list[int]], hyps: list[list[int]], skip: int) -> list[str]:
        """One teacher-forced pass over a batch, right-padded (pad keys get probability 0)."""
        pairs = enumerate(zip(sources, hyps, strict=True))
        keep = [i for i, (src, hyp) in pairs if len(src) > skip and hyp]
        if not keep:
            return [""] * len(sources)
        src = padded([sources[i] for i in keep], self.device)  # (B, S)
        # row t predicts piece t: BOS and all but the last piece (EOS's row is not read)
        tgt_in = padded([[BOS_ID, *hyps[i][:-1]] for i in keep], self.device)  # (B, T)
        recorded = recorded_cross_attention(self.model, self.layer)
        with runtime.autocast(self.device, self.precision), recorded as seen:
            self.model.decode_hidden(tgt_in, self.model.encode(src), src)
        attention = seen[0].mean(dim=1).cpu()  # (B, H, T, S) -> (B, T, S)
        out = [""] * len(sources)
        for row, i in enumerate(keep):
            src_words = piece_words(self.tokenizer.src_id_pieces(sources[i][skip:]))
            tgt_words = output_words(self.tokenizer.tgt_pieces(hyps[i]))
            # rows: the hypothesis's pieces; columns: its real source pieces, a tag's left out
            part = attention[row, : len(hyps[i]), skip : len(sources[i])]
            out[i] = pharaoh(word_links(part, src_words, tgt_words))
        return out


def padded(rows: list[list[int]], device: torch.device) -> Tensor:
    """Right-padded (B, max len) ids on `device`."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows], device=device)
