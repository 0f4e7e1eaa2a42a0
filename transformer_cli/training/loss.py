"""The training objective: label-smoothed cross-entropy over real (non-pad) target tokens.

Everything is returned as a SUM over real tokens, never a mean. Gradient accumulation
is then exact: the loop adds the sums of all micro-batches of an update and divides by
their total real-token count once, so a micro-batch with few tokens is not overweighted.

Label smoothing follows `F.cross_entropy(label_smoothing=eps)` (Szegedy et al. 2016):
the target distribution is (1 - eps) on the reference token plus eps/V on every one of
the V columns, the PAD column included. fairseq spreads eps over the V - 1 wrong columns
and OpenNMT/annotated-transformer over the V - 2 columns that are neither the reference
nor PAD. tfx keeps PyTorch's definition so that `label_smoothing: 0.1` means what it
means in PyTorch; the PAD column's share is eps/V, which shrinks as the vocabulary grows.
Pad POSITIONS (target == PAD_ID) contribute nothing at all, smoothed or not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from transformer_cli.core import runtime
from transformer_cli.core.config import Config, ResolvedPrecision
from transformer_cli.core.specials import PAD_ID
from transformer_cli.data import batching
from transformer_cli.data.store import EncodedSplit
from transformer_cli.fast.fused_loss import fused_cross_entropy
from transformer_cli.model.transformer import Transformer


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
    """`masked_cross_entropy(hidden @ weight.T, target)` by the fused chunked path.

    `hidden` holds the states of real target positions only; see
    `fast.fused_loss.fused_cross_entropy` for the arguments.
    """
    loss, nll = fused_cross_entropy(hidden, weight, target, label_smoothing, dtype, chunk_bytes)
    n_tokens = torch.tensor(target.numel(), device=target.device)
    return LossParts(loss=loss, nll=nll, n_tokens=n_tokens)


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


@dataclass(frozen=True)
class ModelCalls:
    """The calls `batch_loss` makes of a model: its own methods (`of`), or each of them
    through torch.compile (`compiled`, train.compile).

    `torch.compile(model)` would compile `forward` only, which the loss never calls: it
    encodes, decodes to hidden states, and projects just the real positions.
    """

    encode: Callable[[Tensor], Tensor]  # (B, S) -> (B, S, D)
    decode_hidden: Callable[[Tensor, Tensor, Tensor], Tensor]  # -> (B, T, D)
    logits: Callable[[Tensor], Tensor]  # (N, D) -> (N, V)
    out_proj: torch.nn.Linear  # the model's own: the fused loss projects in chunks itself

    @classmethod
    def of(cls, model: Transformer) -> ModelCalls:
        return cls(model.encode, model.decode_hidden, model.logits, model.out_proj)

    @classmethod
    def compiled(cls, model: Transformer) -> ModelCalls:
        """The same calls compiled for any batch shape; they compile at their first call."""
        encode, decode_hidden, logits = (
            torch.compile(call, dynamic=True)
            for call in (model.encode, model.decode_hidden, model.logits)
        )
        return cls(encode, decode_hidden, logits, model.out_proj)


def batch_loss(
    model: Transformer | ModelCalls,
    batch: batching.Batch,
    label_smoothing: float,
    device: torch.device,
    precision: ResolvedPrecision,
    fused: bool = True,
) -> LossParts:
    """The masked loss of one batch: sums over its real target tokens (see loss.py).

    Only the real positions are projected onto the vocabulary, so padding never reaches
    the (expensive) full-vocabulary softmax. `fused` projects and scores them in chunks
    (`projected_cross_entropy`); otherwise the whole (N, V) logits are formed and passed to
    `masked_cross_entropy`, the plain definition. Both compute the same numbers. `model`
    may be given as the `ModelCalls` to make of it (compiled ones, in training).
    """
    calls = model if isinstance(model, ModelCalls) else ModelCalls.of(model)
    real = (batch.tgt_out != PAD_ID).view(-1).nonzero().squeeze(1)  # on the host: no sync
    batch = batch.to(device)
    real = real.to(device, non_blocking=True)
    target = batch.tgt_out.view(-1).index_select(0, real)  # (N,)
    with runtime.autocast(device, precision):
        memory = calls.encode(batch.src)
        hidden = calls.decode_hidden(batch.tgt_in, memory, batch.src)  # (B, T, D)
        hidden = hidden.flatten(0, 1).index_select(0, real)  # (N, D)
        if not fused:
            logits = calls.logits(hidden)  # (N, V)
            return masked_cross_entropy(logits, target, label_smoothing)  # fp32 softmax inside
    # fast path (train.fused_loss): the same numbers, never all (N, V) logits at once
    dtype = runtime.matmul_dtype(precision)
    weight = calls.out_proj.weight
    return projected_cross_entropy(hidden, weight, target, label_smoothing, dtype)


@torch.no_grad()
def split_loss(
    model: Transformer,
    split: EncodedSplit,
    cfg: Config,
    device: torch.device,
    precision: ResolvedPrecision,
) -> dict:
    """Per-token negative log-likelihood and `perplexity` of a split, without label smoothing.

    Both are NaN for a split without target tokens.
    """
    nll = torch.zeros((), dtype=torch.float64)
    tokens = 0
    truncate = batching.eval_truncation(cfg.model.max_positions)
    for batch in batching.eval_batches(split, cfg.train.batch_tokens, truncate=truncate):
        parts = batch_loss(model, batch, 0.0, device, precision, cfg.train.fused_loss)
        nll += parts.nll.double().cpu()
        tokens += batch.n_tokens
    return {
        "nll": round(per_token(float(nll), tokens), 4),
        "ppl": round(perplexity(float(nll), tokens), 3),  # inf for a diverged model
        "tokens": tokens,
    }
