"""`tfx inspect ...`: the Transformer's moving parts, shown on your own data.

Every number and grid here comes from the code training runs: batches from
`batching`, masks from `masks`, the loss mask from `loss.masked_cross_entropy`,
positions from `model.SinusoidalPositions`, attention from `attention.attend_math`
and the model's own attention modules, learning rates from `schedule.learning_rate`.
Nothing is re-implemented for display, so what you see is what the model gets.

Each command has a function that returns plain data (`batch_view`, `positions_view`,
`scaling_view`, `schedule_view`; attention maps live in attention_maps.py and training
curves in curves.py); the command prints it, or with `--json` dumps it, and with
`--plot FILE.png` draws it (plots.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from transformer_cli.cli.options import ConfigOpt, SetOpt, load
from transformer_cli.core.errors import ConfigError, DataError, boundary

inspect_app = typer.Typer(
    help="Look inside: batches and masks, positions, attention scaling, the LR schedule.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PlotOpt = Annotated[Path | None, typer.Option("--plot", help="Also draw it into this PNG.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")]

POSITION_TOLERANCE = 1e-5  # PE(pos + k) vs M_k PE(pos): float32 rounding is ~1e-7


def _bits(mask) -> list:
    """A bool tensor as nested lists of 0/1."""
    return mask.int().tolist()


# ----------------------------------------------------------------------------- batch


def batch_view(cfg, split: str = "train", index: int = 0, rows: int = 4, epoch: int = 0) -> dict:
    """One batch exactly as training (or evaluation) builds it, with its masks.

    `train` batches are `batching.epoch_batches(...)[index]` of `epoch`, collated as the
    training loop does; `valid`/`test` batches follow `batching.eval_order`, truncated
    as `loss.split_loss` truncates them. `rows` rows are shown, spread from the
    batch's first to its last (a batch is length-sorted, so shortest to longest).
    """
    import torch

    from transformer_cli.data import batching
    from transformer_cli.data import store as cache
    from transformer_cli.data.tokenizer import JOINT_FILE, SRC_FILE, Tokenizer
    from transformer_cli.model import masks
    from transformer_cli.training.loss import masked_cross_entropy

    if split not in cache.SPLITS:
        raise ConfigError(f"--split {split}: choose one of {', '.join(cache.SPLITS)}")
    if rows < 1:
        raise ConfigError(f"--rows must be >= 1, got {rows}")
    data = cache.load_split(cfg.run_dir, split)
    tokenizer = Tokenizer.load(cfg.run_dir)
    if split == "train":
        groups = batching.epoch_batches(data, cfg.train.batch_tokens, cfg.train.seed, epoch)
        truncate = 0
    else:
        truncate = cfg.model.max_positions - 1  # as loss.split_loss cuts valid/test
        groups = batching.eval_order(data, cfg.train.batch_tokens, truncate=truncate)
    if not groups:
        raise DataError(f"the {split} split of {cfg.run_dir} is empty")
    if not 0 <= index < len(groups):
        raise ConfigError(
            f"--index {index}: the {split} split has {len(groups)} batches (0..{len(groups) - 1})"
        )
    batch = batching.collate(data, groups[index], truncate)
    size = len(batch)
    shown = sorted(
        {round(i * (size - 1) / max(1, min(rows, size) - 1)) for i in range(min(rows, size))}
    )
    pick = torch.tensor(shown)

    src_mask = masks.padding_mask(batch.src)  # (B, 1, 1, S)
    look_ahead = masks.causal_mask(batch.tgt_in.size(1))  # (T, T)
    tgt_pad = masks.padding_mask(batch.tgt_in)  # (B, 1, 1, T)
    dec_mask = masks.decoder_mask(batch.tgt_in)  # (B, 1, T, T)

    # The loss mask is read off the training loss itself: the positions whose logits get
    # a gradient from masked_cross_entropy. (V only needs to exceed the largest id.)
    tgt_out = batch.tgt_out[pick]  # (R, T)
    logits = torch.zeros(*tgt_out.shape, int(tgt_out.max()) + 1, requires_grad=True)
    masked_cross_entropy(logits, tgt_out, cfg.train.label_smoothing).loss.backward()
    loss_mask = logits.grad.abs().sum(-1) > 0  # (R, T)

    src_side = tokenizer
    if not tokenizer.joint:  # a tokenizer whose "target" model is the source model
        src_side = Tokenizer.from_bytes({JOINT_FILE: tokenizer.to_bytes()[SRC_FILE]})
    dec_pad = tgt_pad[pick, 0, 0]  # (R, T)
    return {
        "split": split,
        "epoch": epoch if split == "train" else None,
        "index": index,
        "batches": len(groups),
        "batch_size": size,
        "shown_rows": shown,
        "sentences": batch.indices[pick].tolist(),
        "n_tokens": batch.n_tokens,
        "padded_target_slots": batch.tgt_out.numel(),
        "shapes": {
            "src": list(batch.src.shape),
            "tgt_in": list(batch.tgt_in.shape),
            "padding_mask(src)": list(src_mask.shape),
            "causal_mask(T)": list(look_ahead.shape),
            "decoder_mask(tgt_in)": list(dec_mask.shape),
        },
        "src_ids": batch.src[pick].tolist(),
        "tgt_in_ids": batch.tgt_in[pick].tolist(),
        "tgt_out_ids": tgt_out.tolist(),
        "src_pieces": [src_side.tgt_pieces(r) for r in batch.src[pick]],
        "tgt_in_pieces": [tokenizer.tgt_pieces(r) for r in batch.tgt_in[pick]],
        "tgt_out_pieces": [tokenizer.tgt_pieces(r) for r in tgt_out],
        "source_padding": _bits(src_mask[pick, 0, 0]),
        "look_ahead": _bits(look_ahead),
        "target_padding": _bits(dec_pad),
        "decoder": _bits(dec_mask[pick, 0]),
        "loss": _bits(loss_mask),
        # the shown row with the most target padding: where the union is easiest to see
        "decoder_row": int((~dec_pad).sum(-1).argmax()),
    }


def _grid_lines(grid: list, row_labels: list[str], indent: str = "  ") -> list[str]:
    """A 0/1 matrix as text, with column indices on top and labels on the left."""
    cols = len(grid[0]) if grid else 0
    cell = len(str(max(cols - 1, 0))) + 1
    pad = max((len(label) for label in row_labels), default=0)
    lines = [indent + " " * pad + "".join(f"{j:>{cell}}" for j in range(cols))]
    for label, row in zip(row_labels, grid, strict=True):
        lines.append(indent + f"{label:<{pad}}" + "".join(f"{v:>{cell}}" for v in row))
    return lines


def format_batch(view: dict) -> str:
    """The batch view as the text `tfx inspect batch` prints."""
    shown, names = view["shown_rows"], [f"row {r}" for r in view["shown_rows"]]
    if view["split"] == "train":
        where = f"epoch {view['epoch']}, as the training loop sees it"
    else:
        where = "as validation and evaluation see it"
    shapes = view["shapes"]
    slots = view["padded_target_slots"]
    out = [
        f"{view['split']} batch {view['index']} of {view['batches']} ({where}): "
        f"{view['batch_size']} sentences, src {tuple(shapes['src'])}, "
        f"tgt_in/tgt_out {tuple(shapes['tgt_in'])}",
        f"batch-max padding: every row is padded to the longest in this batch; "
        f"{view['n_tokens']} of {slots} target slots are real ({view['n_tokens'] / slots:.0%}); "
        f"showing rows {', '.join(map(str, shown))} (of 0..{view['batch_size'] - 1})",
    ]
    if view["n_tokens"] == slots:
        out.append(
            "(length bucketing gave every target here the same length, so there is no "
            "target padding; --split valid batches, sorted by max(source, target) "
            "length, have some)"
        )
    out.append("")
    for k, row in enumerate(shown):
        out.append(f"row {row} (sentence {view['sentences'][k]} of the split)")
        out.append("  source: " + " ".join(view["src_pieces"][k]))
        out.append("    t  decoder input (tgt_in)   decoder target (tgt_out)")
        for t, (a, b) in enumerate(
            zip(view["tgt_in_pieces"][k], view["tgt_out_pieces"][k], strict=True)
        ):
            out.append(f"  {t:>3}  {a:<24} {b}")
        out.append("")
    out.append(
        "the shift: tgt_in = <s> y1..yn, tgt_out = y1..yn </s>; position t sees "
        "tgt_in[0..t] and must predict tgt_out[t], the next piece"
    )
    out.append("")
    out.append(
        f"source padding mask  masks.padding_mask(src) -> {shapes['padding_mask(src)']}"
        ", shown [:, 0, 0, :]; 1 = real key (encoder and cross-attention)"
    )
    out += _grid_lines(view["source_padding"], names)
    out.append("")
    out.append(
        f"look-ahead mask  masks.causal_mask(T) -> {shapes['causal_mask(T)']}; "
        "row = query i, column = key j, 1 iff j <= i"
    )
    t_len = len(view["look_ahead"])
    out += _grid_lines(view["look_ahead"], [f"i={i}" for i in range(t_len)])
    out.append("")
    k = view["decoder_row"]
    out.append(
        f"decoder self-attention mask  masks.decoder_mask(tgt_in) -> "
        f"{shapes['decoder_mask(tgt_in)']}, row {shown[k]} (--json has every row)"
    )
    out.append(
        "  = look-ahead AND target padding: the 0s are the union of the upper triangle "
        "(future) and the right-hand columns of <pad> keys"
    )
    out.append("  target padding of this row: " + " ".join(map(str, view["target_padding"][k])))
    out += _grid_lines(
        view["decoder"][k], [f"{i:>3} {p[:12]}" for i, p in enumerate(view["tgt_in_pieces"][k])]
    )
    out.append("")
    out.append(
        "loss mask  the positions loss.masked_cross_entropy counts (tgt_out != <pad>), "
        "read off its gradient"
    )
    out += _grid_lines(view["loss"], names)
    return "\n".join(out)


@inspect_app.command("batch")
@boundary
def batch_command(
    config: ConfigOpt,
    set_: SetOpt = None,
    split: Annotated[str, typer.Option("--split", help="train, valid or test.")] = "train",
    index: Annotated[int, typer.Option("--index", help="Which batch (0-based).")] = 0,
    epoch: Annotated[int, typer.Option("--epoch", help="Training epoch (train only).")] = 0,
    rows: Annotated[int, typer.Option("--rows", help="Rows to show, shortest to longest.")] = 4,
    plot: PlotOpt = None,
    json_: JsonOpt = False,
) -> None:
    """One real batch from the prepared cache: pieces, the target shift, and every mask."""
    view = batch_view(load(config, set_), split, index, rows, epoch)
    _emit(json.dumps(view) if json_ else format_batch(view))
    if plot is not None:
        from transformer_cli.inspect.plots import plot_masks

        _report(plot_masks(view, plot))


def _report(path: Path) -> None:
    print(f"wrote {path}", file=sys.stderr)


def _emit(text: str) -> None:
    """Print to stdout; a reader that goes away (`| head`) just ends the output."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # stdout now points at /dev/null, so the flush at exit cannot fail again
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# ----------------------------------------------------------------------------- positions


