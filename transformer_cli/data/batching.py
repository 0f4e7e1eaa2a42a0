"""Length-bucketed token-budget batches, batch-max padding, and BOS/EOS-shifted targets.

A training epoch's batches are a pure function of (sentence lengths, batch_tokens, seed,
epoch): no global RNG, no state. Exact resume therefore rebuilds the epoch's list and
skips to batch k, and data-parallel training can shard it as `batches[rank::world]`.

Length caps: training trusts prepare's `data.max_len` filter (config_rules.py requires
`model.max_positions >= data.max_len + 2`, room for BOS/EOS), and `collate` given the
model's `positions` pads a batch (`multiple`) no further than them. Valid/test pairs are
not filtered, so `eval_batches` and `collate` take `truncate` to cut overlong sentences
to what the model's positions can hold.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from transformer_cli.core import runtime
from transformer_cli.core.specials import BOS_ID, EOS_ID, PAD_ID
from transformer_cli.data.store import EncodedSplit


@dataclass
class Batch:
    """One padded batch. B sentences, S source len, T target len (pieces + 1)."""

    src: torch.Tensor  # (B, S) int64, PAD_ID after each row's end
    tgt_in: torch.Tensor  # (B, T) int64: BOS y_1 .. y_n PAD..
    tgt_out: torch.Tensor  # (B, T) int64: y_1 .. y_n EOS PAD..
    n_tokens: int  # real target tokens (non-pad positions of tgt_out), counted on the host
    indices: torch.Tensor  # (B,) int64: the sentences' positions in their split (CPU)

    def __len__(self) -> int:
        return self.src.shape[0]

    def pinned(self) -> Batch:
        """The token tensors in page-locked memory, so that a copy to CUDA runs async."""
        src, tgt_in, tgt_out = (t.pin_memory() for t in (self.src, self.tgt_in, self.tgt_out))
        return Batch(src, tgt_in, tgt_out, self.n_tokens, self.indices)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """The token tensors on `device`; `indices` stay on the host for bookkeeping."""
        return Batch(
            self.src.to(device, non_blocking=non_blocking),
            self.tgt_in.to(device, non_blocking=non_blocking),
            self.tgt_out.to(device, non_blocking=non_blocking),
            self.n_tokens,
            self.indices,
        )


# ----------------------------------------------------------------------------- packing


def pack(costs: torch.Tensor, budget: int, max_sentences: int = 0) -> list[int]:
    """Sizes of consecutive batches from greedy packing of `costs`, in order.

    Exactly the sequential rule "add the next sentence if the batch stays within
    `budget` (and `max_sentences`, 0 = no limit), else start a new batch", so a sentence
    costing more than `budget` forms a batch by itself. The loop runs once per run of
    equal costs, not once per sentence, which after a length sort is a few hundred steps
    even for millions of sentences.
    """
    if budget < 1:
        raise ValueError(f"batch budget must be >= 1, got {budget}")
    if len(costs) and int(costs.min()) < 1:
        raise ValueError("every sentence must cost at least 1 token")
    values, counts = torch.unique_consecutive(costs, return_counts=True)
    most = max_sentences or len(costs) + 1
    sizes: list[int] = []
    room = 0  # budget left in the open batch (negative after an oversized sentence)
    seats = 0  # sentences the open batch may still take
    for cost, n in zip(values.tolist(), counts.tolist(), strict=True):
        if sizes:
            take = min(n, max(0, room) // cost, seats)
            sizes[-1] += take
            room -= take * cost
            seats -= take
            n -= take
        if n == 0:
            continue
        per = min(max(1, budget // cost), most)  # what a fresh batch holds at this cost
        full, rest = divmod(n, per)
        sizes.extend([per] * full)
        if rest:
            sizes.append(rest)
        last = rest or per
        room = budget - last * cost
        seats = most - last
    return sizes


def _generator(seed: int, epoch: int, purpose: str = "batches") -> torch.Generator:
    """A generator seeded from (seed, epoch) through a hash (`runtime.hashed_seed`)."""
    return torch.Generator().manual_seed(runtime.hashed_seed(purpose, seed, epoch))


def length_order(
    src_lengths: torch.Tensor, tgt_lengths: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Indices sorted by (longer side, target length), ties in random order (or by index).

    Sorting by the longer of the two sides keeps both sides of a batch close in length,
    so it pads fewer slots than sorting by target length alone, which ignores the source
    side (docs/performance.md, "Length-sorted batches").
    """
    n = len(tgt_lengths)
    src, tgt = src_lengths.long(), tgt_lengths.long()
    width = int(torch.maximum(src, tgt).max()) + 1 if n else 1
    key = torch.maximum(src, tgt) * width + tgt
    if generator is None:
        return torch.sort(key, stable=True).indices
    # Shuffle first, then sort stably: equal keys keep their shuffled relative order.
    perm = torch.randperm(n, generator=generator)
    return perm[torch.sort(key[perm], stable=True).indices]


