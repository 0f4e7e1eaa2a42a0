"""Relative position by construction: RoPE's and Shaw's properties, and the shift test."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import tiny_model_config
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_cli.core.specials import PAD_ID
from transformer_cli.model.attention import attend_math
from transformer_cli.model.positions import Positions, RelativePositions, Rotary
from transformer_cli.model.transformer import Transformer

K = 8  # head dim
P = 64  # positions


def rotated(x: torch.Tensor, position: int, rotary: Rotary) -> torch.Tensor:
    """One vector (K,) rotated to `position`."""
    return rotary(x.view(1, 1, 1, K), torch.tensor([[position]]))[0, 0, 0]


@settings(max_examples=50, deadline=None)
@given(
    m=st.integers(0, P - 1),
    n=st.integers(0, P - 1),
    shift=st.integers(-(P - 1), P - 1),
    seed=st.integers(0, 2**16),
)
def test_rope_score_depends_only_on_the_offset(m, n, shift, seed):
    """(R(m) q) . (R(n) k) == (R(m + s) q) . (R(n + s) k), for any contents q and k."""
    if not (0 <= m + shift < P and 0 <= n + shift < P):
        shift = 0
    rotary = Rotary(K, P)
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(K, generator=g), torch.randn(K, generator=g)
    here = rotated(q, m, rotary) @ rotated(k, n, rotary)
    there = rotated(q, m + shift, rotary) @ rotated(k, n + shift, rotary)
    torch.testing.assert_close(here, there, atol=1e-5, rtol=1e-5)


def test_rope_depends_on_the_offset_not_nothing():
    """The offset does matter: the same q and k score differently 1 and 5 apart."""
    rotary = Rotary(K, P)
    q = k = torch.ones(K)
    assert (rotated(q, 0, rotary) @ rotated(k, 1, rotary)).item() != pytest.approx(
        (rotated(q, 0, rotary) @ rotated(k, 5, rotary)).item()
    )


def test_rope_preserves_norms_and_position_zero_is_the_identity():
    rotary = Rotary(K, P)
    x = torch.randn(3, 2, P, K)  # (B, H, T, K)
    out = rotary(x, torch.arange(P)[None])
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0])


def test_relative_position_term_depends_only_on_the_clipped_offset():
    """q . a^K_ij is keys[clip(j - i, -k, k) + k] . q: one value per clipped offset."""
    k, length = 3, 9
    relative = RelativePositions(K, k)
    torch.nn.init.normal_(relative.keys)
    terms = relative(Positions.span(0, length))
    q = torch.randn(K).expand(1, 1, length, K)  # the same content at every position
    scores = terms.key_scores(q)[0, 0]  # (T, S)
    for i in range(length):
        for j in range(length):
            offset = max(-k, min(k, j - i))
            torch.testing.assert_close(scores[i, j], relative.keys[offset + k] @ q[0, 0, 0])


def test_relative_value_term_adds_the_attended_offsets_vector():
    """Attending with probability 1 to key j adds values[clip(j - i) + k] to the output."""
    k, length = 2, 6
    relative = RelativePositions(K, k)
    torch.nn.init.normal_(relative.keys)
    torch.nn.init.normal_(relative.values)
    terms = relative(Positions.span(0, length))
    probs = torch.zeros(1, 1, length, length)
    target = torch.tensor([5, 0, 2, 3, 1, 4])  # query i attends to key target[i] alone
    probs[0, 0, torch.arange(length), target] = 1.0
    out = terms.value_sums(probs)[0, 0]  # (T, K)
    for i, j in enumerate(target.tolist()):
        torch.testing.assert_close(out[i], relative.values[max(-k, min(k, j - i)) + k])


def test_relative_attention_without_vectors_is_the_papers():
    """Zero relative vectors leave eq. 1 exactly as it is."""
    relative = RelativePositions(K, 2)
    torch.nn.init.zeros_(relative.keys)
    torch.nn.init.zeros_(relative.values)
    q, k, v = (torch.randn(2, 3, 5, K) for _ in range(3))
    plain = attend_math(q, k, v, None)[0]
    with_terms = attend_math(q, k, v, None, relative=relative(Positions.span(0, 5)))[0]
    torch.testing.assert_close(with_terms, plain)


def shifted(ids: torch.Tensor, p: int) -> torch.Tensor:
    """`ids` (B, L) moved right by p positions, PAD in front."""
    return torch.cat([torch.full((ids.size(0), p), PAD_ID), ids], dim=1)


@pytest.mark.parametrize(
    ("positional", "invariant"),
    [("rope", True), ("relative", True), ("sinusoidal", False), ("learned", False)],
)
@torch.no_grad()
def test_shifting_the_input_right_changes_only_absolute_models(positional, invariant):
    """A learner's proof of "relative": pad p positions in front (masked) of source and
    target; rope and relative give the same outputs, absolute positions do not."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_model_config(), positional=positional, max_relative_distance=4)
    model = Transformer(cfg).double().eval()
    if positional == "learned":
        torch.nn.init.normal_(model.src_pos.table)  # xavier at 40 x 16 is small; make it count
        torch.nn.init.normal_(model.tgt_pos.table)
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(4, 29, (2, 7), generator=g), torch.randint(4, 29, (2, 6), generator=g)
    here = model(src, tgt)  # (B, T, V)
    for p in (1, 5):
        there = model(shifted(src, p), shifted(tgt, p))[:, p:]
        assert torch.allclose(here, there, rtol=0, atol=1e-9) == invariant


def test_a_checkpoint_from_before_the_choices_loads_as_what_it_was(tmp_path, toy_pairs):
    """Checkpoints carry model.positional and model.embedding_init; one written before
    they existed is sinusoidal and xavier-initialised, as it was."""
    from helpers import make_tiny_run

    from transformer_cli.core.checkpoint import load_state, save_checkpoint
    from transformer_cli.decoding.loading import load_model

    cfg = make_tiny_run(tmp_path, toy_pairs)
    path = next((tmp_path / "run" / "checkpoints").glob("*.pt"))
    state = load_state(path)
    for key in ("positional", "max_relative_distance", "embedding_init"):
        del state["config"]["model"][key]
    save_checkpoint(tmp_path / "old.pt", state)
    model, _, loaded = load_model(tmp_path / "old.pt", torch.device("cpu"))
    assert loaded.model.positional == "sinusoidal" == cfg.model.positional
    assert loaded.model.embedding_init == "xavier"  # the default when it was written
    assert model.src_pos is not None
    assert model.encoder.layers[0].self_attn.rotary is None
