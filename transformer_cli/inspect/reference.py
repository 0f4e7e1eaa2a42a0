"""`tfx inspect reference`: tfx's layers against PyTorch's, with the same weights.

`layer_pairs` says which tfx tensor is which `torch.nn.TransformerEncoderLayer` /
`TransformerDecoderLayer` tensor; `copy_layer` copies along it in either direction.
tests/model/test_reference.py loads random torch.nn weights into tfx with it, the view
loads a model's weights into torch.nn with it: the check and the test cannot drift.

torch.nn's boolean masks mean the opposite of tfx's (True = may NOT attend), so the
reference gets `ids == PAD_ID` and an upper-triangular look-ahead mask. Only real
(non-pad) positions are compared: padded rows are allowed to be anything.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import Tensor, nn

from transformer_cli.core.errors import ConfigError
from transformer_cli.core.specials import PAD_ID
from transformer_cli.model.masks import decoder_mask, padding_mask
from transformer_cli.model.positions import in_attention
from transformer_cli.model.transformer import DecoderLayer, Transformer

REFERENCE_TOLERANCE = 1e-5  # float64 differences are ~1e-15; a wrong weight gives ~1e-1


def layer_pairs(ours: Any, ref: Any) -> list[tuple[Tensor, Tensor]]:
    """(tfx tensor, torch.nn tensor) for every weight of one layer.

    `ours` is an `EncoderLayer` or a `DecoderLayer`, `ref` the matching torch.nn layer
    (typed Any: nn.Module's attributes are not known to the type checker).

    tfx's cross-attention keeps Q apart from the fused K/V, which torch.nn stores as
    rows D.. of one `in_proj_weight`: those pairs hold views into it.
    """
    pairs = [
        (ours.self_attn.in_proj.weight, ref.self_attn.in_proj_weight),
        (ours.self_attn.in_proj.bias, ref.self_attn.in_proj_bias),
        (ours.self_attn.out_proj.weight, ref.self_attn.out_proj.weight),
        (ours.self_attn.out_proj.bias, ref.self_attn.out_proj.bias),
        (ours.ff[0].weight, ref.linear1.weight),
        (ours.ff[0].bias, ref.linear1.bias),
        (ours.ff[3].weight, ref.linear2.weight),
        (ours.ff[3].bias, ref.linear2.bias),
    ]
    norms = 2
    if isinstance(ours, DecoderLayer):
        d, cross, theirs = ours.cross_attn.q_proj.in_features, ours.cross_attn, ref.multihead_attn
        pairs += [
            (cross.q_proj.weight, theirs.in_proj_weight[:d]),
            (cross.q_proj.bias, theirs.in_proj_bias[:d]),
            (cross.kv_proj.weight, theirs.in_proj_weight[d:]),
            (cross.kv_proj.bias, theirs.in_proj_bias[d:]),
            (cross.out_proj.weight, theirs.out_proj.weight),
            (cross.out_proj.bias, theirs.out_proj.bias),
        ]
        norms = 3
    for i in range(1, norms + 1):
        mine, torch_norm = getattr(ours, f"norm{i}"), getattr(ref, f"norm{i}")
        pairs += [(mine.weight, torch_norm.weight), (mine.bias, torch_norm.bias)]
    return pairs


@torch.no_grad()
def copy_layer(ours: nn.Module, ref: nn.Module, into: Literal["tfx", "torch"]) -> None:
    """Copy one layer's weights from torch.nn into tfx, or from tfx into torch.nn."""
    for mine, theirs in layer_pairs(ours, ref):
        (mine if into == "tfx" else theirs).copy_(theirs if into == "tfx" else mine)


def torch_kwargs(model: Transformer) -> dict:
    """The torch.nn layer arguments of tfx's shape (no dropout: eval only)."""
    cfg = model.cfg
    return dict(
        d_model=cfg.d_model,
        nhead=cfg.heads,
        dim_feedforward=cfg.d_ff,
        dropout=0.0,
        batch_first=True,
        norm_first=cfg.norm == "pre",
    )


def torch_transformer(model: Transformer) -> nn.Transformer:
    """`torch.nn.Transformer` holding `model`'s layer weights, in `model`'s dtype.

    It always ends both stacks with a LayerNorm: tfx's pre-norm recipe. Post-norm (the
    paper's) has none there, so for it the stacks get `norm=None`.
    """
    cfg, kwargs = model.cfg, torch_kwargs(model)
    norm = cfg.norm == "pre"
    dtype = next(model.parameters()).dtype
    encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(**kwargs),
        cfg.enc_layers,
        nn.LayerNorm(cfg.d_model) if norm else None,
        enable_nested_tensor=False,
    )
    decoder = nn.TransformerDecoder(
        nn.TransformerDecoderLayer(**kwargs),
        cfg.dec_layers,
        nn.LayerNorm(cfg.d_model) if norm else None,
    )
    ref = nn.Transformer(custom_encoder=encoder, custom_decoder=decoder, **kwargs)
    ref = ref.to(dtype).eval()
    for ours, theirs in zip(model.encoder.layers, encoder.layers, strict=True):
        copy_layer(ours, theirs, into="torch")
    for ours, theirs in zip(model.decoder.layers, decoder.layers, strict=True):
        copy_layer(ours, theirs, into="torch")
    finals: list[tuple[Any, Any]] = [(model.encoder.norm, encoder.norm)]
    finals.append((model.decoder.norm, decoder.norm))
    for mine, theirs in finals:
        if mine is not None:  # pre-norm's final norms
            theirs.load_state_dict(mine.state_dict())
    return ref


