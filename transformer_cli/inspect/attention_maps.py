"""Attention maps of one translation: `tfx translate --plot-attention` and `tfx inspect attention`.

The weights are the model's own: greedy decoding, then one teacher-forced pass inside
`recorded_attention`, whose forward hooks keep every attention's probabilities.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transformer_cli.core.config import DecodeConfig
from transformer_cli.core.console import wrote
from transformer_cli.core.errors import ConfigError, DataError


@dataclass
class AttentionMap:
    """Attention probabilities of one sentence, with labels for both axes."""

    weights: object  # (T_out, S_in) float tensor; every row sums to 1
    src_pieces: list[str]  # S_in column labels: source pieces (decoder inputs for self)
    out_pieces: list[str]  # T_out row labels: the piece each query row predicts
    hypothesis: list[int]  # the greedy output's piece ids, without BOS/EOS
    translation: str  # the same, detokenized
    title: str


def attention_map(
    model,
    tokenizer,
    text: str,
    *,
    layer: int = -1,
    head: int | None = None,
    self_attention: bool = False,
    decode_cfg: DecodeConfig | None = None,
) -> AttentionMap:
    """Greedy-decode `text`, then teacher-force the result once and read the attention.

    Args:
        model: a `Transformer`; tokenizer: its `Tokenizer`.
        layer: decoder layer, 0-based; negative counts from the end (-1 = the last).
        head: a head, 0-based (negative from the end), or None for the mean over heads.
        self_attention: the decoder's masked self-attention instead of cross-attention.
        decode_cfg: a `DecodeConfig` for the output length cap (default: its defaults).
    Returns:
        cross-attention: (T_out, S) weights, T_out output pieces by S source pieces;
        self-attention: (T_out, T_out) over the decoder input pieces <s> y1 .. yn.
    """
    import torch

    from transformer_cli.core.specials import BOS_ID
    from transformer_cli.decoding.limits import fit_sources
    from transformer_cli.decoding.runner import decode_all, greedy

    layers, heads = len(model.decoder.layers), model.cfg.heads
    _check_choice(layer, head, layers, heads)
    (ids,), _ = fit_sources(tokenizer.encode_src([text]), model.cfg.max_positions)
    if not ids:
        raise DataError("nothing to show: the sentence is empty")
    device = next(model.parameters()).device
    greedy_cfg = greedy(decode_cfg or DecodeConfig())
    hyp = decode_all(model, [ids], greedy_cfg, device)[0]
    tgt_in = torch.tensor([[BOS_ID, *hyp]], device=device)[:, : model.cfg.max_positions]
    src = torch.tensor([ids], device=device)
    weights, last = _recorded(model, src, tgt_in, layer, self_attention)
    weights = weights.mean(0) if head is None else weights[head]  # (T, S)
    # row t is the query at decoder input t, which predicts piece t + 1 of the output;
    # the last row's prediction is what greedy search stopped on (normally </s>)
    out_pieces = tokenizer.tgt_pieces([*hyp, last])[: tgt_in.size(1)]
    keys = (
        tokenizer.tgt_pieces(tgt_in[0])
        if self_attention
        else tokenizer.src_pieces(text)[: len(ids)]
    )
    translation = tokenizer.decode_tgt([hyp])[0]
    which = "decoder self-attention" if self_attention else "cross-attention"
    head_txt = "mean of heads" if head is None else f"head {head % heads}"
    title = (
        f"{which}, decoder layer {layer % layers} of 0..{layers - 1}, {head_txt} "
        f"(greedy)\n{text}  ->  {translation}"
    )
    return AttentionMap(weights, list(keys), list(out_pieces), hyp, translation, title)


def _check_choice(layer: int, head: int | None, layers: int, heads: int) -> None:
    if not -layers <= layer < layers:
        raise ConfigError(
            f"--layer {layer}: the decoder has {layers} layers "
            f"(0..{layers - 1}, or -1 for the last)"
        )
    if head is not None and not -heads <= head < heads:
        raise ConfigError(f"--head {head}: each layer has {heads} heads (0..{heads - 1}, or mean)")


@contextmanager
def recorded_attention(model) -> Iterator[dict]:
    """Within: each attention module of `model` computes eq. 1 written out (`attend_math`),
    whatever its configured path (the fused kernel never forms the probabilities), and
    its last probabilities (B, H, T, S), detached, are kept by module in the dict given.

    Forward hooks on every `Attention.scaled_dot_product`; they are removed on leaving,
    even by an exception, and nothing of the model is changed.
    """
    from transformer_cli.model.attention import Attention, attend_math

    weights: dict = {}

    def keep(attention):
        def hook(core, args, _fused):
            q, k, v, mask, *relative = args  # Shaw's terms, where model.positional is relative
            dropout = core.dropout if core.training else 0.0
            out, probs = attend_math(q, k, v, mask, dropout, *relative)
            weights[attention] = probs.detach()
            return out  # the math path's output replaces the configured path's

        return hook

    handles = [
        module.scaled_dot_product.register_forward_hook(keep(module))
        for module in model.modules()
        if isinstance(module, Attention)
    ]
    try:
        yield weights
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def evaluating(model) -> Iterator[None]:
    """Within: `model` in eval mode; on leaving, every module in the mode it was in."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _recorded(model, src, tgt_in, layer: int, self_attention: bool):
    """One teacher-forced pass with attention recorded: that layer's (H, T, S) weights,
    and the piece predicted after the last input."""
    import torch

    with evaluating(model), recorded_attention(model) as weights, torch.no_grad():
        memory = model.encode(src)
        hidden = model.decode_hidden(tgt_in, memory, src)  # (1, T, D)
        last = model.logits(hidden[0, -1]).argmax().item()
    block = model.decoder.layers[layer]
    attn = block.self_attn if self_attention else block.cross_attn
    return weights[attn][0].float().cpu(), last  # (H, T, S)


