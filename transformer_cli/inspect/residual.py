"""`tfx inspect residual`: why the residual path keeps gradients alive with depth.

A layer computes y = x + F(x), so dy/dx = 1 + F'(x): the gradient reaching a layer's
input is the one reaching its output plus whatever flows back through F. Without the
x term, every gradient must pass through every sublayer on its way down.

The view measures the gradient of the training loss (the model's own `batch_loss`,
per target token) with respect to each layer's input, captured by hooks on the
model's layers, on one real batch: as the model is, and with the same weights and
the residual connections removed (`residuals_removed`: each layer's forward written
here without the x term, which the model's own layers never carry).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import MethodType
from typing import Any

from transformer_cli.core.config import Config


def layer_input_gradients(model, batch, label_smoothing: float) -> list[float]:
    """The norm of d(loss per token)/d(input) of every layer, encoder first, then decoder."""
    import torch

    from transformer_cli.training.loss import batch_loss

    layers = [*model.encoder.layers, *model.decoder.layers]
    inputs: list = [None] * len(layers)

    def keep(i: int):
        def hook(_module, args):
            inputs[i] = args[0]

        return hook

    hooks = [layer.register_forward_pre_hook(keep(i)) for i, layer in enumerate(layers)]
    try:
        with torch.enable_grad():
            parts = batch_loss(model, batch, label_smoothing, torch.device("cpu"), "fp32", False)
            grads = torch.autograd.grad(parts.loss / parts.n_tokens, inputs)
    finally:
        for h in hooks:
            h.remove()
    return [g.norm().item() for g in grads]


def token_spread(model, src) -> float:
    """How different the encoder's output tokens are within a sentence: the mean over
    sentences of |H - mean(H)| / |H| over the real rows H (0 = every token the same)."""
    import torch

    from transformer_cli.core.specials import PAD_ID

    with torch.no_grad():
        memory = model.encode(src)  # (B, S, D)
    spreads = []
    for h, ids in zip(memory, src, strict=True):
        rows = h[ids != PAD_ID].double()  # (n, D)
        if len(rows) > 1:
            spreads.append(((rows - rows.mean(0)).norm() / rows.norm()).item())
    return sum(spreads) / len(spreads) if spreads else 0.0


def encoder_layer_without_residual(layer, x, mask, positions=None):
    """`EncoderLayer.forward` with the x of every x + Sublayer(x) removed: (B, S, D)."""
    drop = layer.dropout
    if layer.pre_norm:
        x = drop(layer.self_attn(layer.norm1(x), mask, None, positions))
        return drop(layer.ff(layer.norm2(x)))
    x = layer.norm1(drop(layer.self_attn(x, mask, None, positions)))
    return layer.norm2(drop(layer.ff(x)))


def decoder_layer_without_residual(
    layer, x, memory, self_mask, cross_mask, cache=None, positions=None
):
    """`DecoderLayer.forward` with the x of every x + Sublayer(x) removed: (B, T, D)."""
    drop = layer.dropout
    if layer.pre_norm:
        x = drop(layer.self_attn(layer.norm1(x), self_mask, cache, positions))
        x = drop(layer.cross_attn(layer.norm2(x), memory, cross_mask, cache))
        return drop(layer.ff(layer.norm3(x)))
    x = layer.norm1(drop(layer.self_attn(x, self_mask, cache, positions)))
    x = layer.norm2(drop(layer.cross_attn(x, memory, cross_mask, cache)))
    return layer.norm3(drop(layer.ff(x)))


@contextmanager
def residuals_removed(model) -> Iterator[None]:
    """Within: every layer of `model` computes Sublayer(x) where it computed x + Sublayer(x).

    Each layer's forward is shadowed, on that instance, by the function above for its
    kind (its hooks still run); on leaving, even by an exception, the shadows are
    removed and the layers are what they were.
    """
    shadowed: list[tuple[Any, Callable[..., Any]]] = [
        *((layer, encoder_layer_without_residual) for layer in model.encoder.layers),
        *((layer, decoder_layer_without_residual) for layer in model.decoder.layers),
    ]
    try:
        for layer, forward in shadowed:
            layer.forward = MethodType(forward, layer)
        yield
    finally:
        for layer, _ in shadowed:
            vars(layer).pop("forward", None)


def with_and_without(model, batch, label_smoothing: float) -> dict:
    """Gradients and the encoder's token spread with the residual connections, and
    with them removed."""
    result = {
        "with": layer_input_gradients(model, batch, label_smoothing),
        "spread_with": token_spread(model, batch.src),
    }
    with residuals_removed(model):
        result["without"] = layer_input_gradients(model, batch, label_smoothing)
        result["spread_without"] = token_spread(model, batch.src)
    return result


def residual_view(cfg: Config, batch, trained=None, source: str = "") -> dict:
    """Gradient norms by depth, with and without the residual path.

    `trained` (a checkpoint's model) is measured as it is; without it, fresh models of
    `cfg`'s shape are built in both norm orders, post-norm and pre-norm, with one seed.
    """
    import dataclasses

    from transformer_cli.inspect.subject import fresh_model

    smoothing = cfg.train.label_smoothing
    runs = {}
    if trained is not None:
        runs[cfg.model.norm] = with_and_without(trained, batch, smoothing)
    else:
        for norm in ("post", "pre"):
            shaped = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, norm=norm))
            runs[norm] = with_and_without(fresh_model(shaped), batch, smoothing)
    return {
        "source": source,
        "enc_layers": cfg.model.enc_layers,
        "dec_layers": cfg.model.dec_layers,
        "labels": [f"enc {i}" for i in range(cfg.model.enc_layers)]
        + [f"dec {i}" for i in range(cfg.model.dec_layers)],
        "n_tokens": batch.n_tokens,
        "runs": runs,
    }


def format_residual(view: dict) -> str:
    """The residual view as the text `tfx inspect residual` prints."""
    runs = view["runs"]
    out = [
        f"|d loss / d input| of every layer, {view['source']}, one training batch "
        f"({view['n_tokens']} target tokens; loss per token, as training computes it)",
        "  the residual y = x + F(x) gives dy/dx = 1 + F'(x): the gradient has a path "
        "around every sublayer",
        "",
        "  layer   " + "".join(f"{f'{n}-norm with':>15}{f'{n}-norm without':>18}" for n in runs),
    ]
    for i, label in enumerate(view["labels"]):
        row = "".join(f"{r['with'][i]:>15.3e}{r['without'][i]:>18.3e}" for r in runs.values())
        out.append(f"  {label:<8}{row}")
    out.append("")
    enc, dec = 0, view["enc_layers"]
    for norm, r in runs.items():
        out.append(
            f"{norm}-norm: the first encoder layer gets {r['with'][enc]:.2e} with the residual "
            f"path and {r['without'][enc]:.2e} without ({_ratio(r, enc)}); the first decoder "
            f"layer {r['with'][dec]:.2e} and {r['without'][dec]:.2e} ({_ratio(r, dec)})"
        )
        out.append(
            f"  the encoder's output tokens within a sentence differ by {r['spread_with']:.3f} "
            f"with residuals and {r['spread_without']:.2e} without (|H - mean H| / |H|)"
        )
    out += [
        "without residuals each layer must carry a token's own content through attention, "
        "which averages over tokens; the deeper the stack, the closer the tokens come to "
        "one vector (rank collapse: the spread above). Cross-attention over identical keys "
        "is uniform whatever the query, so the decoder's own input stops reaching the "
        "loss and its gradient vanishes. LayerNorm rescales what is left, which is why "
        "a gradient's size alone can mislead: try --set model.enc_layers=8 "
        "--set model.dec_layers=8",
    ]
    return "\n".join(out)


def _ratio(run: dict, i: int) -> str:
    with_, without = run["with"][i], run["without"][i]
    if without == 0:
        return "none at all without"
    return f"{with_ / without:.3g}x"
