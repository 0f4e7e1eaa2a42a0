"""`tfx inspect positions --checkpoint`: where relative position goes after W_q and W_k.

PE(pos) . PE(pos + k) = sum_i cos(k w_i): a function of the offset k alone, so the
matrix of dot products of the raw encodings is Toeplitz (constant along each
diagonal). Self-attention does not compare raw encodings but their projections,
(PE(pos) W_q) . (PE(pos + k) W_k) = PE(pos) W_q W_k^T PE(pos + k)^T, and a general
W_q W_k^T mixes the rotation pairs, so the scores now depend on pos too. The view
measures that on a trained encoder layer (the first by default), head by head (weights
only: the biases add terms linear in one position, which are not Toeplitz either).

`rope` and `relative` models add no table; their position enters inside attention,
after W_q and W_k (model/positions.py). For them the view scores one fixed content
vector placed at every position against itself, and the result is Toeplitz by
construction, in every head, whatever the weights learned.
"""

from __future__ import annotations

import math

from transformer_cli.core.errors import ConfigError

TOEPLITZ_TOLERANCE = 1e-6  # float32 rounding: ~1e-8 for the tables, ~3e-7 for rope


def diagonal_spread(matrix) -> float:
    """How far a square matrix is from Toeplitz: the largest range (max - min) along any
    diagonal, divided by the largest |entry|; 0 for a Toeplitz matrix."""
    import torch

    m = torch.as_tensor(matrix, dtype=torch.float64)
    n = m.size(0)
    if m.dim() != 2 or m.size(1) != n:
        raise ValueError(f"need a square matrix, got shape {tuple(m.shape)}")
    scale = m.abs().max().item()
    if scale == 0:
        return 0.0
    worst = 0.0
    for k in range(-(n - 1), n):
        d = torch.diagonal(m, k)
        worst = max(worst, (d.max() - d.min()).item())
    return worst / scale


def projected_dots(table, w_q, w_k, heads: int) -> list:
    """Per head h, (PE W_q^h)(PE W_k^h)^T / sqrt(d_k): the position part of the scores.

    Args:
        table: (L, D) positional encodings; w_q, w_k: (D, D) as nn.Linear stores them
            (out, in), heads in consecutive blocks of D / heads output rows.
    Returns:
        heads tensors of shape (L, L).
    """
    d = table.size(1)
    d_k = d // heads
    q = (table @ w_q.T).view(-1, heads, d_k).transpose(0, 1)  # (L, D) -> (H, L, K)
    k = (table @ w_k.T).view(-1, heads, d_k).transpose(0, 1)  # (H, L, K)
    return list(q @ k.transpose(1, 2) / math.sqrt(d_k))  # H x (L, L)


CONTENT_SEED = 0  # the fixed content vector placed at every position (rope, relative)


def position_scores(model, layer: int, length: int) -> list:
    """Per head, the position part of encoder layer `layer`'s scores, (L, L) each.

    sinusoidal, learned: (P W_q^h)(P W_k^h)^T / sqrt(d_k), P the table the model adds.
    rope, relative: no table is added, so place one content vector c at every position
    and score it against itself: rope (R(m) W_q^h c) . (R(n) W_k^h c) / sqrt(d_k);
    relative, the term Shaw add, (W_q^h c) . a^K(clip(n - m)) / sqrt(d_k). Weights only,
    as for the tables (the biases add terms linear in one position).
    """
    import torch

    from transformer_cli.model.positions import Positions

    cfg, d = model.cfg, model.cfg.d_model
    attn = model.encoder.layers[layer].self_attn
    w = attn.in_proj.weight.double()  # (3D, D): q, k, v
    if model.src_pos is not None:
        return projected_dots(model.src_pos(length).double(), w[:d], w[d : 2 * d], cfg.heads)
    g = torch.Generator().manual_seed(CONTENT_SEED)
    c = torch.randn(d, generator=g, dtype=torch.float64).expand(length, d)  # (L, D)
    d_k = d // cfg.heads
    q = (c @ w[:d].T).view(length, cfg.heads, d_k).transpose(0, 1)  # (L, D) -> (H, L, K)
    k = (c @ w[d : 2 * d].T).view(length, cfg.heads, d_k).transpose(0, 1)
    where = Positions.span(0, length)
    if attn.rotary is not None:
        q, k = attn.rotary(q[None], where.query)[0], attn.rotary(k[None], where.query)[0]
        scores = q @ k.transpose(1, 2)  # (H, L, L)
    else:
        scores = attn.relative(where).key_scores(q[None])[0].double()  # (H, L, L)
    return list(scores / math.sqrt(d_k))


def embedding_scale(model) -> dict:
    """Mean |sqrt(d_model) * embedding| over the vocabulary, and mean |position vector|."""
    scaled = model.src_embed.weight.double() * model.embed_scale  # (V, D)
    table = None if model.src_pos is None else model.src_pos.table.double()
    return {
        "embedding_norm": scaled.norm(dim=-1).mean().item(),
        "position_norm": None if table is None else table.norm(dim=-1).mean().item(),
    }


