"""Model properties: paths agree, padding and the future are invisible, the cache is exact."""

import dataclasses
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import padded, tiny_model_config
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from transformer_cli.core.config import ModelConfig
from transformer_cli.core.specials import BOS_ID, PAD_ID
from transformer_cli.decoding import kv_cache
from transformer_cli.decoding.kv_cache import KVCache
from transformer_cli.decoding.slots import SlotCache, decode_slots, slot_sources
from transformer_cli.model.attention import SelfAttention, attend_math
from transformer_cli.model.masks import causal_mask
from transformer_cli.model.positions import sinusoidal_table
from transformer_cli.model.transformer import Transformer

V = 29
CFG = tiny_model_config(src_vocab=V, tgt_vocab=V)


def batch(lengths: list[int], width: int | None = None, seed: int = 0) -> torch.Tensor:
    """Random real tokens (ids >= 4), right-padded with PAD_ID."""
    return padded(lengths, V, width, seed)


def cached_logits(model, tgt_in: Tensor, memory: Tensor, src: Tensor, cache: KVCache) -> Tensor:
    """(B, T, V) scores of the new tokens `tgt_in`, decoded with `cache`."""
    return model.logits(kv_cache.cached_hidden(model, tgt_in, memory, src, cache))


PATHS = ["math", "sdpa"]


KINDS = ("sinusoidal", "learned", "rope", "relative")  # model.positional


@functools.cache
def model_for(
    attention: str = "sdpa", norm: str = "post", positional: str = "sinusoidal"
) -> Transformer:
    """One float64 model per (path, norm, positions), in eval mode; same weights on both paths.

    `relative` uses max_relative_distance 3, so that the tests' lengths reach past it.
    """
    torch.manual_seed(0)
    shape = dataclasses.replace(CFG, norm=norm, positional=positional, max_relative_distance=3)
    model = Transformer(dataclasses.replace(shape, attention="sdpa")).double().eval()
    if attention != "sdpa":
        other = Transformer(dataclasses.replace(shape, attention=attention))
        other.double().eval().load_state_dict(model.state_dict())
        return other
    return model


# ----------------------------------------------------------------------------- paths


@pytest.mark.parametrize("mask_kind", ["none", "padding", "causal", "all_masked_row"])
def test_math_attention_equals_sdpa(mask_kind):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 3, 6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, 6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = {
        "none": None,
        "padding": torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6], dtype=torch.bool)[:, None, None],
        "causal": causal_mask(5, offset=1),
        "all_masked_row": torch.tensor([[0] * 6, [1, 1, 0, 0, 0, 0]], dtype=torch.bool)[
            :, None, None
        ],
    }[mask_kind]
    ours, probs = attend_math(q, k, v, mask)
    grads = torch.autograd.grad(ours.sum(), (q, k, v))
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    fused_grads = torch.autograd.grad(fused.sum(), (q, k, v))
    torch.testing.assert_close(ours, fused)
    for g, fg in zip(grads, fused_grads, strict=True):
        assert g.isfinite().all()
        torch.testing.assert_close(g, fg)
    if mask is not None:
        assert (probs[~mask.expand_as(probs)] == 0).all()


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_math_and_sdpa_models_agree_in_outputs_and_gradients(norm):
    src, tgt = batch([6, 3, 1], seed=1), batch([4, 5, 2], seed=2)
    outs, grads = [], []
    for attention in PATHS:
        model = model_for(attention, norm)
        model.zero_grad()
        logits = model(src, tgt)
        logits.square().mean().backward()
        outs.append(logits)
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outs[0], outs[1])
    for g_math, g_sdpa in zip(*grads, strict=True):
        torch.testing.assert_close(g_math, g_sdpa)


@pytest.mark.parametrize(
    ("path", "cpu", "cuda"), [("auto", False, True), ("sdpa", True, True), ("math", False, False)]
)
def test_each_path_resolves_per_device(path, cpu, cuda):
    module = SelfAttention(8, 2, 0.0, path)
    assert module.scaled_dot_product.uses_sdpa(torch.device("cpu")) is cpu
    assert module.scaled_dot_product.uses_sdpa(torch.device("cuda")) is cuda


