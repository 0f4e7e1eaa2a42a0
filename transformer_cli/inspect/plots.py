"""Matplotlib figures for `tfx plot` and `tfx inspect`: PNGs, headless (Agg backend).

Every function takes plain numbers (lists or tensors) that the caller computed with the
code training uses, and draws them; nothing here computes a mask, a score or a rate.
matplotlib is imported inside the functions, so that `tfx --help` stays instant.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

# colours of the mask figures: what a query may attend to, and why a key is blocked
ATTEND = "#2b6cb0"
BLOCKED = "#e2e8f0"
LOOK_AHEAD = "#ed8936"
PADDING = "#a0aec0"
BOTH = "#744210"

MAX_LABELLED_TICKS = 40  # beyond this, piece labels become unreadable: show indices


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Render to PNG in memory, then write atomically: no half-written image on failure."""
    from transformer_cli.core.fileio import atomic_write_bytes

    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _index_ticks(ax, axis: str, n: int) -> None:
    """Integer ticks on one axis, at most ~12 of them."""
    from matplotlib.ticker import MaxNLocator

    locator = MaxNLocator(nbins=12, integer=True)
    if axis == "x":
        ax.xaxis.set_major_locator(locator)
        ax.set_xlim(-0.5, n - 0.5)
    else:
        ax.yaxis.set_major_locator(locator)
        ax.set_ylim(n - 0.5, -0.5)  # row 0 on top, as imshow draws it


def _label_ticks(ax, axis: str, labels: Sequence[str], rotate: bool = False) -> None:
    """One tick per label when they fit, else integer indices."""
    n = len(labels)
    if n > MAX_LABELLED_TICKS:
        _index_ticks(ax, axis, n)
        return
    size = 9 if n <= 20 else 7
    if axis == "x":
        ax.set_xticks(range(n))
        ax.set_xticklabels(labels, rotation=90 if rotate else 0, fontsize=size)
    else:
        ax.set_yticks(range(n))
        ax.set_yticklabels(labels, fontsize=size)


def _grid(ax, values, colors: Sequence[str], annotate: bool) -> None:
    """Draw a small integer matrix with one colour per value, optionally writing 0/1."""
    from matplotlib.colors import ListedColormap

    rows = [list(map(int, r)) for r in values]
    ax.imshow(
        rows,
        cmap=ListedColormap(list(colors)),
        vmin=0,
        vmax=len(colors) - 1,
        interpolation="nearest",
        aspect="auto",
    )
    if annotate and rows and len(rows) * len(rows[0]) <= 600 and len(rows[0]) <= 24:
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                ax.text(
                    j,
                    i,
                    str(v),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v else "black",
                )


def _legend(ax, entries: Sequence[tuple[str, str]]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, edgecolor="#4a5568", label=label) for label, c in entries]
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False
    )


# ----------------------------------------------------------------------------- masks