def trained_positions_view(model, length: int, source: str, layer: int = 0) -> dict:
    """The position part of encoder layer `layer`'s scores, head by head, beside the
    sinusoidal table through the same W_q and W_k; and the embeddings' scale, trained and
    at initialisation (a fresh model of the same config)."""
    import torch

    from transformer_cli.model.positions import sinusoidal_table
    from transformer_cli.model.transformer import Transformer

    cfg = model.cfg
    layers = cfg.enc_layers
    if not 0 <= layer < layers:
        raise ConfigError(f"--layer {layer}: the encoder has {layers} layers (0..{layers - 1})")
    if length < 2:
        raise ConfigError(f"--length must be >= 2, got {length}")
    length = min(length, cfg.max_positions)
    d = cfg.d_model
    with torch.no_grad():
        pe = sinusoidal_table(length, d).double()  # (L, D)
        raw = pe @ pe.T if model.src_pos is None else model.src_pos(length).double()
        raw = raw if model.src_pos is None else raw @ raw.T  # (L, L)
        heads = position_scores(model, layer, length)
        w = model.encoder.layers[layer].self_attn.in_proj.weight.double()
        sinusoid = projected_dots(pe, w[:d], w[d : 2 * d], cfg.heads)
        with torch.random.fork_rng():  # the caller's random state is left as it was
            torch.manual_seed(0)
            initial = embedding_scale(Transformer(cfg))
        trained = embedding_scale(model)
    return {
        "source": source,
        "positional": cfg.positional,
        "length": length,
        "layer": layer,
        "d_model": d,
        "raw": raw.tolist(),
        "raw_spread": diagonal_spread(raw),
        "heads": [h.tolist() for h in heads],
        "head_spreads": [diagonal_spread(h) for h in heads],
        "sinusoid_head_spreads": [diagonal_spread(h) for h in sinusoid],
        "embed_scale": model.embed_scale,
        "embedding_init": cfg.embedding_init,
        **trained,
        "initial": initial,
    }


SCORES = {
    "sinusoidal": "(PE W_q)(PE W_k)^T / sqrt(d_k)",
    "learned": "(P W_q)(P W_k)^T / sqrt(d_k), P learned",
    "rope": "(R(m) W_q c) . (R(n) W_k c) / sqrt(d_k)",
    "relative": "(W_q c) . a^K(clip(n - m)) / sqrt(d_k)",
}
READING = {
    "sinusoidal": "after the projections the scores depend on where the pair is, not only "
    "on k: W_q W_k^T mixes the sin/cos pairs that made the raw product shift-invariant",
    "learned": "a learned table need not be shift-invariant even before the projections",
    "rope": "the rotation comes after W_q and W_k, and R(m)^T R(n) = R(n - m): the scores "
    "depend on the offset alone in every head, whatever the weights learned",
    "relative": "the offset's vector is looked up inside attention, after W_q: a function "
    "of clip(n - m, -k, k) alone in every head; beyond +-k one vector serves all",
}


def _verdict(spread: float) -> str:
    return "a function of k only" if spread < TOEPLITZ_TOLERANCE else "NOT Toeplitz"


def format_trained_positions(view: dict) -> str:
    """The trained part of `tfx inspect positions --checkpoint` as text."""
    from transformer_cli.model.positions import in_attention

    kind, raw = view["positional"], view["raw_spread"]
    added = not in_attention(kind)
    what = (
        "PE(pos) . PE(pos+k), the raw encodings"
        if added
        else "nothing is added to the input; the sinusoid's PE . PE"
    )
    out = [
        f"relative position in {view['source']}, positions 0..{view['length'] - 1}, "
        f"model.positional: {kind}",
        "  spread = the largest range along any diagonal / the largest entry (0 = the "
        "matrix depends on the offset k alone)",
        f"  {what}: spread {raw:.1e} ({_verdict(raw)})",
    ]
    if not added:
        out.append("  c: one fixed content vector at every position, scored against itself")
    side = kind != "sinusoidal"
    out.append(
        f"  encoder layer {view['layer']}, {SCORES[kind]}"
        + (";  beside it: the sinusoid through the same W_q, W_k" if side else "")
    )
    for h, s in enumerate(view["head_spreads"]):
        row = f"    head {h}: spread {s:.1e} ({_verdict(s)})"
        if side:
            row = f"{row:<48}  sinusoid: spread {view['sinusoid_head_spreads'][h]:.3f}"
        out.append(row)
    out += [f"  {READING[kind]}", "", _scale_text(view)]
    return "\n".join(out)


def _scale_text(view: dict) -> str:
    """|sqrt(d) E| against |PE|, trained and at initialisation."""
    e, e0 = view["embedding_norm"], view["initial"]["embedding_norm"]
    head = (
        f"scale: |sqrt(d_model) * embedding| = {e:.2f} on average over the vocabulary, "
        f"{e0:.2f} at initialisation (model.embedding_init: {view['embedding_init']}; "
        f"sqrt(d_model) = {view['embed_scale']:.2f})"
    )
    p, p0 = view["position_norm"], view["initial"]["position_norm"]
    if p is None:
        return f"{head}\n  no position vector is added: the input is the token alone"
    return (
        f"{head}\n  |position vector| = {p:.2f} ({p0:.2f} at initialisation): the token "
        f"carries {e / p:.2f}x the position's size ({e0 / p0:.2f}x at initialisation)"
    )