def plot_translation_attention(
    checkpoint: str | Path,
    text: str,
    output: str | Path,
    *,
    layer: int = -1,
    head: str = "mean",
    self_attention: bool = False,
    device: str = "auto",
) -> Path:
    """Load a checkpoint, compute `attention_map` for `text` and draw it into `output`.

    `head` is the CLI's spelling: a head number, or "mean" for the mean over heads.
    """
    from transformer_cli.core.runtime import device_option
    from transformer_cli.decoding.loading import load_model
    from transformer_cli.inspect.plots import plot_attention

    if head == "mean":
        head_index = None
    else:
        try:
            head_index = int(head)
        except ValueError:
            raise ConfigError(f"--head {head}: give a head number or 'mean'") from None
    model, tokenizer, cfg = load_model(checkpoint, device_option(device))
    view = attention_map(
        model,
        tokenizer,
        text,
        layer=layer,
        head=head_index,
        self_attention=self_attention,
        decode_cfg=cfg.decode,
    )
    key_label = "decoder input piece (key)" if self_attention else "source piece (key)"
    return plot_attention(
        view.weights, view.src_pieces, view.out_pieces, output, view.title, key_label=key_label
    )


def plot_first_attention(
    checkpoint: str | Path,
    texts: list[str] | None,
    output: str | Path,
    *,
    layer: int = -1,
    head: str = "mean",
    self_attention: bool = False,
    device: str = "auto",
) -> Path:
    """`tfx translate CKPT TEXT... --plot-attention FILE`: draw the first TEXT's attention."""
    if not texts:
        raise ConfigError("--plot-attention draws a sentence given as a TEXT argument; give one")
    path = plot_translation_attention(
        checkpoint,
        texts[0],
        output,
        layer=layer,
        head=head,
        self_attention=self_attention,
        device=device,
    )
    wrote(path)
    return path
