"""`tfx inspect ...`: the Transformer's moving parts, shown on your own data.

Every number and grid here comes from the code training runs: batches from
`batching`, masks from `masks`, the loss mask from `loss.masked_cross_entropy`,
positions from `model.positions.SinusoidalPositions`, attention from `attention.attend_math`
and the model's own attention modules, learning rates from `schedule.learning_rate`.
Nothing is re-implemented for display, so what you see is what the model gets.

Each view is a function that returns plain data (`batch_view`, `positions_view`,
`scaling_view`, `schedule_view`; attention maps live in attention_maps.py and training
curves in curves.py), and a `format_*` function renders it as text. The commands in
cli/inspect.py print that, or with `--json` dump the data, and with `--plot FILE.png`
draw it (plots.py).
"""

from __future__ import annotations

import math
from typing import Any

from transformer_cli.core.config import Config
from transformer_cli.core.errors import ConfigError

POSITION_TOLERANCE = 1e-5  # PE(pos + k) vs M_k PE(pos): float32 rounding is ~1e-7


# ----------------------------------------------------------------------------- positions


def positions_view(d_model: int = 64, length: int = 100, ks: tuple[int, ...] = ()) -> dict:
    """The model's sinusoidal table, and the check that PE(pos + k) = M_k PE(pos).

    M_k is built from PE(k) alone: each pair of dimensions (2i, 2i+1) holds (sin, cos)
    of one angle pos * w_i, and rotating it by k * w_i, whose sin and cos are PE(k, 2i)
    and PE(k, 2i+1), gives the pair at pos + k. M_k does not depend on pos, which is
    why attention can learn to look "k pieces back" anywhere in the sentence.
    """
    import torch

    from transformer_cli.model.positions import SinusoidalPositions

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
    result: dict[str, Any] = {"d_k": d_k, "keys": keys, "samples": samples}
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


# ----------------------------------------------------------------------------- schedule


def schedule_view(cfg: Config, steps: int = 0) -> dict:
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
