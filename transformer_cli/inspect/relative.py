"""`tfx inspect positions --checkpoint`: where relative position goes after W_q and W_k.

PE(pos) . PE(pos + k) = sum_i cos(k w_i): a function of the offset k alone, so the
matrix of dot products of the raw encodings is Toeplitz (constant along each
diagonal). Self-attention does not compare raw encodings but their projections,
(PE(pos) W_q) . (PE(pos + k) W_k) = PE(pos) W_q W_k^T PE(pos + k)^T, and a general
W_q W_k^T mixes the rotation pairs, so the scores now depend on pos too. The view
measures that on a trained encoder layer (the first by default), head by head (weights only: the
biases add terms linear in one position, which are not Toeplitz either).
"""

from __future__ import annotations

import math

from transformer_cli.core.errors import ConfigError

TOEPLITZ_TOLERANCE = 1e-6  # relative spread of float32 rounding is ~1e-8


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


def trained_positions_view(model, length: int, source: str, layer: int = 0) -> dict:
    """The raw dot products, the ones projected by encoder layer `layer`'s W_q and W_k,
    and the embeddings' scale, of a model."""
    import torch

    cfg = model.cfg
    if cfg.positional != "sinusoidal":
        raise ConfigError(
            f"{source}: model.positional is {cfg.positional}; this view is about the "
            "sinusoidal encoding"
        )
    layers = cfg.enc_layers
    if not 0 <= layer < layers:
        raise ConfigError(f"--layer {layer}: the encoder has {layers} layers (0..{layers - 1})")
    if length < 2:
        raise ConfigError(f"--length must be >= 2, got {length}")
    length = min(length, cfg.max_positions)
    d = cfg.d_model
    with torch.no_grad():
        pe = model.src_pos(length).double()  # (L, D), the table the model adds
        raw = pe @ pe.T  # (L, L)
        w = model.encoder.layers[layer].self_attn.in_proj.weight.double()  # (3D, D): q, k, v
        heads = projected_dots(pe, w[:d], w[d : 2 * d], cfg.heads)
        scaled = model.src_embed.weight.double() * model.embed_scale  # (V, D)
    return {
        "source": source,
        "length": length,
        "layer": layer,
        "d_model": d,
        "raw": raw.tolist(),
        "raw_spread": diagonal_spread(raw),
        "heads": [h.tolist() for h in heads],
        "head_spreads": [diagonal_spread(h) for h in heads],
        "embed_scale": model.embed_scale,
        "embedding_norm": scaled.norm(dim=-1).mean().item(),  # mean over the vocabulary
        "position_norm": pe.norm(dim=-1).mean().item(),  # sqrt(D / 2) for every position
    }


def format_trained_positions(view: dict) -> str:
    """The trained part of `tfx inspect positions --checkpoint` as text."""
    raw = view["raw_spread"]
    out = [
        f"relative position in {view['source']}, positions 0..{view['length'] - 1}",
        "  spread = the largest range along any diagonal / the largest entry (0 = the "
        "matrix depends on the offset k alone)",
        f"  PE(pos) . PE(pos+k), the raw encodings:          spread {raw:.1e}  "
        f"({'a function of k only' if raw < TOEPLITZ_TOLERANCE else 'NOT Toeplitz'})",
    ]
    for h, s in enumerate(view["head_spreads"]):
        out.append(
            f"  (PE W_q)(PE W_k)^T / sqrt(d_k), encoder layer {view['layer']} head {h}: "
            f"spread {s:.3f}"
        )
    out += [
        "  after the projections the scores depend on where the pair is, not only on k: "
        "W_q W_k^T mixes the sin/cos pairs that made the raw product shift-invariant",
        "",
        f"scale: |sqrt(d_model) * embedding| = {view['embedding_norm']:.2f} on average over "
        f"the vocabulary (sqrt(d_model) = {view['embed_scale']:.2f}), |PE(pos)| = "
        f"{view['position_norm']:.2f} = sqrt(d_model / 2) at every position: the token "
        f"carries {view['embedding_norm'] / view['position_norm']:.2f}x the position's size",
    ]
    return "\n".join(out)
