"""Greedy and beam search over a `Transformer` (a `SearchModel`), KV-cached and batched;
greedy search's loop also samples (sampling.py).

B sentences, K beam size, V target vocabulary, R = live rows (sentences x beams)

Length conventions, shared by both searches:

- a hypothesis is the target pieces y_1 .. y_n, without BOS and EOS, with n <= max_len;
- decoding stops at EOS, or after max_len pieces without one (the sentence is cut);
- a beam hypothesis's score is the sum of the log-probabilities of every token it was
  scored on (EOS included when it ended with one), divided by the GNMT length penalty
  lp = ((5 + L) / 6)^alpha of that number L of scored tokens (Wu et al. 2016, eq. 14).

Both searches keep only unfinished sentences in the batch: a sentence that is done is
dropped from the KV cache (`KVCache.select`), so one long straggler costs one row per
step, not the whole batch. Greedy search over many batches goes further
(`stream.greedy_stream`): the next sentence takes a finished one's place at once. Greedy
search finds its finished sentences every `sync_every` steps, a read of the device each
time (`host_sync`); beam search reads its candidates at every step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from transformer_cli.core.specials import BOS_ID, EOS_ID
from transformer_cli.decoding import host_sync, kv_cache
from transformer_cli.decoding.kv_cache import KVCache
from transformer_cli.decoding.limits import clamp_caps, never_emitted
from transformer_cli.decoding.protocol import SearchModel
from transformer_cli.decoding.sampling import Draws

Hypothesis = tuple[list[int], float]


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + length) / 6)^alpha (Wu et al. 2016, eq. 14)."""
    return ((5.0 + length) / 6.0) ** alpha


def most_probable(logits: Tensor) -> Tensor:
    """Each row's highest-scoring piece that may be emitted (`limits.never_emitted`):
    (R, V) -> (R,).

    `max(-1).indices` is argmax (both give the first of tied maxima), and on the CPU the
    faster of the two on bf16 logits (docs/performance.md, "Autocast, bf16 and the slot
    cache's fp32 keys").
    """
    return never_emitted(logits).max(-1).indices


def _step_hidden(
    model: SearchModel,
    tokens: Tensor,
    prefix: Tensor,
    memory: Tensor,
    src: Tensor,
    cache: KVCache | None,
) -> Tensor:
    """The decoder's last hidden state of every row: (R, D).

    Cached: feed only the newest token. Uncached: re-run the decoder on the whole prefix,
    which is what the cache must reproduce (and what the speed benchmark compares to).
    """
    if cache is not None:
        return kv_cache.cached_hidden(model, tokens, memory, src, cache)[:, -1]
    return model.decode_hidden(prefix, memory, src)[:, -1]