@pytest.mark.parametrize(("path", "fused_calls"), [("auto", 0), ("sdpa", 1), ("math", 0)])
def test_the_fused_kernel_runs_only_where_the_path_says(monkeypatch, path, fused_calls):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    module = SelfAttention(8, 2, 0.0, path)
    module(torch.randn(2, 3, 8), None)  # on the CPU
    assert len(calls) == fused_calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sdpa_on_cuda_stays_off_cudnn(dtype):
    """cuDNN's attention kernel plans every new shape anew: SDPA must pick another.

    Heads of 64 dimensions, as in the shipped configs: under bf16 autocast torch's own
    choice for them on an H100 is cuDNN's kernel. Both types must still get a fused kernel
    (one that takes a mask), not SDPA's unfused fallback."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(CFG, d_model=128, heads=2, d_ff=64, attention="sdpa")
    model = Transformer(cfg).cuda().train()
    src, tgt = batch([5, 3, 7]).cuda(), batch([4, 6, 2], seed=1).cuda()
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        with torch.autocast("cuda", torch.bfloat16, enabled=dtype == torch.bfloat16):
            logits = model(src, tgt)
        logits.float().square().mean().backward()
    kernels = {e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot")}
    assert kernels, "SDPA did not run"
    assert not any("cudnn" in k or "math" in k for k in kernels), kernels


def test_an_unknown_path_is_rejected():
    with pytest.raises(ValueError, match="attention path"):
        SelfAttention(8, 2, 0.0, "flash")


# ----------------------------------------------------------------------------- padding


@settings(max_examples=20, deadline=None)
@given(
    attention=st.sampled_from(PATHS),
    positional=st.sampled_from(KINDS),
    lengths=st.lists(st.tuples(st.integers(1, 7), st.integers(1, 7)), min_size=1, max_size=3),
    extra_src=st.integers(0, 4),
    extra_tgt=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
@torch.no_grad()
def test_padding_changes_no_real_output(attention, positional, lengths, extra_src, extra_tgt, seed):
    """Each sentence alone == the same sentence in a batch with any amount of padding."""
    src_lens, tgt_lens = (list(side) for side in zip(*lengths, strict=True))
    model = model_for(attention, positional=positional)
    src = batch(src_lens, max(src_lens) + extra_src, seed)
    tgt = batch(tgt_lens, max(tgt_lens) + extra_tgt, seed + 1)
    logits = model(src, tgt)
    for b, (s, t) in enumerate(lengths):
        alone = model(src[b : b + 1, :s], tgt[b : b + 1, :t])
        torch.testing.assert_close(logits[b : b + 1, :t], alone)


@pytest.mark.parametrize("attention", PATHS)
def test_empty_source_gives_no_nan_anywhere(attention):
    """An all-pad source sentence is useless, but must not poison outputs or gradients."""
    model = model_for(attention)
    model.zero_grad()
    src = batch([0, 5], seed=3)
    tgt = batch([3, 4], seed=4)
    logits = model(src, tgt)
    logits.sum().backward()
    assert logits.isfinite().all()
    assert all(p.grad.isfinite().all() for p in model.parameters())
    torch.testing.assert_close(logits[1:], model(src[1:], tgt[1:]))


# ----------------------------------------------------------------------------- causality


@pytest.mark.parametrize("attention", PATHS)
@torch.no_grad()
def test_changing_target_token_t_leaves_earlier_logits_unchanged(attention):
    model = model_for(attention)
    src, tgt = batch([5, 7], seed=5), batch([6, 6], seed=6)
    before = model(src, tgt)
    for t in range(tgt.size(1)):
        changed = tgt.clone()
        changed[:, t] = 4 + (changed[:, t] - 3) % (V - 4)  # another real token
        after = model(src, changed)
        torch.testing.assert_close(after[:, :t], before[:, :t])
        assert not torch.allclose(after[:, t:], before[:, t:])


# ----------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("positional", KINDS)
@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("attention", PATHS)
@torch.no_grad()
def test_cached_decoding_equals_full_decoding(attention, norm, positional):
    model = model_for(attention, norm, positional)
    src, tgt = batch([5, 2, 7], seed=7), batch([6, 6, 6], seed=8)
    memory = model.encode(src)
    full = model.decode(tgt, memory, src)
    cache = KVCache.for_model(model)
    steps = []
    for t in range(tgt.size(1)):
        step = cached_logits(model, tgt[:, t : t + 1], memory, src, cache)
        assert step.shape == (3, 1, V)
        steps.append(step)
    assert cache.length == tgt.size(1)
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("positional", KINDS)
@pytest.mark.parametrize("attention", PATHS)
@torch.no_grad()
def test_cached_decoding_after_select_equals_full_decoding_of_the_selected_rows(
    attention, positional
):
    """Beam search reorders and duplicates rows; greedy search drops finished ones."""
    model = model_for(attention, positional=positional)
    src, tgt = batch([5, 2, 7, 4], seed=9), batch([7, 7, 7, 7], seed=10)
    memory = model.encode(src)
    cache = KVCache.for_model(model)
    for t in range(3):
        cached_logits(model, tgt[:, t : t + 1], memory, src, cache)
    index = torch.tensor([2, 0, 2, 3])  # reorder, duplicate, drop row 1
    cache.select(index)
    assert cache.src_mask.size(0) == 4
    rows = tgt.index_select(0, index)
    # memory and src are owned by the cache now: passing the unselected ones is fine
    steps = [cached_logits(model, rows[:, t : t + 1], memory, src, cache) for t in range(3, 7)]
    full = model.decode(rows, memory.index_select(0, index), src.index_select(0, index))
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 3:])
    cache.select(torch.tensor([1, 3]))  # shrink
    last = cached_logits(model, rows[[1, 3], 6:7], memory, src, cache)
    assert last.shape == (2, 1, V)


@torch.no_grad()
def test_reordering_within_sentences_may_leave_the_source_state_alone():
    """Beam search's usual step: every row's new parent is a beam of its own sentence."""
    model = model_for()
    beams = 3
    src = batch([5, 2], seed=15).repeat_interleave(beams, 0)  # rows 0-2: sentence 0, 3-5: 1
    tgt = batch([6] * 2 * beams, seed=16)
    memory = model.encode(src)
    cache = KVCache.for_model(model)
    for t in range(3):
        cached_logits(model, tgt[:, t : t + 1], memory, src, cache)
    index = torch.tensor([2, 2, 0, 4, 3, 3])  # within sentence 0, within sentence 1
    cross_k, src_mask = cache.layers[0].cross_k, cache.src_mask
    cache.select(index, sources_too=False)
    assert cache.layers[0].cross_k is cross_k  # not copied
    assert cache.src_mask is src_mask
    rows = tgt.index_select(0, index)
    steps = [cached_logits(model, rows[:, t : t + 1], memory, src, cache) for t in range(3, 6)]
    full = model.decode(rows, memory, src)  # same sentences in the same rows as before
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 3:])


@torch.no_grad()
@pytest.mark.parametrize("positional", KINDS)
def test_cached_decoding_accepts_several_tokens_at_once(positional):
    model = model_for(positional=positional)
    src, tgt = batch([5, 3], seed=11), batch([6, 6], seed=12)
    memory = model.encode(src)
    cache = KVCache.for_model(model)
    first = cached_logits(model, tgt[:, :4], memory, src, cache)
    rest = cached_logits(model, tgt[:, 4:], memory, src, cache)
    torch.testing.assert_close(torch.cat([first, rest], 1), model.decode(tgt, memory, src))


@torch.no_grad()
def test_cache_rejects_a_batch_it_was_not_selected_to():
    model = model_for()
    src, tgt = batch([3, 3], seed=13), batch([2, 2], seed=14)
    cache = KVCache.for_model(model)
    cached_logits(model, tgt[:, :1], model.encode(src), src, cache)
    with pytest.raises(ValueError, match="select"):
        cached_logits(model, tgt[:1, 1:2], model.encode(src), src, cache)


# ----------------------------------------------------------------------------- slot cache


def run_slots(model, sources: list[Tensor], targets: list[Tensor], slots: int) -> dict:
    """Teacher-force each target through a `SlotCache` of `slots` slots.

    A slot whose sentence has fed all its tokens takes the next sentence at once, or is
    dropped (`select`) when none is left, as greedy search's stream does. Sources come
    in two batches of different widths, so slots hold differently padded sources.
    Returns each sentence's logits, (T, V).
    """
    half = (len(sources) + 1) // 2
    states = []
    for group in (sources[:half], sources[half:]):
        if group:
            width = max(len(s) for s in group) + 1
            src = torch.stack([F.pad(s, (0, width - len(s)), value=PAD_ID) for s in group])
            cross, mask, lengths = slot_sources(model, src)
            states += [
                (
                    [(k[i : i + 1], v[i : i + 1]) for k, v in cross],
                    mask[i : i + 1],
                    lengths[i : i + 1],
                )
                for i in range(len(group))
            ]
    cache = SlotCache.for_model(model, "cpu")
    queue = list(range(len(sources)))
    sentence: list[int] = []
    fed: list[int] = []
    logits: dict[int, list[Tensor]] = {i: [] for i in queue}

    def start(slot: int) -> None:
        i = queue.pop(0)
        cache.fill(torch.tensor([slot]), *states[i])
        if slot == len(sentence):
            sentence.append(i), fed.append(0)
        sentence[slot], fed[slot] = i, 0

    while queue and len(sentence) < slots:
        start(len(sentence))
    while cache.slots:
        tokens = torch.tensor([targets[i][n] for i, n in zip(sentence, fed, strict=True)])
        step = model.logits(decode_slots(model, tokens, cache))  # (N, V)
        keep = []
        for slot, i in enumerate(sentence):
            logits[i].append(step[slot])
            fed[slot] += 1
            if fed[slot] < len(targets[i]):
                keep.append(slot)
            elif queue:
                start(slot)
                keep.append(slot)
        if len(keep) < cache.slots:
            cache.select(torch.tensor(keep, dtype=torch.long))
            sentence[:], fed[:] = [sentence[k] for k in keep], [fed[k] for k in keep]
    return {i: torch.stack(rows) for i, rows in logits.items()}


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("attention", PATHS)
@settings(max_examples=15, deadline=None)
@given(
    positional=st.sampled_from(KINDS),
    src_lengths=st.lists(st.integers(1, 9), min_size=1, max_size=7),
    tgt_lengths=st.data(),
    slots=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
@torch.no_grad()
def test_slot_decoding_equals_full_decoding_whenever_sentences_start(
    attention, norm, positional, src_lengths, tgt_lengths, slots, seed
):
    """Each slot at its own position gives the logits of decoding its sentence alone."""
    model = model_for(attention, norm, positional)
    n = len(src_lengths)
    lengths = tgt_lengths.draw(st.lists(st.integers(1, 20), min_size=n, max_size=n))
    gen = torch.Generator().manual_seed(seed)
    sources = [torch.randint(4, V, (k,), generator=gen) for k in src_lengths]
    targets = [
        torch.cat([torch.tensor([BOS_ID]), torch.randint(4, V, (k - 1,), generator=gen)])
        for k in lengths
    ]
    got = run_slots(model, sources, targets, slots)
    for i, (src, tgt) in enumerate(zip(sources, targets, strict=True)):
        alone = model.decode(tgt[None], model.encode(src[None]), src[None])[0]  # (T, V)
        torch.testing.assert_close(got[i], alone)


@torch.no_grad()
def test_slot_cache_keeps_bf16_keys_and_values_in_fp32_on_the_cpu():
    """bf16 matmuls on the CPU copy strided inputs; the buffers' prefixes are strided."""
    model = Transformer(dataclasses.replace(CFG, attention="math")).eval()
    src, tgt = batch([5, 3], seed=21), batch([4, 4], seed=22)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache = SlotCache.for_model(model, "cpu")
        cache.fill(torch.arange(2), *slot_sources(model, src))
        low = [model.logits(decode_slots(model, tgt[:, t], cache)) for t in range(4)]
    layer = cache.layers[0]
    assert {layer.self_k.dtype, layer.cross_k.dtype} == {torch.float32}
    assert low[0].dtype == torch.bfloat16
    full = model.decode(tgt, model.encode(src), src)  # fp32, no cache
    # bf16 keeps ~3 significant digits
    torch.testing.assert_close(torch.stack(low, 1).float(), full, atol=0.1, rtol=0.05)