def plot_masks(view: dict, path: str | Path) -> Path:
    """The four masks of one batch (a `batch.batch_view` dict), one labelled panel each."""
    plt = _pyplot()
    rows = view["shown_rows"]
    row_names = [f"row {r}" for r in rows]
    src_width = len(view["source_padding"][0])
    tgt_width = len(view["look_ahead"])
    fig, axes = plt.subplots(2, 2, figsize=(13, 10))
    (a_src, a_look), (a_dec, a_loss) = axes

    _grid(a_src, view["source_padding"], [BLOCKED, ATTEND], annotate=True)
    a_src.set_title(
        "source padding mask: masks.padding_mask(src)\n"
        "(encoder self-attention and cross-attention keys)",
        fontsize=10,
    )
    a_src.set_xlabel("source position (key)")
    a_src.set_ylabel("sentence in the batch")
    _index_ticks(a_src, "x", src_width)
    _label_ticks(a_src, "y", row_names)
    _legend(a_src, [("1 = real token", ATTEND), ("0 = <pad>", BLOCKED)])

    _grid(a_look, view["look_ahead"], [BLOCKED, ATTEND], annotate=True)
    a_look.set_title(
        f"look-ahead mask: masks.causal_mask({tgt_width})\nquery i may attend to key j <= i",
        fontsize=10,
    )
    a_look.set_xlabel("target position j (key)")
    a_look.set_ylabel("target position i (query)")
    _index_ticks(a_look, "x", tgt_width)
    _index_ticks(a_look, "y", tgt_width)
    _legend(a_look, [("1 = may attend", ATTEND), ("0 = future", BLOCKED)])

    # why each entry of the combined mask is what it is: a union of the blocked sets
    k = view["decoder_row"]
    look = view["look_ahead"]
    pad = view["target_padding"][k]
    combined = view["decoder"][k]
    reasons = [
        [
            0 if combined[i][j] else (1 if not look[i][j] else 0) + (2 if not pad[j] else 0)
            for j in range(tgt_width)
        ]
        for i in range(tgt_width)
    ]
    _grid(a_dec, reasons, [ATTEND, LOOK_AHEAD, PADDING, BOTH], annotate=False)
    a_dec.set_title(
        f"decoder self-attention mask, row {rows[k]}: masks.decoder_mask(tgt_in)\n"
        "blocked = look-ahead (upper triangle) UNION target padding (right "
        "columns)",
        fontsize=10,
    )
    labels = [f"{i} {p}" for i, p in enumerate(view["tgt_in_pieces"][k])]
    _label_ticks(a_dec, "y", labels)
    _label_ticks(a_dec, "x", labels, rotate=True)
    a_dec.set_xlabel("decoder input position (key)")
    a_dec.set_ylabel("decoder input position (query)")
    _legend(
        a_dec,
        [
            ("may attend", ATTEND),
            ("blocked: future", LOOK_AHEAD),
            ("blocked: <pad> key", PADDING),
            ("blocked: both", BOTH),
        ],
    )

    _grid(a_loss, view["loss"], [BLOCKED, ATTEND], annotate=True)
    a_loss.set_title(
        "loss mask: positions masked_cross_entropy counts\n"
        "(tgt_out != <pad>; read off the loss's own gradient)",
        fontsize=10,
    )
    a_loss.set_xlabel("target position (decoder output)")
    a_loss.set_ylabel("sentence in the batch")
    _index_ticks(a_loss, "x", tgt_width)
    _label_ticks(a_loss, "y", row_names)
    _legend(a_loss, [("1 = counted", ATTEND), ("0 = ignored", BLOCKED)])

    fig.suptitle(
        f"{view['split']} batch {view['index']}: {view['batch_size']} sentences, "
        f"source width {src_width}, target width {tgt_width}"
    )
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- positions


