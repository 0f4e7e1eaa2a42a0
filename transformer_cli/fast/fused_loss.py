"""The fused chunked loss: `masked_cross_entropy` of the projected states, never holding
all (tokens x vocabulary) logits. Its plain twin is `training.loss.masked_cross_entropy`;
tests/training/test_loss.py proves them equal in value and gradient.
"""

from __future__ import annotations

import torch


def fused_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    dtype: torch.dtype | None = None,
    chunk_bytes: int = 16 * 2**20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed (loss, nll) of `masked_cross_entropy(hidden @ weight.T, target)`, chunked.

    The fast path of the same objective. The plain path keeps several (N, V) tensors alive
    at once (logits, log-probabilities, their gradient); here the rows go through in
    chunks of `chunk_bytes` of float32 logits, so one chunk's logits at most exist at a
    time (what that saves: docs/performance.md, section "The fused loss
    (fast/fused_loss.py)"). Each chunk is projected, its losses summed, and, when
    gradients are wanted (grad mode on and `hidden` or `weight` requiring grad), its logit
    gradient formed in place and pushed straight through the projection. Backward then
    only scales the stored gradients; under `torch.no_grad` nothing beyond the loss is
    formed.

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
    # Decided here, not in forward: autograd runs forward with grad mode off, and its
    # ctx.needs_input_grad follows requires_grad alone, so under torch.no_grad (validation,
    # evaluate) it would still ask for the gradients of trainable parameters.
    want_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    loss, nll = _ProjectedCrossEntropy.apply(
        hidden, weight, target, label_smoothing, dtype or hidden.dtype, rows, want_grads
    )
    return loss, nll.detach()


class _ProjectedCrossEntropy(torch.autograd.Function):
    """Chunked projection + label-smoothed cross-entropy; gradients formed in forward.

    For one row with logits z, log-sum-exp L and reference token y, the objective is
        (1 - eps) * (L - z_y) + eps * (L - mean(z)),
    whose gradient with respect to z is softmax(z) - (1 - eps) * onehot(y) - eps / V.
    """

    @staticmethod
    def forward(ctx, hidden, weight, target, eps, dtype, rows, want_grads):
        n, d = hidden.shape
        vocab = weight.shape[0]
        want_hidden, want_weight = (want_grads and need for need in ctx.needs_input_grad[:2])
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
                if grad_h is not None:
                    torch.mm(grad_z, w, out=grad_h[start : start + rows])
                if grad_w is not None and dtype == exact:
                    grad_w.addmm_(grad_z.t(), h_chunk)
                elif grad_w is not None:
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
        return dh, dw, None, None, None, None, None