class WideCache:
    """A layer cache that keeps keys and values in fp32, as the slot cache does on the CPU."""

    cross_k = cross_v = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return k.float(), v.float()


@pytest.mark.parametrize("attention", PATHS)
@torch.no_grad()
def test_queries_are_brought_to_the_type_the_keys_are_kept_in(attention):
    """Under bf16 autocast, eq. 1 over fp32 keys runs in fp32, autocast off."""
    torch.manual_seed(0)
    module = SelfAttention(16, 2, 0.0, attention).eval()
    seen = []
    module.scaled_dot_product.register_forward_pre_hook(
        lambda _m, args: seen.append(
            (args[0].dtype, args[1].dtype, torch.is_autocast_enabled("cpu"))
        )
    )
    x = torch.randn(2, 3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        wide = module(x, None, WideCache())
        narrow = module(x, None)
    assert seen == [
        (torch.float32, torch.float32, False),
        (torch.bfloat16, torch.bfloat16, True),
    ]
    assert wide.dtype == narrow.dtype == torch.bfloat16  # the output projection autocasts
    full = module(x, None)  # fp32 throughout
    # the fp32 core keeps the result closer to fp32's than the bf16 one
    assert (wide.float() - full).abs().max() <= (narrow.float() - full).abs().max()


# ----------------------------------------------------------------------------- positions


def test_sinusoidal_values_follow_the_formula():
    d = 16
    table = sinusoidal_table(50, d)
    for pos, i in [(0, 0), (1, 0), (3, 2), (17, 5), (49, 7)]:
        angle = pos / 10000 ** (2 * i / d)
        assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert torch.equal(model_for().src_pos.table, table.double()[: CFG.max_positions])


def test_sinusoidal_shift_by_k_is_one_linear_map_for_every_position():
    """Section 3.5: PE(pos + k) = M_k PE(pos), M_k block-diagonal 2x2 rotations."""
    d, positions = 12, 64
    table = sinusoidal_table(positions, d).double()
    freq = torch.tensor([1 / 10000 ** (2 * i / d) for i in range(d // 2)], dtype=torch.float64)
    for k in [1, 2, 5, 31]:
        m = torch.zeros(d, d, dtype=torch.float64)
        c, s = torch.cos(k * freq), torch.sin(k * freq)
        # sin(a + b) = sin a cos b + cos a sin b; cos(a + b) = cos a cos b - sin a sin b
        for i in range(d // 2):
            m[2 * i, 2 * i], m[2 * i, 2 * i + 1] = c[i], s[i]
            m[2 * i + 1, 2 * i], m[2 * i + 1, 2 * i + 1] = -s[i], c[i]
        shifted = table[:-k] @ m.T  # every position at once
        torch.testing.assert_close(shifted, table[k:], atol=1e-6, rtol=0)


def test_positions_beyond_max_positions_are_an_error():
    model = model_for()
    with pytest.raises(ValueError, match="max_positions"):
        model.encode(batch([CFG.max_positions + 1]))


def test_learned_positions_are_parameters_and_run():
    cfg = dataclasses.replace(CFG, positional="learned")
    model = Transformer(cfg)
    names = {n for n, _ in model.named_parameters()}
    assert {"src_pos.table", "tgt_pos.table"} <= names
    assert model(batch([3, 2]), batch([2, 4])).shape == (2, 4, V)


# ----------------------------------------------------------------------------- shapes, size


@pytest.mark.parametrize("positional", KINDS)
@pytest.mark.parametrize("attention", PATHS)
def test_shapes_and_dtypes_under_bf16_autocast(attention, positional):
    model = Transformer(dataclasses.replace(CFG, attention=attention, positional=positional))
    src, tgt = batch([5, 3], seed=15), batch([4, 2], seed=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        memory = model.encode(src)
        hidden = model.decode_hidden(tgt, memory, src)
        logits = model.logits(hidden)
        logits.float().sum().backward()
        cache = KVCache.for_model(model)
        step = cached_logits(model, tgt[:, :1], memory, src, cache)
        slots = SlotCache.for_model(model, "cpu")
        slots.fill(torch.arange(2), *slot_sources(model, src))
        slot_step = model.logits(decode_slots(model, tgt[:, 0], slots))  # (2, V)
    # the slot cache keeps fp32 keys and values, the KV cache bf16 ones: close, not equal
    torch.testing.assert_close(slot_step.float(), step[:, 0].float(), atol=0.1, rtol=0.05)
    assert memory.shape == (2, 5, CFG.d_model)
    assert hidden.shape == (2, 4, CFG.d_model)
    assert logits.shape == (2, 4, V)
    assert logits.dtype == torch.bfloat16
    assert step.shape == (2, 1, V)
    assert step.dtype == torch.bfloat16
    assert logits.isfinite().all()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


def expected_parameters(cfg: ModelConfig) -> int:
    d, f = cfg.d_model, cfg.d_ff
    attention = 4 * d * d + 4 * d  # Q, K, V and output projections, with biases
    ff = 2 * d * f + f + d
    norm = 2 * d
    encoder = cfg.enc_layers * (attention + ff + 2 * norm)
    decoder = cfg.dec_layers * (2 * attention + ff + 3 * norm)
    final_norms = 2 * norm if cfg.norm == "pre" else 0
    embeddings = cfg.src_vocab * d + (0 if cfg.share_embeddings else cfg.tgt_vocab * d)
    output = 0 if cfg.tie_output else cfg.tgt_vocab * d  # no bias
    positions = 2 * cfg.max_positions * d if cfg.positional == "learned" else 0
    return encoder + decoder + final_norms + embeddings + output + positions


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"share_embeddings": False, "src_vocab": 31},
        {"tie_output": False},
        {"share_embeddings": False, "tie_output": False, "tgt_vocab": 37},
        {"norm": "pre", "positional": "learned", "enc_layers": 1, "dec_layers": 3},
    ],
)
def test_parameter_count_matches_closed_form(changes):
    cfg = dataclasses.replace(CFG, **changes)
    model = Transformer(cfg)
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(cfg)
    assert (model.out_proj.weight is model.tgt_embed.weight) == cfg.tie_output
    assert (model.src_embed is model.tgt_embed) == cfg.share_embeddings


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"src_vocab": 0}, "must be > 0"),
        ({"tgt_vocab": 0}, "must be > 0"),
        ({"tgt_vocab": 30}, "needs one joint vocabulary"),
        ({"heads": 3}, "must divide d_model"),
    ],
)
def test_invalid_configs_are_value_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        Transformer(dataclasses.replace(CFG, **changes))


