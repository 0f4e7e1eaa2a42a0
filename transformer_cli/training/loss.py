"""The training objective: label-smoothed cross-entropy over real (non-pad) target tokens.

Everything is returned as a SUM over real tokens, never a mean. Gradient accumulation
is then exact: the loop adds the sums of all micro-batches of an update and divides by
their total real-token count once, so a micro-batch with few tokens is not overweighted.

Label smoothing follows `F.cross_entropy(label_smoothing=eps)` (Szegedy et al. 2016):
the target distribution is (1 - eps) on the reference token plus eps/V on every one of
the V columns, the PAD column included. fairseq spreads eps over the V - 1 wrong columns
and OpenNMT/annotated-transformer over the V - 2 columns that are neither the reference
nor PAD. tfx keeps PyTorch's definition so that `label_smoothing: 0.1` means what it
means in PyTorch; the PAD column's share is eps/V (1.25e-5 at V = 8000 and eps = 0.1).
Pad POSITIONS (target == PAD_ID) contribute nothing at all, smoothed or not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transformer_cli.data.tokenizer import PAD_ID


@dataclass
class LossParts:
    """Sums over the real target tokens of one (micro-)batch."""

    loss: torch.Tensor  # () float32: the label-smoothed objective, summed; backprop this
    nll: torch.Tensor  # () float32: the unsmoothed negative log-likelihood, summed
    n_tokens: torch.Tensor  # () int64: real target tokens, on the logits' device (no sync)


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
) -> LossParts:
    """Label-smoothed cross-entropy summed over positions where target != PAD_ID.

    Args:
        logits: (B, T, V) decoder outputs, or (N, V) already gathered positions; any float
            dtype (the softmax is computed in float32).
        target: (B, T) or (N,) token ids; PAD_ID marks positions to ignore.
        label_smoothing: eps in [0, 1).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match target {tuple(target.shape)}")
    vocab = logits.shape[-1]
    logits = logits.reshape(-1, vocab)  # (N, V)
    target = target.reshape(-1)  # (N,)
    real = target != PAD_ID  # (N,)

    # One log-softmax serves both the smoothed loss and the plain NLL (calling
    # F.cross_entropy twice would compute it twice); float32 keeps bf16 logits accurate.
    exact = torch.promote_types(logits.dtype, torch.float32)  # never a 16-bit softmax
    logp = F.log_softmax(logits, dim=-1, dtype=exact)  # (N, V)
    nll = F.nll_loss(logp, target, ignore_index=PAD_ID, reduction="sum")
    if label_smoothing > 0.0:
        # masked_fill (not a multiply by the mask) keeps pad rows out of the gradient even
        # if their logits are extreme.
        uniform = -logp.sum(dim=-1).masked_fill(~real, 0.0).sum() / vocab
        loss = (1.0 - label_smoothing) * nll + label_smoothing * uniform
    else:
        loss = nll
    return LossParts(loss=loss, nll=nll.detach(), n_tokens=real.sum())


def projected_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    dtype: torch.dtype | None = None,
    chunk_bytes: int = 16 * 2**20,
) -> LossParts:
    """`masked_cross_entropy(hidden @ weight.T, target)` without ever holding all the logits.

    The fast path of the same objective. The (N, V) logits of a 4,096-token batch with an
    8,000-piece vocabulary take 131 MB in float32, and the plain path keeps several such
    tensors alive (logits, log-probabilities, their gradients). Here the rows go through
    in chunks of `chunk_bytes` of float32 logits: each chunk is projected, its losses
    summed, and, when gradients are wanted, its logit gradient formed in place and pushed
    straight through the projection. Backward then only scales the stored gradients.

    Args:
        hidden: (N, D) decoder states of REAL target positions only (select them first:
            every row counts, a PAD target included).
        weight: (V, D) output projection (no bias).
        target: (N,) token ids.
        label_smoothing: eps in [0, 1), with the same definition as `masked_cross_entropy`.
        dtype: the matmul dtype (bfloat16/float16 under mixed precision); default
            `hidden.dtype`. The softmax runs in float32 (float64 for float64 inputs).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if hidden.dim() != 2 or target.shape != hidden.shape[:1]:
        shapes = f"hidden {tuple(hidden.shape)} does not match target {tuple(target.shape)}"
        raise ValueError(shapes)
    rows = max(1, chunk_bytes // (4 * weight.shape[0]))
    loss, nll = _ProjectedCrossEntropy.apply(
        hidden, weight, target, label_smoothing, dtype or hidden.dtype, rows
    )
    n_tokens = torch.tensor(target.numel(), device=target.device)
    return LossParts(loss=loss, nll=nll.detach(), n_tokens=n_tokens)


class _ProjectedCrossEntropy(torch.autograd.Function):
    """Chunked projection + label-smoothed cross-entropy; gradients formed in forward.

    For one row with logits z, log-sum-exp L and reference token y, the objective is
        (1 - eps) * (L - z_y) + eps * (L - mean(z)),
    whose gradient with respect to z is softmax(z) - (1 - eps) * onehot(y) - eps / V.
    """

    @staticmethod
    def forward(ctx, hidden, weight, target, eps, dtype, rows):
        n, d = hidden.shape
        vocab = weight.shape[0]
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        exact = torch.promote_types(dtype, torch.float32)  # the softmax's dtype: never 16-bit
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            loss = torch.zeros((), dtype=exact, device=hidden.device)
            nll = torch.zeros((), dtype=exact, device=hidden.device)
            grad_h = torch.empty_like(h) if want_hidden else None
            grad_w = torch.zeros(vocab, d, dtype=exact, device=w.device) if want_weight else None
            for start in range(0, n, rows):
                h_chunk = h[start : start + rows]
                y = target[start : start + rows, None]
                z = (h_chunk @ w.t()).to(exact)  # (rows, V) logits
                lse = torch.logsumexp(z, dim=1)  # (rows,)
                chunk_nll = lse.sum() - z.gather(1, y).sum()
                nll += chunk_nll
                loss += (1.0 - eps) * chunk_nll
                if eps > 0.0:
                    loss += eps * (lse.sum() - z.sum() / vocab)
                if not (want_hidden or want_weight):
                    continue
                grad_z = z.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                if eps > 0.0:
                    grad_z.sub_(eps / vocab)
                grad_z.scatter_add_(1, y, grad_z.new_full(y.shape, eps - 1.0))
                grad_z = grad_z.to(dtype)
                if want_hidden:
                    torch.mm(grad_z, w, out=grad_h[start : start + rows])
                if want_weight and dtype == exact:
                    grad_w.addmm_(grad_z.t(), h_chunk)
                elif want_weight:
                    grad_w += grad_z.t() @ h_chunk  # summed in `exact` across chunks
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = hidden.dtype, weight.dtype
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        # nll is returned detached by the caller: only the loss carries a gradient
        grad_h, grad_w = ctx.saved_tensors
        dh = None if grad_h is None else (grad_h.to(grad_loss.dtype) * grad_loss).to(ctx.dtypes[0])
        dw = None if grad_w is None else (grad_w * grad_loss).to(ctx.dtypes[1])
        return dh, dw, None, None, None, None


def per_token(total: float, n_tokens: int) -> float:
    """A summed loss divided by its token count; NaN when there were no tokens."""
    return total / n_tokens if n_tokens > 0 else math.nan


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(nll / n_tokens); inf rather than an OverflowError for a diverged model."""
    mean = per_token(nll_sum, n_tokens)
    if math.isnan(mean):
        return math.nan
    try:
        return math.exp(mean)
    except OverflowError:  # above ~709.78 nats per token: a diverged model
        return math.inf
