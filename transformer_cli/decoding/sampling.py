"""Sampling: each piece drawn from the model's distribution instead of searched for.

R live rows, V target vocabulary

At each step a row's next piece is drawn from softmax(logits / temperature), narrowed
first to the `topk` most probable pieces (0 = all of them), then to the fewest of those
whose probability, renormalised, reaches `topp` (Holtzman et al. 2020; 1 = all). PAD and
BOS are never drawn (`limits.never_emitted`, as for every search). Topk 1 is
greedy search, and a temperature near 0 tends to it.

The draw is by inverse transform: one uniform number u per row and step, and the piece
whose interval of the cumulative distribution holds u. Each sentence's numbers come from
its own generator, seeded by (seed, the sentence's number in the input, the sample's
number): a sentence's samples are the same whatever batch, slot or chunk it is decoded
in, up to the rounding of its logits. Greedy search and the slot stream run the steps
(`search.greedy_search`, `stream.greedy_stream`); this module only draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from transformer_cli.core import runtime
from transformer_cli.core.config import DecodeConfig
from transformer_cli.decoding.limits import never_emitted
from transformer_cli.fast.nucleus import nucleus_head


def exact_type(device: torch.device) -> torch.dtype:
    """float64 for the uniforms and the cumulative sums, where the device has it (MPS
    does not: float32 there)."""
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass(frozen=True)
class Sampler:
    """How each piece is drawn; `decode.sample`'s settings."""

    topk: int = 0  # 0 = every piece
    topp: float = 1.0  # 1 = no nucleus cut
    temperature: float = 1.0
    seed: int = 0

    @classmethod
    def of(cls, decode: DecodeConfig) -> Sampler:
        return cls(decode.topk, decode.topp, decode.temperature, decode.seed)

    def draws(self, keys: Sequence[tuple[int, int]], steps: int) -> Tensor:
        """Each (sentence, sample) key's first `steps` uniform numbers: (n, steps) float64.

        A key's numbers depend on (seed, key) alone, and the first m are the same for
        every `steps` >= m.
        """
        out = torch.empty(len(keys), steps, dtype=torch.float64)
        generator = torch.Generator()
        for row, (sentence, sample) in enumerate(keys):
            generator.manual_seed(runtime.hashed_seed("sample", self.seed, sentence, sample))
            torch.rand(steps, generator=generator, dtype=torch.float64, out=out[row])
        return out

    def allowed(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """The pieces each row may draw, and their probabilities: (R, V') ids and (R, V').

        Ids are in order of probability, most probable first (all V in vocabulary order
        when nothing is cut); a piece outside the top-k or top-p set has probability 0.
        Rows of `probs` need not sum to 1.
        """
        # a float32 copy (the caller's logits stay as they were)
        scores = never_emitted(logits.to(torch.float32, copy=True))  # (R, V)
        if self.temperature != 1.0:  # less the row maximum first, so that a small
            # temperature cannot overflow: the most probable piece that may be drawn stays
            # at 0, the rest fall towards -inf
            scores = (scores - scores.max(-1, keepdim=True).values) / self.temperature
        vocab = scores.size(-1)
        if self.topk == 0 and self.topp >= 1.0:  # the full softmax, no order needed
            ids = torch.arange(vocab, device=scores.device).expand_as(scores)
            return ids, scores.softmax(-1)
        if self.topk:
            top, ids = scores.topk(min(self.topk, vocab), dim=-1)  # (R, k), sorted
            probs = top.softmax(-1)  # renormalised over the top k
        elif scores.device.type == "cpu":  # the one switch: sorting all V is slow there
            ids, probs = nucleus_head(scores, self.topp)
        else:
            ids, probs = ordered_by_sorting(scores)
        if self.topp < 1.0:
            # keep a piece while the pieces more probable than it hold less than topp
            before = probs.cumsum(-1) - probs  # (R, V')
            probs = probs.masked_fill(before >= self.topp, 0.0)
        return ids, probs

    def pick(self, logits: Tensor, u: Tensor) -> Tensor:
        """Each row's drawn piece: (R, V) logits and (R,) uniforms in [0, 1) -> (R,) ids."""
        ids, probs = self.allowed(logits)
        cdf = probs.to(exact_type(probs.device)).cumsum(-1)  # (R, V')
        total = cdf[:, -1:]  # (R, 1)
        # strictly below the total (u * total can round up to it for u near 1), so that
        # the first entry above it is where the distribution steps up: a piece that may
        # be drawn, never one of probability 0
        target = torch.minimum(
            u.to(cdf)[:, None] * total, torch.nextafter(total, cdf.new_zeros(()))
        )
        return ids.gather(1, torch.searchsorted(cdf, target, right=True)).squeeze(1)


@dataclass(frozen=True)
class Draws:
    """A lockstep batch's uniforms: the rows' generators, drawn ahead for every step."""

    sampler: Sampler
    u: Tensor  # (B, steps) on the model's device

    def pick(self, logits: Tensor, rows: Tensor, step: int) -> Tensor:
        """The pieces of live `rows` (their numbers in the batch) at `step` (0 = first)."""
        return self.sampler.pick(logits, self.u[rows, step])


def ordered_by_sorting(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Every piece of each row in order of probability, and its probability: (R, V) ids and
    probabilities. The plain twin of `fast.nucleus.nucleus_head`."""
    top, ids = scores.sort(-1, descending=True)
    return ids, top.softmax(-1)