def torch_look_ahead(length: int) -> Tensor:
    """torch.nn's convention: True above the diagonal = the future, may not attend."""
    return torch.ones(length, length, dtype=torch.bool).triu(1)


def real_gap(ours: Tensor, ref: Tensor, ids: Tensor) -> float:
    """The largest |difference| over real (non-pad) positions."""
    real = ids != PAD_ID  # (B, L)
    return (ours[real] - ref[real]).abs().max().item()


def _layer_inputs(model: Transformer, src: Tensor, tgt_in: Tensor) -> tuple[list, list, Tensor]:
    """One forward pass: every encoder and decoder layer's input, and the memory."""
    enc: list[Tensor] = []
    dec: list[Tensor] = []
    hooks = [
        layer.register_forward_pre_hook(lambda _, a: enc.append(a[0]))
        for layer in model.encoder.layers
    ]
    hooks += [
        layer.register_forward_pre_hook(lambda _, a: dec.append(a[0]))
        for layer in model.decoder.layers
    ]
    try:
        memory = model.encode(src)
        model.decode_hidden(tgt_in, memory, src)
    finally:
        for h in hooks:
            h.remove()
    return enc, dec, memory


def _layer_gaps(model: Transformer, src: Tensor, tgt_in: Tensor) -> tuple[list, list]:
    """Each tfx layer against a torch.nn layer holding its weights, on the same input."""
    enc_in, dec_in, memory = _layer_inputs(model, src, tgt_in)
    kwargs, dtype = torch_kwargs(model), memory.dtype
    src_mask, tgt_mask = padding_mask(src), decoder_mask(tgt_in)
    enc_gaps, dec_gaps = [], []
    for layer, x in zip(model.encoder.layers, enc_in, strict=True):
        ref = nn.TransformerEncoderLayer(**kwargs).to(dtype).eval()
        copy_layer(layer, ref, into="torch")
        expected = ref(x, src_key_padding_mask=src == PAD_ID)
        enc_gaps.append(real_gap(layer(x, src_mask), expected, src))
    for layer, x in zip(model.decoder.layers, dec_in, strict=True):
        ref_dec = nn.TransformerDecoderLayer(**kwargs).to(dtype).eval()
        copy_layer(layer, ref_dec, into="torch")
        expected = ref_dec(
            x,
            memory,
            tgt_mask=torch_look_ahead(tgt_in.size(1)),
            tgt_key_padding_mask=tgt_in == PAD_ID,
            memory_key_padding_mask=src == PAD_ID,
        )
        dec_gaps.append(real_gap(layer(x, memory, tgt_mask, src_mask), expected, tgt_in))
    return enc_gaps, dec_gaps


