"""Token-budget batching and collation: caps, coverage, determinism, padding, shifts."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_cli.core.specials import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from transformer_cli.data.batching import (
    Batch,
    collate,
    epoch_batches,
    eval_batches,
    eval_order,
    pack,
)
from transformer_cli.data.store import EncodedSplit

FIRST_REAL = max(PAD_ID, UNK_ID, BOS_ID, EOS_ID) + 1

lengths_st = st.lists(st.tuples(st.integers(1, 40), st.integers(0, 40)), min_size=1, max_size=200)
# training pairs: prepare drops a pair with an empty side
train_lengths_st = st.lists(
    st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=200
)


def make_split(pairs: list[tuple[int, int]], seed: int = 0) -> EncodedSplit:
    """Sentences of the given (source, target) lengths with random non-special ids."""
    g = torch.Generator().manual_seed(seed)

    def sent(n: int) -> list[int]:
        return torch.randint(FIRST_REAL, 50, (n,), generator=g).tolist()

    return EncodedSplit.from_lists([sent(s) for s, _ in pairs], [sent(t) for _, t in pairs])


def naive_pack(costs: list[int], budget: int, max_sentences: int = 0) -> list[int]:
    """The sequential greedy rule, one sentence at a time."""
    sizes: list[int] = []
    used = 0
    for c in costs:
        fits = sizes and used + c <= budget and (not max_sentences or sizes[-1] < max_sentences)
        if fits:
            sizes[-1] += 1
            used += c
        else:
            sizes.append(1)
            used = c
    return sizes


@given(
    costs=st.lists(st.integers(1, 30), max_size=300),
    budget=st.integers(1, 100),
    max_sentences=st.integers(0, 6),
    sort=st.booleans(),
)
def test_pack_is_the_sequential_greedy_rule(costs, budget, max_sentences, sort):
    costs = sorted(costs) if sort else costs
    assert pack(torch.tensor(costs, dtype=torch.int64), budget, max_sentences) == naive_pack(
        costs, budget, max_sentences
    )


@settings(max_examples=60, deadline=None)
@given(pairs=lengths_st, batch_tokens=st.integers(1, 120), seed=st.integers(0, 2**40))
def test_every_batch_respects_the_token_cap_and_covers_the_epoch_once(pairs, batch_tokens, seed):
    split = make_split(pairs)
    tgt_len = split.tgt_lengths
    batches = epoch_batches(split, batch_tokens, seed, epoch=3)
    for b in batches:
        assert b.dtype == torch.int64
        assert len(b) >= 1
        real = int((tgt_len[b] + 1).sum())
        assert real <= batch_tokens or len(b) == 1  # only a lone long sentence may exceed
    seen = torch.cat(batches).sort().values
    assert torch.equal(seen, torch.arange(len(pairs)))


@given(pairs=lengths_st, batch_tokens=st.integers(1, 120))
@settings(max_examples=30, deadline=None)
def test_batches_are_slices_of_the_length_sort(pairs, batch_tokens):
    """Ranges of the longer side's length never interleave: similar lengths share a batch."""
    split = make_split(pairs)
    longer = torch.maximum(split.src_lengths, split.tgt_lengths)
    ranges = sorted(
        (int(longer[b].min()), int(longer[b].max()))
        for b in epoch_batches(split, batch_tokens, seed=1, epoch=0)
    )
    for (_, hi), (lo, _) in zip(ranges, ranges[1:], strict=False):
        assert hi <= lo


@settings(max_examples=20, deadline=None)
@given(pairs=lengths_st, seed=st.integers(0, 2**40), epoch=st.integers(0, 1000))
def test_same_seed_and_epoch_give_the_same_batches(pairs, seed, epoch):
    split = make_split(pairs)
    a = epoch_batches(split, 64, seed, epoch)
    b = epoch_batches(split, 64, seed, epoch)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]


def test_epochs_and_seeds_differ_in_order_and_in_composition():
    split = make_split([(5 + i % 7, 3 + i % 5) for i in range(600)])  # many length ties

    def run(seed, epoch):
        return [tuple(b.tolist()) for b in epoch_batches(split, 60, seed, epoch)]

    base = run(1, 0)
    for other in (run(1, 1), run(2, 0)):
        assert other != base
        # the random tie-break changes which sentences share a batch, not just the order
        assert {frozenset(b) for b in other} != {frozenset(b) for b in base}


def test_global_rng_is_untouched():
    split = make_split([(3, 4)] * 50)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    epoch_batches(split, 16, seed=5, epoch=2)
    assert torch.equal(torch.rand(3), expected)


