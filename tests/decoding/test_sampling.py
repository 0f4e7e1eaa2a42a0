"""Sampling: its limits (greedy at topk 1 and temperature -> 0), its distribution (a
chi-square test on a model whose distribution is known), the sets it draws from, and its
reproducibility whatever the batching."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import FIRST_REAL, BigramModel, pad, random_sources, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_cli.core.config import DecodeConfig
from transformer_cli.core.specials import BOS_ID, EOS_ID, PAD_ID
from transformer_cli.decoding.runner import decode_all
from transformer_cli.decoding.sampling import Draws, Sampler, ordered_by_sorting
from transformer_cli.decoding.scoring import score_pairs
from transformer_cli.decoding.search import greedy_search
from transformer_cli.fast.nucleus import FIRST_WINDOW, nucleus_head

SAMPLE = DecodeConfig(sample=True, batch_sentences=5)
A, B, C = FIRST_REAL, FIRST_REAL + 1, FIRST_REAL + 2


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def sources() -> list[list[int]]:
    return random_sources(17)


def sample(model, sources, nbest=1, first=0, **options):
    return decode_all(
        model, sources, dataclasses.replace(SAMPLE, **options), "cpu", "fp32", nbest, first
    )


# ----------------------------------------------------------------------------- limits


@pytest.mark.parametrize("batch_sentences", [5, 64])  # the slot stream, and one lockstep batch
def test_topk_one_is_greedy(model, sources, batch_sentences):
    greedy = decode_all(model, sources, DecodeConfig(), "cpu")
    assert sample(model, sources, topk=1, batch_sentences=batch_sentences) == greedy
    assert sample(model, sources, topk=1, seed=9, batch_sentences=batch_sentences) == greedy


def test_a_tiny_temperature_neither_overflows_nor_draws_what_it_must_not():
    logits = torch.tensor([[50.0, 0.0, 60.0, 40.0, 39.0, -10.0]])  # PAD and BOS on top
    for temperature in (1e-30, 1e-38):  # far below config's floor, as a Sampler may be made
        for u in (0.0, 0.5, 1.0 - 2**-53):
            picked = Sampler(temperature=temperature).pick(logits, torch.tensor([u]))
            assert picked.tolist() == [3]


def test_temperature_towards_zero_tends_to_greedy(model, sources):
    greedy = decode_all(model, sources, DecodeConfig(), "cpu")

    def agreeing(temperature: float) -> int:
        outputs = sample(model, sources * 4, temperature=temperature)
        return sum(out == greedy[i % len(sources)] for i, out in enumerate(outputs))

    hot, cool, frozen = (agreeing(t) for t in (3.0, 0.3, 1e-6))
    assert hot < cool < frozen == 4 * len(sources)  # colder, closer to greedy


# ----------------------------------------------------------------------------- distribution

# the 99.9% quantiles of the chi-square distribution (a table's values, not a run's): a
# correct sampler fails the test with probability 0.001, for the one seed it runs with
CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266}
FIRST_STEP = {EOS_ID: 0.15, A: 0.5, B: 0.3, C: 0.05}  # no ties: top-k's order is exact
KNOWN = BigramModel({BOS_ID: FIRST_STEP, A: {EOS_ID: 1.0}, B: {EOS_ID: 1.0}, C: {EOS_ID: 1.0}})


def first_pieces(sampler: Sampler, n: int) -> list[int]:
    """The first piece of n samples from KNOWN (an empty output: EOS)."""
    src = torch.full((n, 1), A)
    draws = Draws(sampler, sampler.draws([(i, 0) for i in range(n)], 1))
    return [out[0] if out else EOS_ID for out in greedy_search(KNOWN, src, 1, draws=draws)]


def chi_square(pieces: list[int], expected: dict[int, float]) -> float:
    assert set(pieces) <= set(expected)  # nothing outside the support, which is exact
    n = len(pieces)
    return sum((pieces.count(k) - n * p) ** 2 / (n * p) for k, p in expected.items())


@pytest.mark.parametrize(
    ("sampler", "expected"),
    [
        (Sampler(topk=0, topp=1.0), FIRST_STEP),  # the full softmax
        (Sampler(topk=2), {A: 0.5 / 0.8, B: 0.3 / 0.8}),  # the top 2, renormalised
        (Sampler(topp=0.85), {A: 0.5, B: 0.3, EOS_ID: 0.15}),  # 0.8 < 0.85 <= 0.95
        (Sampler(temperature=2.0), {k: math.sqrt(p) for k, p in FIRST_STEP.items()}),
    ],
    ids=["softmax", "topk 2", "topp 0.85", "temperature 2"],
)
def test_samples_follow_the_distribution_they_are_drawn_from(sampler, expected):
    total = sum(expected.values())
    expected = {k: p / total for k, p in expected.items()}
    statistic = chi_square(first_pieces(sampler, 4000), expected)
    assert statistic < CHI2_999[len(expected) - 1]


def test_topp_keeps_the_fewest_pieces_that_reach_it():
    assert set(first_pieces(Sampler(topp=0.75), 500)) == {A, B}  # 0.5 < 0.75 <= 0.8
    assert set(first_pieces(Sampler(topp=0.45), 200)) == {A}
    assert set(first_pieces(Sampler(topk=3, topp=0.99), 2000)) == {A, B, EOS_ID}


# ----------------------------------------------------------------------------- the sets


def allowed_by_definition(logits: torch.Tensor, sampler: Sampler) -> set[int]:
    """The pieces top-k then top-p allow, computed the plain way, one piece at a time."""
    scores = logits.float() / sampler.temperature
    scores[[PAD_ID, BOS_ID]] = -math.inf
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    if sampler.topk:
        order = order[: sampler.topk]
    probs = torch.softmax(scores[order], 0).tolist()
    kept, mass = [], 0.0
    for piece, p in zip(order, probs, strict=True):
        if (sampler.topp < 1.0 and mass >= sampler.topp) or p == 0.0:
            break
        kept.append(piece)
        mass += p
    return set(kept)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    topk=st.integers(0, 12),
    topp=st.floats(0.05, 1.0),
    temperature=st.floats(0.1, 3.0),
    edge=st.sampled_from([None, 0.0, 1.0 - 2**-53]),
)
def test_no_piece_is_ever_drawn_outside_the_topk_and_topp_set(seed, topk, topp, temperature, edge):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, 12, generator=gen) * 3
    logits[:, PAD_ID] += 20  # PAD and BOS most probable of all: never drawn all the same
    logits[:, BOS_ID] += 20
    sampler = Sampler(topk, topp, temperature)
    u = torch.rand(8, generator=gen, dtype=torch.float64)
    if edge is not None:
        u[:] = edge  # the ends of [0, 1)
    picked = sampler.pick(logits, u).tolist()
    for row, piece in zip(logits, picked, strict=True):
        # the plain definition may differ in a tie at the cut; rows here have none
        assert piece in allowed_by_definition(row.clone(), sampler)


def test_pad_and_bos_are_never_emitted(model, sources):
    greedy_pad = BigramModel({BOS_ID: {PAD_ID: 0.6, BOS_ID: 0.3, A: 0.1}, A: {EOS_ID: 1.0}})
    src = torch.full((300, 1), A)
    sampler = Sampler()
    draws = Draws(sampler, sampler.draws([(i, 0) for i in range(300)], 3))
    assert greedy_search(greedy_pad, src, 3, draws=draws) == [[A]] * 300
    hot = dataclasses.replace(SAMPLE, temperature=5.0)
    pieces = {p for out in decode_all(model, sources * 3, hot, "cpu") for p in out}
    assert pieces
    assert not pieces & {PAD_ID, BOS_ID}


# ----------------------------------------------------------------------------- reproducible


@pytest.mark.parametrize("sync_every", [1, 3, 8])
def test_the_same_seed_gives_the_same_samples_whatever_the_batching(model, sources, sync_every):
    alone = [sample(model, [s], first=i)[0] for i, s in enumerate(sources)]  # lockstep
    streamed = sample(model, sources, batch_sentences=3, sync_every=sync_every)  # slots
    one_batch = sample(model, sources, batch_sentences=64)  # lockstep
    assert alone == streamed == one_batch
    later = sample(model, sources[5:], first=5)  # the next chunk of translate's input
    assert later == streamed[5:]
    assert sample(model, sources, seed=1) != streamed  # another seed, other draws


def test_cached_and_uncached_sampling_agree(model, sources):
    sampler = Sampler(temperature=1.5)
    draws = Draws(sampler, sampler.draws([(i, 0) for i in range(len(sources))], 20))
    src = pad(sources)
    cached = greedy_search(model, src, 20, use_cache=True, draws=draws)
    assert greedy_search(model, src, 20, use_cache=False, draws=draws) == cached


def test_nbest_gives_independent_samples_scored_as_tfx_score_scores_them(model, sources):
    hot = {"temperature": 2.0}
    lists = sample(model, sources, nbest=3, **hot)
    assert [len(hyps) for hyps in lists] == [3] * len(sources)
    assert [hyps[0][0] for hyps in lists] == sample(model, sources, **hot)  # sample 0 alone
    distinct = sum(len({tuple(ids) for ids, _ in hyps}) > 1 for hyps in lists)
    assert distinct > len(sources) // 2  # at temperature 2 most sentences vary
    pairs = [(s, ids) for s, hyps in zip(sources, lists, strict=True) for ids, _ in hyps]
    scores = score_pairs(model, [s for s, _ in pairs], [t for _, t in pairs], 10_000, "cpu")
    reported = [score for hyps in lists for _, score in hyps]
    assert reported == pytest.approx([s.mean for s in scores], abs=1e-5)


def test_draws_depend_on_the_key_alone():
    sampler = Sampler(seed=3)
    both = sampler.draws([(0, 0), (7, 2)], 12)
    assert torch.equal(sampler.draws([(7, 2)], 5)[0], both[1, :5])  # longer: same start
    assert not torch.equal(both[0], both[1])
    assert not torch.equal(Sampler(seed=4).draws([(0, 0)], 12)[0], both[0])
    assert bool(((both >= 0) & (both < 1)).all())


def nucleus(ids: torch.Tensor, probs: torch.Tensor, topp: float) -> list[dict[int, float]]:
    """Each row's top-p set, {piece: probability}, from pieces in order of probability."""
    before = probs.cumsum(-1) - probs
    kept = probs.masked_fill(before >= topp, 0.0)
    return [
        {int(i): float(p) for i, p in zip(row_ids, row, strict=True) if p > 0}
        for row_ids, row in zip(ids, kept, strict=True)
    ]


@pytest.mark.parametrize("topp", [0.3, 0.9, 0.999])  # topp 1 needs no order
def test_the_nucleus_window_equals_sorting_the_whole_vocabulary(topp):
    gen = torch.Generator().manual_seed(int(topp * 1000))
    # peaked rows, whose nucleus is in the first window, and flat ones, which need more
    spread = torch.tensor([30.0, 10.0, 3.0, 1.0, 0.3] * 4)[:, None]
    scores = torch.randn(20, 3000, generator=gen) * spread
    scores[:, PAD_ID] = -math.inf
    ids, probs = nucleus_head(scores, topp)
    all_ids, all_probs = ordered_by_sorting(scores)
    assert ids.size(1) > FIRST_WINDOW  # the flat rows grew their window
    ours, plain = nucleus(ids, probs, topp), nucleus(all_ids, all_probs, topp)
    for a, b in zip(ours, plain, strict=True):
        assert a.keys() == b.keys()
        assert list(a.values()) == pytest.approx(list(b.values()), rel=1e-4, abs=1e-7)
