"""Masks: one convention (True = may attend), checked against hand-built masks."""

import torch

from transformer_cli.core.specials import PAD_ID
from transformer_cli.model.masks import causal_mask, decoder_mask, padding_mask


def right_padded(lengths: list[int], width: int) -> torch.Tensor:
    """Ids with token 7 at real positions and PAD_ID after each length."""
    ids = torch.full((len(lengths), width), PAD_ID)
    for b, n in enumerate(lengths):
        ids[b, :n] = 7
    return ids


def test_padding_mask_marks_real_tokens():
    ids = right_padded([3, 1, 4], 4)
    mask = padding_mask(ids)
    assert mask.shape == (3, 1, 1, 4)
    assert mask.dtype == torch.bool
    expected = [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert mask[:, 0, 0].tolist() == [[bool(v) for v in row] for row in expected]


def test_all_padding_sentence_may_attend_to_its_pad_positions():
    # an empty source must not leave a query with nothing to attend to (0/0 = NaN);
    # the other sentences' masks are untouched
    ids = right_padded([0, 2], 3)
    mask = padding_mask(ids)[:, 0, 0]
    assert mask[0].all()
    assert mask[1].tolist() == [True, True, False]


def test_causal_mask_is_lower_triangular():
    mask = causal_mask(4)
    for i in range(4):
        for j in range(4):
            assert mask[i, j].item() == (j <= i)


def test_causal_mask_with_offset_continues_the_full_mask():
    # queries at positions 3..4 of a 5-long sequence see exactly the rows of the full mask
    assert torch.equal(causal_mask(2, offset=3), causal_mask(5)[3:])


def test_decoder_mask_is_the_union_of_look_ahead_and_padding():
    lengths, T = [3, 1, 4, 2], 4
    mask = decoder_mask(right_padded(lengths, T))
    assert mask.shape == (4, 1, T, T)
    assert mask.dtype == torch.bool
    hand = torch.zeros(4, 1, T, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        for i in range(T):
            for j in range(T):
                # allowed: not in the future (look-ahead) and a real token (padding)
                hand[b, 0, i, j] = j <= i and j < n
    assert torch.equal(mask, hand)


def test_every_decoder_query_row_has_a_key():
    # a real token at position 0 (BOS) keeps every row, pad rows included, non-empty
    mask = decoder_mask(right_padded([1, 3, 5], 5))
    assert mask.any(dim=-1).all()