def positions_view(d_model: int = 64, length: int = 100, ks: tuple[int, ...] = ()) -> dict:
    """The model's sinusoidal table, and the check that PE(pos + k) = M_k PE(pos).

    M_k is built from PE(k) alone: each pair of dimensions (2i, 2i+1) holds (sin, cos)
    of one angle pos * w_i, and rotating it by k * w_i, whose sin and cos are PE(k, 2i)
    and PE(k, 2i+1), gives the pair at pos + k. M_k does not depend on pos, which is
    why attention can learn to look "k pieces back" anywhere in the sentence.
    """
    import torch

    from transformer_cli.model.transformer import SinusoidalPositions

    if d_model < 2 or d_model % 2:
        raise ConfigError(f"--d-model must be even and >= 2, got {d_model}")
    if length < 2:
        raise ConfigError(f"--length must be >= 2, got {length}")
    table = SinusoidalPositions(d_model, length)(length)  # (L, D) float32, as the model adds it
    pe = table.double()
    ks = tuple(k for k in (ks or (1, 2, 5, 10, length // 2)) if 0 < k < length)
    checks = []
    for k in sorted(set(ks)):
        sin_k, cos_k = pe[k, 0::2], pe[k, 1::2]  # (D/2,) each
        m = torch.zeros(d_model, d_model, dtype=torch.float64)
        m[0::2, 0::2] = torch.diag(cos_k)  # sin(a + b) = sin a cos b + cos a sin b
        m[0::2, 1::2] = torch.diag(sin_k)
        m[1::2, 0::2] = torch.diag(-sin_k)  # cos(a + b) = cos a cos b - sin a sin b
        m[1::2, 1::2] = torch.diag(cos_k)
        predicted = pe[:-k] @ m.T  # (L-k, D): M_k PE(pos) for every pos at once
        error = (predicted - pe[k:]).abs().max().item()
        checks.append({"k": k, "positions": length - k, "max_error": error})
    return {"d_model": d_model, "length": length, "table": table.tolist(), "checks": checks}


def format_positions(view: dict) -> str:
    """The positions view as the text `tfx inspect positions` prints."""
    out = [
        f"sinusoidal positions: model.SinusoidalPositions({view['d_model']}, {view['length']});"
        " PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same)",
        "PE(pos + k) = M_k PE(pos), M_k block-diagonal 2x2 rotations built from PE(k) alone "
        "(no pos in it):",
    ]
    for c in view["checks"]:
        out.append(
            f"  k = {c['k']:>4}: max |PE(pos+k) - M_k PE(pos)| over {c['positions']} "
            f"positions = {c['max_error']:.1e}"
        )
    worst = max(c["max_error"] for c in view["checks"])
    verdict = "holds (float32 rounding only)" if worst < POSITION_TOLERANCE else "FAILS"
    out.append(f"the linear map {verdict}: a shift by k is the same rotation at every position")
    return "\n".join(out)


@inspect_app.command("positions")
@boundary
def positions_command(
    d_model: Annotated[int, typer.Option("--d-model", help="Encoding size.")] = 64,
    length: Annotated[int, typer.Option("--length", help="Positions to show.")] = 100,
    k: Annotated[
        list[int] | None, typer.Option("--k", help="Offsets to check (repeatable).")
    ] = None,
    plot: PlotOpt = None,
    json_: JsonOpt = False,
) -> None:
    """The sinusoidal positional encoding, and a check that PE(pos+k) = M_k PE(pos)."""
    view = positions_view(d_model, length, tuple(k or ()))
    if json_:
        _emit(json.dumps({key: v for key, v in view.items() if key != "table"}))
    else:
        _emit(format_positions(view))
    if plot is not None:
        from transformer_cli.inspect.plots import plot_positions

        _report(plot_positions(view["table"], plot))


# ----------------------------------------------------------------------------- scaling


def scaling_view(d_k: int = 64, keys: int = 50, samples: int = 2000, seed: int = 0) -> dict:
    """Why eq. 1 divides by sqrt(d_k), measured on random unit-variance queries and keys.

    The probabilities come from `attention.attend_math`, the model's own attention: as
    it is (scaled), and with its scaling undone by feeding it q * sqrt(d_k) (unscaled).
    The scores are q.k and q.k / sqrt(d_k), attend_math's formula.
    """
    import torch

    from transformer_cli.model.attention import attend_math

    if d_k < 1 or keys < 2 or samples < 2:
        raise ConfigError("need --d-k >= 1, --keys >= 2 and --samples >= 2")
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(samples, 1, 1, d_k, generator=g)  # (N, H=1, T=1, K)
    k = torch.randn(samples, 1, keys, d_k, generator=g)  # (N, 1, S, K)
    v = torch.zeros(samples, 1, keys, 1)  # (N, 1, S, 1): the outputs are not looked at
    raw = (q @ k.transpose(-2, -1)).flatten()  # (N, 1, 1, S) -> (N * S,)
    result = {"d_k": d_k, "keys": keys, "samples": samples}
    for name, scores, query in (
        ("unscaled", raw, q * math.sqrt(d_k)),
        ("scaled", raw / math.sqrt(d_k), q),
    ):
        _, probs = attend_math(query, k, v, None)  # (N, 1, 1, S)
        p = probs.reshape(samples, keys).double()  # (N, S)
        # the softmax's Jacobian d p / d scores = diag(p) - p p^T, whose size is the
        # gradient a row passes back to its scores; near a one-hot p it is ~0
        jacobian = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (N, S, S)
        grad = jacobian.flatten(1).norm(dim=-1)  # (N,) Frobenius norms
        top = p.max(-1).values  # (N,)
        result[name] = {
            "mean": scores.mean().item(),
            "var": scores.var().item(),
            "max_prob": top.mean().item(),
            "saturated": (top > 0.99).double().mean().item(),
            "grad_median": grad.median().item(),
            "grad_p10": grad.quantile(0.1).item(),
            "row_sum_error": (p.sum(-1) - 1).abs().max().item(),
        }
    return result


def format_scaling(view: dict) -> str:
    """The scaling view as the text `tfx inspect scaling` prints."""
    d_k, keys, samples = view["d_k"], view["keys"], view["samples"]
    out = [
        f"{samples * keys:,} dot products q.k of random N(0, 1) vectors, d_k = {d_k}; softmax "
        f"over {keys} keys by attention.attend_math, {samples:,} times",
        f"  {'':<17}{'mean':>7}{'variance':>10}{'mean max p':>12}{'max p>0.99':>12}"
        f"{'|dp/ds| median':>16}{'10th pct':>10}",
    ]
    for name, label in (("unscaled", "q.k"), ("scaled", "q.k / sqrt(d_k)")):
        s = view[name]
        out.append(
            f"  {label:<17}{s['mean']:>7.3f}{s['var']:>10.2f}{s['max_prob']:>12.3f}"
            f"{s['saturated']:>12.1%}{s['grad_median']:>16.4f}{s['grad_p10']:>10.2e}"
        )
    u, s = view["unscaled"], view["scaled"]
    out += [
        f"  theory: mean 0; variance d_k = {d_k} unscaled, 1 scaled",
        "  |dp/ds| = ||diag(p) - p p^T||, the softmax's gradient with respect to its scores",
        f"conclusion: unscaled, the scores' standard deviation grows as sqrt(d_k) "
        f"({math.sqrt(u['var']):.1f} measured), so {u['saturated']:.0%} of the softmax rows "
        f"are nearly one-hot and the weakest tenth pass back gradients below "
        f"{u['grad_p10']:.1e}; divided by sqrt(d_k), the variance stays 1 for every d_k: "
        f"{s['saturated']:.0%} of the rows saturate and the weakest tenth still pass back "
        f"{s['grad_p10']:.2f}",
    ]
    return "\n".join(out)


@inspect_app.command("scaling")
@boundary
def scaling_command(
    d_k: Annotated[int, typer.Option("--d-k", help="Head dimension d_k.")] = 64,
    keys: Annotated[int, typer.Option("--keys", help="Keys per softmax.")] = 50,
    samples: Annotated[int, typer.Option("--samples", help="Random queries.")] = 2000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Use this model's d_k (d_model/heads).")
    ] = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Why scores are divided by sqrt(d_k): variance, softmax peak and gradient, measured."""
    if config is not None:
        cfg = load(config, set_)
        d_k = cfg.model.d_model // cfg.model.heads
    view = scaling_view(d_k, keys, samples, seed)
    _emit(json.dumps(view) if json_ else format_scaling(view))


# ----------------------------------------------------------------------------- schedule


def schedule_view(cfg, steps: int = 0) -> dict:
    """`schedule.learning_rate` at every step of the run: max_steps, or `steps`."""
    from transformer_cli.training.schedule import learning_rate

    t = cfg.train
    note = ""
    if steps < 0:
        raise ConfigError(f"--steps must be >= 0 (0 = train.max_steps), got {steps}")
    if not steps:
        steps = t.max_steps
        if not steps:
            steps = 4 * t.warmup
            note = f"train.max_steps is 0 (no limit): showing 4 x warmup = {steps} steps"
    lrs = [learning_rate(step, t, cfg.model.d_model) for step in range(1, steps + 1)]
    peak = max(range(steps), key=lambda i: lrs[i]) + 1
    formula = {
        "noam": f"{t.noam_factor:g} * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)",
        "inverse_sqrt": f"linear to {t.lr:g} at warmup, then {t.lr:g} * sqrt(warmup / step)",
        "constant": f"{t.lr:g} at every step",
    }[t.schedule]
    return {
        "schedule": t.schedule,
        "formula": formula,
        "d_model": cfg.model.d_model,
        "warmup": 0 if t.schedule == "constant" else t.warmup,
        "steps": steps,
        "peak_step": peak,
        "peak_lr": lrs[peak - 1],
        "lr": lrs,
        "note": note,
    }


def format_schedule(view: dict) -> str:
    """The schedule view as the text `tfx inspect schedule` prints."""
    w, n, lrs, peak = view["warmup"], view["steps"], view["lr"], view["peak_step"]
    out = [view["note"]] if view["note"] else []
    out.append(
        f"schedule {view['schedule']}: lr = {view['formula']} "
        f"(d_model {view['d_model']}, warmup {w})"
    )
    for s in sorted({s for s in (1, w // 4, w // 2, w, 2 * w, 4 * w, n) if 1 <= s <= n}):
        out.append(
            f"  step {s:>8}: {lrs[s - 1]:.3e}" + ("  <- peak" if s == peak and w > 1 else "")
        )
    if view["schedule"] == "constant":
        out.append("constant: no warm-up, the same rate from the first update to the last")
    else:
        out.append(
            f"peak {view['peak_lr']:.3e} at step {peak}: small steps first, while Adam's "
            "moment estimates are still noisy, then a slow 1/sqrt(step) decay"
        )
    return "\n".join(out)


@inspect_app.command("schedule")
@boundary
def schedule_command(
    config: ConfigOpt,
    set_: SetOpt = None,
    steps: Annotated[
        int, typer.Option("--steps", help="Steps to show (default: train.max_steps).")
    ] = 0,
    plot: PlotOpt = None,
    json_: JsonOpt = False,
) -> None:
    """The configured learning-rate schedule over the run, warm-up peak marked."""
    view = schedule_view(load(config, set_), steps)
    _emit(json.dumps(view) if json_ else format_schedule(view))
    if plot is not None:
        from transformer_cli.inspect.plots import plot_schedule

        title = (
            f"{view['schedule']} schedule: lr = {view['formula']}\n"
            f"d_model {view['d_model']}, warmup {view['warmup']}, {view['steps']} steps"
        )
        _report(plot_schedule(view["lr"], view["warmup"], plot, title))


@inspect_app.command("attention")
@boundary
def attention_command(
    checkpoint: Annotated[Path, typer.Argument(help="A tfx checkpoint (.pt).")],
    text: Annotated[str, typer.Argument(help="One source sentence.")],
    output: Annotated[Path, typer.Option("--plot", help="The PNG to write.")],
    layer: Annotated[int, typer.Option("--layer", help="Decoder layer, 0-based; -1 = last.")] = -1,
    head: Annotated[str, typer.Option("--head", help="A head number, or mean.")] = "mean",
    self_attention: Annotated[
        bool, typer.Option("--self-attention", help="Decoder self-attention, not cross.")
    ] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """Greedy-translate one sentence and draw its attention (cross, or decoder self)."""
    from transformer_cli.inspect.attention_maps import plot_translation_attention

    _report(
        plot_translation_attention(
            checkpoint,
            text,
            output,
            layer=layer,
            head=head,
            self_attention=self_attention,
            device=device,
        )
    )
