"""The figures of `tfx inspect norm`, `residual`, `positions --checkpoint` and `decoding`.

Each draws a view's plain data (norm.py, residual.py, relative.py, parallel.py) and
writes it as `plots.py` writes its figures: rendered in memory, then atomically.
"""

from __future__ import annotations

from pathlib import Path

from transformer_cli.inspect.plots import _pyplot, _save


def plot_norm(view: dict, path: str | Path) -> Path:
    """Per-feature BatchNorm statistics with and without padding; per-token LayerNorm's."""
    fig, axes = _pyplot().subplots(1, 3, figsize=(16, 4.4))
    feats = range(view["d_model"])
    for ax, key, label in ((axes[0], "mean", "mean"), (axes[1], "var", "variance")):
        shift = [a - b for a, b in zip(view[f"batchnorm_{key}"], view[f"real_{key}"], strict=True)]
        ax.bar(feats, shift, width=1.0)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set(
            xlabel="feature",
            ylabel=f"{label} (all slots) - {label} (real tokens)",
            title=f"how far padding moves BatchNorm's per-feature {label}",
        )
        ax.grid(alpha=0.3)
    axes[2].scatter(view["layernorm_mean"], view["layernorm_var"], s=6)
    axes[2].set(
        xlabel="mean over the features",
        ylabel="variance over the features",
        title="LayerNorm's per-token statistics\n(real tokens; padding cannot move them)",
    )
    fig.suptitle(f"the first encoder layer's input, {view['source']}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_residual(view: dict, path: str | Path) -> Path:
    """Gradient norm by depth, with and without residual connections, for each norm order."""
    fig, ax = _pyplot().subplots(figsize=(9, 5))
    depth = range(len(view["labels"]))
    for norm, run in view["runs"].items():
        line = ax.plot(depth, run["with"], "o-", label=f"{norm}-norm, with residuals")[0]
        without = [max(g, 1e-12) for g in run["without"]]  # a log axis has no 0
        ax.plot(depth, without, "x--", color=line.get_color(), label=f"{norm}-norm, without")
    ax.set_yscale("log")
    ax.set_xticks(list(depth), view["labels"], rotation=45, fontsize=8)
    ax.axvline(view["enc_layers"] - 0.5, color="grey", linewidth=0.8)
    ax.set(
        xlabel="layer (input side first: encoder, then decoder)",
        ylabel="|d loss / d layer input|",
        title=f"gradient reaching each layer, {view['source']} (a 0 is drawn at 1e-12)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_relative(view: dict, path: str | Path) -> Path:
    """The raw dot-product matrix beside up to three heads' projected ones."""
    from transformer_cli.inspect.relative import SCORES
    from transformer_cli.model.positions import in_attention

    shown, kind = view["heads"][:3], view["positional"]
    fig, axes = _pyplot().subplots(1, 1 + len(shown), figsize=(4.6 * (1 + len(shown)), 4.4))
    added = not in_attention(kind)
    raw = "PE(pos) . PE(pos')" if added else "the sinusoid (not added): PE(pos) . PE(pos')"
    panels = [(raw, view["raw"], view["raw_spread"])]
    panels += [
        (f"head {h}: {SCORES[kind]}", m, view["head_spreads"][h]) for h, m in enumerate(shown)
    ]
    for ax, (title, matrix, spread) in zip(axes, panels, strict=True):
        image = ax.imshow(matrix, cmap="RdBu_r", interpolation="nearest")
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set(xlabel="position pos'", ylabel="position pos", title=f"{title}\nspread {spread:.1e}")
        ax.title.set_fontsize(9)
    ending = "projected ones are not" if added else f"so are {kind}'s scores, in every head"
    fig.suptitle(
        f"{view['source']}: raw encodings are constant along diagonals (a function of "
        f"pos' - pos); {ending}",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, path)


def plot_decoding(view: dict, path: str | Path) -> Path:
    """Each step's chosen-piece probability, serial beside parallel, and their difference."""
    fig, (top, bottom) = _pyplot().subplots(2, 1, figsize=(10, 6), sharex=True)
    steps = range(len(view["outputs"]))
    top.plot(steps, view["p_serial"], "o-", label=f"serial: {view['serial_passes']} passes")
    top.plot(steps, view["p_parallel"], "x", markersize=10, label="parallel: 1 pass")
    top.set(ylabel="p(predicted piece)", title=f"{view['text']}  ->  {view['translation']}")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.bar(steps, [max(g, 1e-12) for g in view["max_gap_per_step"]])
    bottom.set_yscale("log")
    bottom.set(xlabel="step (predicted piece)", ylabel="max |p serial - p parallel|")
    bottom.set_xticks(list(steps), view["outputs"], rotation=60, fontsize=8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
