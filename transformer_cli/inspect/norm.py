"""`tfx inspect norm`: why LayerNorm, not BatchNorm. BatchNorm's statistics include padding.

At the input of the first encoder layer (scaled embeddings plus positions, captured by
a hook on the model's own layer), BatchNorm would normalise each feature by its mean and
variance over every (sentence, position) slot of the batch, pad slots included, unless
it were told which slots are real. LayerNorm normalises each token by the mean and
variance of its own features, so no other slot, padding or not, can change them.
"""

from __future__ import annotations

import typing

from transformer_cli.core.config import Config


def first_layer_input(model, src):
    """The tensor the first encoder layer receives for `src`: (B, S, D)."""
    import torch

    seen = []
    hook = model.encoder.layers[0].register_forward_pre_hook(lambda _, a: seen.append(a[0]))
    try:
        with torch.no_grad():
            model.encode(src)
    finally:
        hook.remove()
    return seen[0]


def norm_statistics(x, real) -> dict:
    """BatchNorm's per-feature and LayerNorm's per-token statistics of `x`.

    Args:
        x: (B, S, D) activations; real: (B, S) bool, True at real tokens.
    Returns:
        per feature (D lists): `batchnorm_mean/var` over all B*S slots, as
        `nn.BatchNorm1d` computes them in training mode (biased variance), and
        `real_mean/var` over the real slots only; per real token (N lists):
        `layernorm_mean/var` over its D features.
    """
    import torch
    from torch import nn

    d = x.size(-1)
    every = x.reshape(-1, d).double()  # (B*S, D): what BatchNorm sees
    bn = nn.BatchNorm1d(d, momentum=1.0, dtype=torch.float64).train()  # keeps this batch's
    bn(every)
    n = every.size(0)
    bn_mean, bn_var = typing.cast("torch.Tensor", bn.running_mean), bn.running_var
    bn_var = typing.cast("torch.Tensor", bn_var) * (n - 1) / n  # stored unbiased; used biased
    tokens = x[real].double()  # (N, D) real tokens only
    return {
        "batchnorm_mean": bn_mean.tolist(),
        "batchnorm_var": bn_var.tolist(),
        "real_mean": tokens.mean(0).tolist(),
        "real_var": tokens.var(0, unbiased=False).tolist(),
        "layernorm_mean": tokens.mean(-1).tolist(),
        "layernorm_var": tokens.var(-1, unbiased=False).tolist(),
    }


def norm_view(model, cfg: Config, batch, source: str) -> dict:
    """The statistics of one real batch, and the same tokens' LayerNorm statistics
    computed with each sentence alone (no padding at all)."""
    import torch

    from transformer_cli.core.specials import PAD_ID

    src = batch.src  # (B, S)
    real = src != PAD_ID
    stats = norm_statistics(first_layer_input(model, src), real)
    alone = [first_layer_input(model, row[row != PAD_ID][None])[0] for row in src]
    alone_x = torch.cat(alone)  # (N, D), in the same order as x[real]
    alone_stats = norm_statistics(alone_x[None], torch.ones(1, len(alone_x), dtype=torch.bool))
    mean_shift = _gap(stats["batchnorm_mean"], stats["real_mean"])
    var_shift = _gap(stats["batchnorm_var"], stats["real_var"])
    ln_gap = max(
        _gap(stats["layernorm_mean"], alone_stats["layernorm_mean"]),
        _gap(stats["layernorm_var"], alone_stats["layernorm_var"]),
    )
    return {
        "source": source,
        "d_model": cfg.model.d_model,
        "shape": list(src.shape),
        "slots": src.numel(),
        "real_slots": int(real.sum()),
        **stats,
        "batchnorm_mean_shift": mean_shift,  # max over features |with pads - real only|
        "batchnorm_var_shift": var_shift,
        "typical_std": float(torch.tensor(stats["real_var"]).sqrt().mean()),
        "layernorm_alone_gap": ln_gap,  # max |in the padded batch - sentence alone|
    }


def _gap(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


def format_norm(view: dict) -> str:
    """The norm view as the text `tfx inspect norm` prints."""
    b, s = view["shape"]
    pads = view["slots"] - view["real_slots"]
    ln_mean, ln_var = view["layernorm_mean"], view["layernorm_var"]
    out = [
        f"the input of the first encoder layer (sqrt(d_model) * embedding + position) of "
        f"{view['source']}, on one training batch: {b} sentences x {s} positions = "
        f"{view['slots']} slots, {pads} of them padding ({pads / view['slots']:.0%})",
        "",
        f"BatchNorm: one mean and variance per feature, over all {view['slots']} slots",
        f"  largest change padding makes to a feature's mean:     "
        f"{view['batchnorm_mean_shift']:.4f}",
        f"  largest change padding makes to a feature's variance: "
        f"{view['batchnorm_var_shift']:.4f}",
        f"  (a typical feature's standard deviation: {view['typical_std']:.4f})",
        "  feature  mean (all slots)  mean (real only)  var (all slots)  var (real only)",
    ]
    for f in range(min(6, view["d_model"])):
        out.append(
            f"  {f:>7}  {view['batchnorm_mean'][f]:>16.4f}  {view['real_mean'][f]:>16.4f}  "
            f"{view['batchnorm_var'][f]:>15.4f}  {view['real_var'][f]:>15.4f}"
        )
    out += [
        "",
        f"LayerNorm: one mean and variance per token, over its {view['d_model']} features",
        f"  over the {len(ln_mean)} real tokens: mean {min(ln_mean):.4f} .. {max(ln_mean):.4f}"
        f", variance {min(ln_var):.4f} .. {max(ln_var):.4f}",
        f"  the same tokens with each sentence alone (no padding anywhere): largest "
        f"difference {view['layernorm_alone_gap']:.1e}",
        "",
        "conclusion: BatchNorm's statistics depend on how much padding the batch holds, "
        "which depends on which sentences were batched together; LayerNorm's depend on "
        "the token alone, so padding cannot reach them (and a sentence normalises the "
        "same in training, in any batch, and when translated alone)",
    ]
    if not pads:
        out.insert(1, "(this batch has no padding, so both BatchNorm columns agree)")
    return "\n".join(out)