@torch.no_grad()
def greedy_search(
    model: SearchModel,
    src: Tensor,
    max_len: int | Sequence[int] | Tensor,
    use_cache: bool = True,
    sync_every: int = 1,
    draws: Draws | None = None,
) -> list[list[int]]:
    """The most probable next piece at every step (given `draws`: a piece drawn, see
    sampling.py), until EOS or `max_len` pieces. Decodes one batch in lockstep (`KVCache`);
    `stream.greedy_stream` decodes many.

    Args:
        model: a `Transformer` in eval mode.
        src: (B, S) source ids, right-padded with PAD_ID, on the model's device.
        max_len: the most pieces to emit, one int for all or one per sentence.
        use_cache: False re-runs the decoder over the whole prefix at every step.
        sync_every: k >= 1: finished rows are found, and dropped, every k steps (a read
            of the device each time); the outputs are the same for every k.
        draws: sample instead, with these rows' uniforms (B, >= the longest max_len).
    Returns:
        B lists of piece ids, without BOS/EOS.
    """
    sync_every = host_sync.checked(sync_every)
    batch, device = src.size(0), src.device
    limits_host = clamp_caps(max_len, batch, model.cfg.max_positions)
    steps = int(limits_host.max()) if batch else 0
    memory = model.encode(src)  # (B, S, D)
    out = torch.full((batch, steps), EOS_ID, dtype=torch.long, device=device)  # (B, steps)
    alive = torch.arange(batch, device=device)  # (R,) each live row's sentence
    limits = limits_host.to(device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # (R,) since the check
    tokens = torch.full((batch, 1), BOS_ID, dtype=torch.long, device=device)  # (R, 1)
    prefix = tokens  # (R, t + 1), read only without a cache
    cache = KVCache.for_model(model) if use_cache else None
    for t in range(steps):
        hidden = _step_hidden(model, tokens, prefix, memory, src, cache)  # (R, D)
        logits = model.logits(hidden)  # (R, V)
        best = most_probable(logits) if draws is None else draws.pick(logits, alive, t)  # (R,)
        # finished rows decode on until the check; no row reads another, cut_at_eos cuts
        out[alive, t] = best
        finished |= (best == EOS_ID) | (limits <= t + 1)
        tokens = best[:, None]  # (R,) -> (R, 1)
        if cache is None:
            prefix = torch.cat([prefix, tokens], dim=1)  # (R, t + 1) -> (R, t + 2)
        if (t + 1) % sync_every or t + 1 == steps:  # after the last step all are done
            continue
        done = host_sync.to_host(finished)  # the check's one host read
        n_done = int(done.sum())
        if n_done == len(done):
            break
        if n_done:
            keep = (~done).nonzero().squeeze(1).to(device, non_blocking=True)
            alive, limits, tokens = alive[keep], limits[keep], tokens[keep]
            finished = finished[keep]  # all False: the rows that finished are gone
            if cache is not None:
                cache.select(keep)
            else:
                prefix, memory, src = prefix[keep], memory[keep], src[keep]
    return [cut_at_eos(row, n) for row, n in zip(out.tolist(), limits_host.tolist(), strict=True)]


def cut_at_eos(row: list[int], limit: int) -> list[int]:
    row = row[:limit]
    return row[: row.index(EOS_ID)] if EOS_ID in row else row


@torch.no_grad()
def beam_search(
    model: SearchModel,
    src: Tensor,
    beam: int,
    alpha: float,
    max_len: int | Sequence[int] | Tensor,
    nbest: int = 1,
    use_cache: bool = True,
    early_stop: bool = False,
) -> list[list[Hypothesis]]:
    """Beam search with the GNMT length penalty; beam 1 is exactly greedy search.

    At each step every live beam proposes its continuations; of the 2K best (by summed
    log-probability) those among the first K that end in EOS are set aside as finished
    hypotheses, and the K best that do not continue. A sentence is done when it has K
    finished hypotheses, or at its `max_len`, where its K best candidates are finished as
    they are. Its `nbest` best finished hypotheses by length-normalised score are returned.
    (The finished-in-the-first-K rule is what makes beam 1 equal to greedy.)

    `early_stop=True` also ends a sentence as soon as its best candidate ends in EOS (and
    it has `nbest` finished), OpenNMT-py's rule. That is exact for alpha 0 (nothing live
    can overtake a finished hypothesis whose probability it already trails) but not for
    alpha > 0, where a longer hypothesis may still win after normalisation: it is faster
    and favours short outputs (docs/performance.md, "Beam search").

    Args:
        src: (B, S) source ids, right-padded, on the model's device.
        beam: K >= 1; alpha: the length penalty's exponent (0 = plain log-probability).
        max_len: the most pieces per hypothesis, one int or one per sentence.
        nbest: hypotheses to return per sentence, 1 <= nbest <= beam.
        early_stop: also stop a sentence when its best candidate ends in EOS.
    Returns:
        B lists of `nbest` (piece ids, score) pairs, best first.
    """
    if beam < 1 or not 1 <= nbest <= beam:
        raise ValueError(f"need beam >= 1 and 1 <= nbest <= beam, got beam {beam}, nbest {nbest}")
    limits = clamp_caps(max_len, src.size(0), model.cfg.max_positions)
    state = _Beams.start(limits, src.device)
    memory = model.encode(src)  # (B, S, D)
    finished: list[list[Hypothesis]] = [[] for _ in range(src.size(0))]
    cache = KVCache.for_model(model) if use_cache else None
    for t in range(int(limits.max()) if len(limits) else 0):
        if cache is not None:
            hidden = _step_hidden(model, state.tokens, state.prefix, memory, src, cache)
        else:  # every row needs its sentence's memory
            rows = state.row_sentence
            hidden = _step_hidden(model, state.tokens, state.prefix, memory[rows], src[rows], None)
        logp = never_emitted(model.logits(hidden).float().log_softmax(-1))  # (R, V)
        cand = _propose(state, logp, beam)
        at_limit = state.limits <= t + 1  # (B_live,)
        counts = _set_aside(state, cand, at_limit, finished, length_penalty(t + 1, alpha))
        done = at_limit | (counts >= beam)  # (B_live,)
        if early_stop:
            # the most probable continuation of all is to stop: every live hypothesis is
            # already less probable than a finished one, and can only lose probability
            done |= (cand.token[:, 0] == EOS_ID) & (counts >= nbest)
        if bool(done.all()):
            break
        _carry_on(state, cand, done, beam, cache)
    return [sorted(hyps, key=lambda h: -h[1])[:nbest] for hyps in finished]


@dataclass
class _Beams:
    """Beam search's live rows: `beams` rows per live sentence (1 at the first step, when
    all beams would be equal; then K)."""

    alive: Tensor  # (B_live,) host: the live sentences
    limits: Tensor  # (B_live,) host: their output caps
    history: Tensor  # (R, t) host: each row's pieces
    scores: Tensor  # (B_live, beams) on the device: summed log-probabilities
    tokens: Tensor  # (R, 1) on the device: each row's newest token
    prefix: Tensor  # (R, t + 1) on the device, read only without a cache
    row_sentence: Tensor  # (R,) on the device: each row's sentence in `memory`
    beams: int = 1

    @classmethod
    def start(cls, limits: Tensor, device: torch.device) -> _Beams:
        batch = len(limits)
        tokens = torch.full((batch, 1), BOS_ID, dtype=torch.long, device=device)
        return cls(
            alive=torch.arange(batch),
            limits=limits,
            history=torch.zeros(batch, 0, dtype=torch.long),
            scores=torch.zeros(batch, 1, device=device),
            tokens=tokens,
            prefix=tokens,
            row_sentence=torch.arange(batch, device=device),
        )


@dataclass
class _Candidates:
    """One step's candidates per live sentence: the best K of the 2K, on the host, and
    the K best that do not end (the next beams), on the device and the host."""

    score: Tensor  # (B_live, K) host: summed log-probabilities, best first
    token: Tensor  # (B_live, K) host
    beam: Tensor  # (B_live, K) host: the row (within the sentence) it extends
    next_scores: Tensor  # (B_live, K) device
    next_token: Tensor  # (B_live, K) device
    next_beam: Tensor  # (B_live, K) device
    next_token_host: Tensor  # (B_live, K)
    next_beam_host: Tensor  # (B_live, K)


def _propose(state: _Beams, logp: Tensor, k: int) -> _Candidates:
    """Every live beam's continuations, scored; the best 2K and the K best open ones."""
    n_live, vocab = state.scores.size(0), logp.size(-1)
    total = state.scores[:, :, None] + logp.view(n_live, state.beams, vocab)  # (B_live,beams,V)
    width = min(2 * k, state.beams * vocab)
    cand_scores, cand = total.view(n_live, state.beams * vocab).topk(width, dim=1)
    cand_beam, cand_token = cand // vocab, cand % vocab  # (B_live, 2K)
    # the K best candidates that do not end here carry on
    open_scores = cand_scores.masked_fill(cand_token == EOS_ID, -math.inf)
    next_scores, pick = open_scores.topk(min(k, width), dim=1)  # (B_live, K)
    next_token, next_beam = cand_token.gather(1, pick), cand_beam.gather(1, pick)
    first = min(k, width)
    packed = torch.stack(  # one host transfer per step; float64 holds these ints exactly
        [
            cand_scores[:, :first].double(),
            cand_token[:, :first].double(),
            cand_beam[:, :first].double(),
            next_token.double(),
            next_beam.double(),
        ]
    ).cpu()
    return _Candidates(
        score=packed[0],
        token=packed[1].long(),
        beam=packed[2].long(),
        next_scores=next_scores,
        next_token=next_token,
        next_beam=next_beam,
        next_token_host=packed[3].long(),
        next_beam_host=packed[4].long(),
    )


def _set_aside(
    state: _Beams,
    cand: _Candidates,
    at_limit: Tensor,
    finished: list[list[Hypothesis]],
    penalty: float,
) -> Tensor:
    """File the candidates that end (in EOS, or at the cap) as finished hypotheses.

    Returns each live sentence's count of finished hypotheses, (B_live,).
    """
    ends = ((cand.token == EOS_ID) | at_limit[:, None]) & (cand.score > -math.inf)
    for i, j in ends.nonzero().tolist():
        pieces = state.history[i * state.beams + cand.beam[i, j]].tolist()
        if cand.token[i, j] != EOS_ID:
            pieces.append(int(cand.token[i, j]))
        finished[int(state.alive[i])].append((pieces, float(cand.score[i, j]) / penalty))
    return torch.tensor([len(finished[s]) for s in state.alive.tolist()], dtype=torch.long)


def _carry_on(
    state: _Beams, cand: _Candidates, done: Tensor, k: int, cache: KVCache | None
) -> None:
    """Reorder the rows to the surviving beams, and drop the sentences that are done."""
    n_live, device = state.scores.size(0), state.scores.device
    parent = torch.arange(n_live)[:, None] * state.beams + cand.next_beam_host  # (B_live, K)
    history = torch.cat([state.history[parent.view(-1)], cand.next_token_host.view(-1, 1)], 1)
    parent_dev = torch.arange(n_live, device=device)[:, None] * state.beams + cand.next_beam
    parent_dev = parent_dev.view(-1)  # (R',) rows at this step
    next_scores, next_token = cand.next_scores, cand.next_token
    dropped = bool(done.any())
    if dropped:
        keep = (~done).nonzero().squeeze(1)  # (B_live',) host
        keep_rows = (keep[:, None] * k + torch.arange(k)).view(-1)  # (R',)
        history, state.alive, state.limits = (
            history[keep_rows],
            state.alive[keep],
            state.limits[keep],
        )
        keep_dev = keep.to(device, non_blocking=True)
        next_scores, next_token = next_scores[keep_dev], next_token[keep_dev]
        parent_dev = parent_dev.view(n_live, k)[keep_dev].view(-1)
    state.history, state.scores = history, next_scores  # (R', t + 1), (B_live', K)
    state.tokens = next_token.reshape(-1, 1)  # (R', 1)
    if cache is not None:
        # each row's parent is a beam of its own sentence, so unless a sentence was
        # dropped (or the beams fanned out from one row at the first step) the
        # cross-attention keys and values already sit in the right rows
        cache.select(parent_dev, sources_too=dropped or state.beams != k)
    else:
        state.prefix = torch.cat([state.prefix[parent_dev], state.tokens], dim=1)  # (R', t + 2)
        state.row_sentence = state.row_sentence[parent_dev]
    state.beams = k