def check_batch(split: EncodedSplit, batch: Batch) -> None:
    b = len(batch.indices)
    assert batch.src.dtype == batch.tgt_in.dtype == batch.tgt_out.dtype == torch.int64
    assert batch.tgt_in.shape == batch.tgt_out.shape
    assert batch.src.shape[0] == b
    for row, i in enumerate(batch.indices.tolist()):
        x, y = split.src_ids(i).long(), split.tgt_ids(i).long()
        n, m = len(x), len(y)
        assert torch.equal(batch.src[row, :n], x)
        assert (batch.src[row, n:] == PAD_ID).all()
        assert torch.equal(batch.tgt_out[row, :m], y)
        assert batch.tgt_out[row, m] == EOS_ID
        assert (batch.tgt_out[row, m + 1 :] == PAD_ID).all()
        assert batch.tgt_in[row, 0] == BOS_ID
        # the decoder input is the output shifted right by one, on every real position
        assert torch.equal(batch.tgt_in[row, 1 : m + 1], batch.tgt_out[row, :m])
        assert (batch.tgt_in[row, m + 1 :] == PAD_ID).all()
    # padded only to this batch's own longest: some row fills each side completely
    assert (batch.src[:, -1] != PAD_ID).any()
    assert (batch.tgt_out[:, -1] != PAD_ID).any()
    assert batch.n_tokens == int((batch.tgt_out != PAD_ID).sum())


@settings(max_examples=40, deadline=None)
@given(pairs=lengths_st, seed=st.integers(0, 1000))
def test_collate_pads_to_the_batch_max_and_shifts_targets(pairs, seed):
    split = make_split(pairs, seed)
    for indices in epoch_batches(split, 50, seed, 0):
        check_batch(split, collate(split, indices))


def test_collate_accepts_a_list_and_moves_to_a_device():
    split = make_split([(2, 3), (4, 1), (1, 0)])
    batch = collate(split, [2, 0])
    assert batch.indices.tolist() == [2, 0]
    check_batch(split, batch)
    moved = batch.to("cpu")
    assert torch.equal(moved.src, batch.src)
    assert moved.n_tokens == batch.n_tokens == 3 + 1 + 1


@settings(max_examples=60, deadline=None)
@given(
    pairs=train_lengths_st,
    multiple=st.integers(1, 16),
    room=st.integers(0, 20),
    seed=st.integers(0, 1000),
)
def test_padding_to_a_multiple_never_passes_the_positions(pairs, multiple, room, seed):
    """Sentences within data.max_len, a model of max_positions >= data.max_len + 2 (the
    config's rule): S and T stay within the positions, each a multiple wherever one fits,
    and the real positions are those of the batch padded to its own longest."""
    split = make_split(pairs, seed)
    positions = max(max(s, t) for s, t in pairs) + 2 + room
    for indices in epoch_batches(split, 50, seed, 0):
        padded = collate(split, indices, multiple=multiple, positions=positions)
        plain = collate(split, indices)
        check_padding(padded, plain, multiple, positions)


def check_padding(padded: Batch, plain: Batch, multiple: int, positions: int) -> None:
    assert padded.n_tokens == plain.n_tokens
    for name in ("src", "tgt_in", "tgt_out"):
        wide, narrow = getattr(padded, name), getattr(plain, name)
        natural, width = narrow.size(1), wide.size(1)
        assert natural <= width <= positions, name
        if -(-natural // multiple) * multiple <= positions:  # a multiple fits: the first
            assert width % multiple == 0, name
            assert width < natural + multiple, name
        assert torch.equal(wide[:, :natural], narrow), name
        assert (wide[:, natural:] == PAD_ID).all(), name


def test_collate_truncates_long_sentences():
    split = make_split([(30, 25), (3, 2)])
    batch = collate(split, [0, 1], truncate=10)
    assert batch.src.shape == (2, 10)
    assert batch.tgt_out.shape == (2, 11)
    assert torch.equal(batch.src[0], split.src_ids(0)[:10].long())
    assert batch.tgt_out[0, 10] == EOS_ID


@settings(max_examples=30, deadline=None)
@given(pairs=lengths_st, budget=st.integers(1, 100), max_sentences=st.integers(0, 8))
def test_eval_batches_cover_once_longest_first_within_limits(pairs, budget, max_sentences):
    split = make_split(pairs)
    cost = torch.maximum(split.src_lengths, split.tgt_lengths) + 1
    batches = list(eval_batches(split, budget, max_sentences))
    assert [b.indices.tolist() for b in batches] == [
        o.tolist() for o in eval_order(split, budget, max_sentences)
    ]
    seen = torch.cat([b.indices for b in batches]).sort().values
    assert torch.equal(seen, torch.arange(len(pairs)))
    worst = [int(cost[b.indices].max()) for b in batches]
    assert worst == sorted(worst, reverse=True)
    for b in batches:
        check_batch(split, b)
        assert int(cost[b.indices].sum()) <= budget or len(b) == 1
        assert not max_sentences or len(b) <= max_sentences


def test_eval_results_can_be_put_back_in_corpus_order():
    pairs = [(1 + (7 * i) % 13, 1 + (5 * i) % 11) for i in range(40)]
    split = make_split(pairs)
    out = [None] * len(split)
    for b in eval_batches(split, 40):
        for row, i in enumerate(b.indices.tolist()):
            out[i] = b.src[row][b.src[row] != PAD_ID].tolist()
    assert out == [split.src_ids(i).tolist() for i in range(len(split))]