def epoch_batches(
    split: EncodedSplit, batch_tokens: int, seed: int, epoch: int
) -> list[torch.Tensor]:
    """One epoch's training batches as int64 index tensors, in shuffled order.

    Each batch holds at most `batch_tokens` real target tokens (pieces + 1 for EOS, the
    positions the loss sees; padding is free), except a single longer sentence, which
    forms a batch alone. A split of weighted corpora first draws the epoch's pairs
    (`epoch_pairs`); a pair drawn twice appears in two batches.
    """
    chosen = epoch_pairs(split.weights, seed, epoch)
    if chosen is None:
        return batches_from_lengths(split.src_lengths, split.tgt_lengths, batch_tokens, seed, epoch)
    src, tgt = split.src_lengths[chosen], split.tgt_lengths[chosen]
    return [chosen[b] for b in batches_from_lengths(src, tgt, batch_tokens, seed, epoch)]


def epoch_pairs(weights: Sequence[tuple[int, float]], seed: int, epoch: int) -> torch.Tensor | None:
    """The pairs of one epoch of weighted corpora (`(pairs, weight)` each, in the split's
    order), as int64 indices; None when every corpus is read once (weights 1 or none).

    A corpus of weight w gives floor(w) passes over all its pairs, plus a new random
    round(frac(w) * pairs) of them each epoch, drawn without replacement: w passes in
    expectation, e.g. 0.5 = half of it, 2 = every pair twice. A pure function of
    (weights, seed, epoch), like the batches.
    """
    if all(w == 1 for _, w in weights):
        return None
    generator = _generator(seed, epoch, "corpora")
    parts, start = [], 0
    for n, weight in weights:
        whole, part = divmod(weight, 1.0)
        parts += [torch.arange(start, start + n)] * int(whole)
        drawn = round(part * n)
        if drawn:
            parts.append(start + torch.randperm(n, generator=generator)[:drawn])
        start += n
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def batches_from_lengths(
    src_lengths: torch.Tensor, tgt_lengths: torch.Tensor, batch_tokens: int, seed: int, epoch: int
) -> list[torch.Tensor]:
    """`epoch_batches` on bare length arrays (what it is a pure function of)."""
    if len(src_lengths) != len(tgt_lengths):
        raise ValueError(f"{len(src_lengths)} source vs {len(tgt_lengths)} target lengths")
    generator = _generator(seed, epoch)
    order = length_order(src_lengths, tgt_lengths, generator)
    sizes = pack(tgt_lengths.long()[order] + 1, batch_tokens)
    batches = torch.split(order, sizes)
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


# ----------------------------------------------------------------------------- collation