def plot_positions(table, path: str | Path) -> Path:
    """Heatmap of a (positions, d_model) sinusoidal table, and a few dimensions as curves."""
    plt = _pyplot()
    rows = [list(map(float, r)) for r in table]
    length, d_model = len(rows), len(rows[0])
    fig, (a_map, a_lines) = plt.subplots(
        1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [1.15, 1]}
    )
    image = a_map.imshow(
        rows, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest"
    )
    fig.colorbar(image, ax=a_map, label="PE(pos, dim)")
    a_map.set_title(
        f"sinusoidal positional encoding (d_model={d_model})\n"
        "even dims: sin(pos / 10000^(2i/d)), odd dims: cos",
        fontsize=10,
    )
    a_map.set_xlabel("embedding dimension")
    a_map.set_ylabel("position")
    # one sin/cos pair (a rotating point), then slower and slower sines
    eighth = 2 * max(1, d_model // 16)
    dims = sorted({eighth, eighth + 1, 2 * eighth, 3 * eighth} & set(range(d_model)))
    for dim in dims:
        kind = "sin" if dim % 2 == 0 else "cos"
        style = "--" if kind == "cos" else "-"
        a_lines.plot(range(length), [r[dim] for r in rows], style, label=f"dim {dim} ({kind})")
    a_lines.set_title(
        "a few dimensions: the higher the dimension, the slower it turns", fontsize=10
    )
    a_lines.set_xlabel("position")
    a_lines.set_ylabel("PE(pos, dim)")
    a_lines.set_ylim(-1.1, 1.1)
    a_lines.grid(alpha=0.3)
    a_lines.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- schedule


def plot_schedule(lrs: Sequence[float], warmup: int, path: str | Path, title: str) -> Path:
    """The learning rate of steps 1..len(lrs), with the warm-up end (0 = none) and peak marked."""
    plt = _pyplot()
    steps = range(1, len(lrs) + 1)
    peak = max(range(len(lrs)), key=lambda i: lrs[i])
    fig, ax = plt.subplots(figsize=(9, 5))
    ax.plot(steps, lrs, color=ATTEND, label="learning rate")
    if 0 < warmup <= len(lrs):
        ax.axvline(warmup, color=LOOK_AHEAD, linestyle="--", label=f"end of warm-up ({warmup})")
    ax.plot(
        [peak + 1], [lrs[peak]], "o", color=BOTH, label=f"peak {lrs[peak]:.3g} at step {peak + 1}"
    )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- training curves


def plot_curves(train: Sequence[dict], valid: Sequence[dict], path: str | Path, title: str) -> Path:
    """Loss, perplexity, validation BLEU/chrF and learning rate from metrics.jsonl records."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), sharex=True)
    (a_loss, a_ppl), (a_bleu, a_lr) = axes
    t_steps = [r["step"] for r in train]
    v_steps = [r["step"] for r in valid]
    marker = "o" if len(valid) <= 40 else None
    dot = "." if len(train) <= 40 else None  # a lone point of a line is invisible

    if train:
        a_loss.plot(
            t_steps, [r["loss"] for r in train], marker=dot, label="train loss (label-smoothed)"
        )
        a_loss.plot(t_steps, [r["nll"] for r in train], marker=dot, label="train NLL", alpha=0.7)
    if valid:
        a_loss.plot(v_steps, [r["loss"] for r in valid], marker=marker, label="valid NLL")
    a_loss.set_title("loss per target token")
    a_loss.set_ylabel("nats per token")

    if train:
        a_ppl.plot(t_steps, [r["ppl"] for r in train], marker=dot, label="train perplexity")
    if valid:
        a_ppl.plot(v_steps, [r["ppl"] for r in valid], marker=marker, label="valid perplexity")
    a_ppl.set_yscale("log")
    a_ppl.set_title("perplexity = exp(NLL)")
    a_ppl.set_ylabel("perplexity (log scale)")

    if valid:
        a_bleu.plot(v_steps, [r["bleu"] for r in valid], marker=marker, label="BLEU")
        if all("chrf" in r for r in valid):
            a_bleu.plot(v_steps, [r["chrf"] for r in valid], marker=marker, label="chrF", alpha=0.7)
    else:
        a_bleu.text(
            0.5, 0.5, "no validation yet", ha="center", va="center", transform=a_bleu.transAxes
        )
    a_bleu.set_title("validation (greedy decoding)")
    a_bleu.set_ylabel("score (0-100)")

    if train:
        a_lr.plot(t_steps, [r["lr"] for r in train], marker=dot, label="learning rate")
    a_lr.set_title("learning rate (the schedule)")
    a_lr.set_ylabel("learning rate")
    a_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

    from matplotlib.ticker import MaxNLocator

    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("optimizer step")
        ax.tick_params(axis="x", labelbottom=True)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- attention


def plot_attention(
    weights,
    src_pieces: Sequence[str],
    out_pieces: Sequence[str],
    path: str | Path,
    title: str,
    *,
    key_label: str = "source piece (key)",
) -> Path:
    """Heatmap of attention probabilities: one row per output piece, one column per key.

    Args:
        weights: (T_out, S_in) probabilities (a tensor or nested lists); rows sum to 1.
        src_pieces: S_in column (key) labels: source pieces for cross-attention, decoder
            input pieces for decoder self-attention.
        out_pieces: T_out row (query) labels: the piece each row's query predicts.
        key_label: the x axis's name.
    """
    plt = _pyplot()
    rows = [list(map(float, r)) for r in weights]
    n_out, n_in = len(rows), len(rows[0]) if rows else 0
    if n_out != len(out_pieces) or n_in != len(src_pieces):
        raise ValueError(
            f"weights are {n_out}x{n_in} but there are {len(out_pieces)} row and "
            f"{len(src_pieces)} column labels"
        )
    cell = 0.32 if max(n_out, n_in) <= MAX_LABELLED_TICKS else 0.12
    width = min(24.0, max(5.5, 2.5 + cell * n_in))
    height = min(24.0, max(4.5, 2.0 + cell * n_out))
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(
        rows,
        cmap="viridis",
        vmin=0.0,
        vmax=max(1e-9, max(map(max, rows))),
        aspect="auto",
        interpolation="nearest",
    )
    fig.colorbar(image, ax=ax, label="attention probability", fraction=0.046, pad=0.04)
    _label_ticks(ax, "x", list(src_pieces), rotate=True)
    _label_ticks(ax, "y", list(out_pieces))
    ax.set_xlabel(key_label)
    ax.set_ylabel("output piece (query)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