def test_initialisation_xavier_matrices_zero_biases():
    model = Transformer(dataclasses.replace(CFG, d_model=64, d_ff=128))
    w = model.encoder.layers[0].ff[0].weight  # (F, D)
    bound = math.sqrt(6 / sum(w.shape))
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.9 * bound
    assert all((p == 0).all() for n, p in model.named_parameters() if n.endswith("bias"))


@pytest.mark.parametrize("share", [True, False])
def test_normal_embedding_init_is_unit_scale_after_sqrt_d(share):
    """embedding_init normal: N(0, 1/d), so sqrt(d) * E has std 1; other matrices stay
    Xavier. With xavier, sqrt(d) * E is far smaller than the sinusoid's entries."""
    d, vocab = 64, 4000
    shape = dict(d_model=d, d_ff=128, src_vocab=vocab, tgt_vocab=vocab, share_embeddings=share)
    torch.manual_seed(0)
    normal = Transformer(dataclasses.replace(CFG, **shape, embedding_init="normal"))
    torch.manual_seed(0)
    xavier = Transformer(dataclasses.replace(CFG, **shape, embedding_init="xavier"))
    for embed in (normal.src_embed, normal.tgt_embed):
        assert (embed.weight * math.sqrt(d)).std().item() == pytest.approx(1.0, abs=0.02)
    assert normal.out_proj.weight is normal.tgt_embed.weight  # tied: the same matrix
    assert (xavier.src_embed.weight * math.sqrt(d)).std().item() < 0.2
    w, ref = normal.encoder.layers[0].ff[0].weight, xavier.encoder.layers[0].ff[0].weight
    assert w.abs().max() <= math.sqrt(6 / sum(w.shape))
    assert ref.abs().max() <= math.sqrt(6 / sum(ref.shape))


# ----------------------------------------------------------------------------- dropout


def test_dropout_is_off_in_eval_and_on_in_train():
    cfg = dataclasses.replace(CFG, dropout=0.3, attention_dropout=0.3)
    model = Transformer(cfg)
    src, tgt = batch([5, 3], seed=17), batch([4, 2], seed=18)
    model.eval()
    assert torch.equal(model(src, tgt), model(src, tgt))
    model.train()
    assert not torch.equal(model(src, tgt), model(src, tgt))