def _gather(
    flat: torch.Tensor,
    offsets: torch.Tensor,
    indices: torch.Tensor,
    truncate: int,
    multiple: int = 1,
    extra: int = 0,
    positions: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows flat[offsets[i]:offsets[i+1]] as a (B, W) int64 matrix padded with PAD_ID.

    W is the longest row, padded so that W + `extra` is `padded_width` of its own.
    """
    starts = offsets[indices]  # (B,)
    lengths = offsets[indices + 1] - starts  # (B,)
    if truncate:
        lengths = lengths.clamp(max=truncate)
    width = 0
    if len(indices):
        width = padded_width(int(lengths.max()) + extra, multiple, positions) - extra
    cols = torch.arange(width)  # (W,)
    real = cols < lengths[:, None]  # (B, W)
    # Padded slots point at position 0 (any valid one) and are overwritten with PAD_ID.
    where = torch.where(real, starts[:, None] + cols, 0)  # (B, W)
    return flat[where].long().masked_fill_(~real, PAD_ID), lengths


def padded_width(width: int, multiple: int, positions: int = 0) -> int:
    """`width` rounded up to a multiple of `multiple`, capped at `positions` (> 0).

    The cap never cuts: a `width` beyond `positions` is returned as it is.
    """
    rounded = -(-width // multiple) * multiple
    return max(width, min(rounded, positions)) if positions > 0 else rounded


def collate(
    split: EncodedSplit,
    indices: torch.Tensor | Sequence[int],
    truncate: int = 0,
    multiple: int = 1,
    positions: int = 0,
) -> Batch:
    """Pad the chosen sentences to this batch's own longest, with BOS/EOS-shifted targets.

    `truncate` > 0 keeps at most that many pieces per side (for unfiltered eval data).
    `multiple` > 1 pads S and T further, up to multiples of it (the shapes GPU kernels
    like); the extra slots are padding like any other, so no real position changes.
    `positions` > 0 (the model's max_positions) caps that padding: S and T are padded
    no further than it, so padding never takes a batch past the model's positions.
    """
    indices = torch.as_tensor(indices, dtype=torch.int64)
    src, _ = _gather(split.src, split.src_offsets, indices, truncate, multiple, 0, positions)
    # (B, T-1): T = the target pieces + 1 (BOS or EOS) is what must be a multiple
    y, tgt_len = _gather(
        split.tgt, split.tgt_offsets, indices, truncate, multiple, 1, positions
    )  # (B, T-1)
    b, t = y.shape[0], y.shape[1] + 1  # one column more than the longest target, for EOS
    tgt_out = torch.full((b, t), PAD_ID, dtype=torch.int64)
    tgt_out[:, :-1] = y
    tgt_out[torch.arange(b), tgt_len] = EOS_ID  # y_1 .. y_n EOS
    tgt_in = torch.full((b, t), PAD_ID, dtype=torch.int64)
    tgt_in[:, 0] = BOS_ID
    tgt_in[:, 1:] = y  # BOS y_1 .. y_n: the decoder input is the output shifted right
    return Batch(src, tgt_in, tgt_out, int(tgt_len.sum()) + b, indices)


# ----------------------------------------------------------------------------- evaluation


def eval_truncation(max_positions: int) -> int:
    """How many pieces per side a valid/test pair keeps, for a model of `max_positions`.

    Those pairs are not length-filtered: they are cut to what the positions hold, and
    the target side needs one position for BOS.
    """
    return max_positions - 1


def eval_batches(
    split: EncodedSplit, batch_tokens: int, max_sentences: int = 0, truncate: int = 0
) -> Iterator[Batch]:
    """Valid/test batches in a fixed, length-sorted order, the longest first.

    A sentence costs max(source, target) pieces + 1, so the budget bounds both sides
    (decoding cost follows the source, teacher-forced scoring the target). Longest first
    makes an out-of-memory batch show up at once rather than at the end. Each batch
    carries `indices`, so outputs can be put back in corpus order:
    `hyps[batch.indices[i]] = ...`.
    """
    for indices in eval_order(split, batch_tokens, max_sentences, truncate):
        yield collate(split, indices, truncate)


def eval_order(
    split: EncodedSplit, batch_tokens: int, max_sentences: int = 0, truncate: int = 0
) -> list[torch.Tensor]:
    """The index tensors `eval_batches` collates, in the order it yields them."""
    src_len, tgt_len = split.src_lengths, split.tgt_lengths
    if truncate:
        src_len, tgt_len = src_len.clamp(max=truncate), tgt_len.clamp(max=truncate)
    cost = torch.maximum(src_len, tgt_len) + 1
    order = length_order(src_len, cost, generator=None)  # by (cost, source length)
    sizes = pack(cost[order], batch_tokens, max_sentences)
    return list(torch.split(order, sizes))[::-1]