def _stack_gap(model: Transformer, src: Tensor, tgt_in: Tensor) -> float:
    """tfx's encoder and decoder against torch.nn.Transformer, from the same embeddings."""
    enc_in, dec_in, memory = _layer_inputs(model, src, tgt_in)
    expected = torch_transformer(model)(
        enc_in[0],
        dec_in[0],
        tgt_mask=torch_look_ahead(tgt_in.size(1)),
        src_key_padding_mask=src == PAD_ID,
        tgt_key_padding_mask=tgt_in == PAD_ID,
        memory_key_padding_mask=src == PAD_ID,
    )
    return real_gap(model.decode_hidden(tgt_in, memory, src), expected, tgt_in)


def layer_norm_by_hand(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """(x - mean) / sqrt(biased variance + eps) * gamma + beta, over the last dimension."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased: divided by D, not D - 1
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


@torch.no_grad()
def reference_view(model: Transformer, src: Tensor, tgt_in: Tensor, source: str) -> dict:
    """The largest |tfx - torch.nn| per layer, for the stack, and for LayerNorm, in float64.

    ConfigError for `rope` and `relative` models: positions inside attention, which
    torch.nn's layers do not have.
    """
    if in_attention(model.cfg.positional):
        raise ConfigError(
            f"{source}: model.positional is {model.cfg.positional}, which works inside "
            "attention; torch.nn's layers have no such attention to compare with (the check "
            "takes sinusoidal and learned models)"
        )
    model = copy.deepcopy(model).double().eval()
    enc_gaps, dec_gaps = _layer_gaps(model, src, tgt_in)
    x = _layer_inputs(model, src, tgt_in)[0][0]
    norm: Any = model.encoder.layers[0].norm1
    return {
        "source": source,
        "norm": model.cfg.norm,
        "shape": {"src": list(src.shape), "tgt_in": list(tgt_in.shape)},
        "encoder_layers": enc_gaps,
        "decoder_layers": dec_gaps,
        "stack": _stack_gap(model, src, tgt_in),
        "layer_norm": real_gap(layer_norm_by_hand(x, norm), norm(x), src),
    }


def format_reference(view: dict) -> str:
    """The reference view as the text `tfx inspect reference` prints."""
    worst = max(
        [*view["encoder_layers"], *view["decoder_layers"], view["stack"], view["layer_norm"]]
    )
    shape = view["shape"]
    out = [
        f"{view['source']} ({view['norm']}-norm) against torch.nn with the same weights, in "
        f"float64, on one real batch: src {tuple(shape['src'])}, tgt_in "
        f"{tuple(shape['tgt_in'])}; largest |difference| over the real positions",
    ]
    for i, gap in enumerate(view["encoder_layers"]):
        out.append(f"  encoder layer {i} vs nn.TransformerEncoderLayer:  {gap:.1e}")
    for i, gap in enumerate(view["decoder_layers"]):
        out.append(f"  decoder layer {i} vs nn.TransformerDecoderLayer:  {gap:.1e}")
    out += [
        f"  both stacks vs nn.Transformer:                 {view['stack']:.1e}",
        f"  LayerNorm by hand ((x - mean) / sqrt(var + eps) * gamma + beta, biased variance) "
        f"vs nn.LayerNorm: {view['layer_norm']:.1e}",
        "",
        "same computation (float rounding only)"
        if worst < REFERENCE_TOLERANCE
        else f"DIFFERENT: a difference of {worst:.1e} is not rounding",
    ]
    return "\n".join(out)
