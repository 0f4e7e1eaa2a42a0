"""Decoding with a model exported to CTranslate2 (`tfx export --to ctranslate2`).

An export directory holds CTranslate2's `model.bin` and vocabularies, the SentencePiece
model(s) and `tfx_export.json` (the tfx version, the config, the step). `tfx translate`
and `tfx evaluate` take such a directory wherever they take a checkpoint: the same
source pieces go in (no BOS/EOS), cut and capped by the same rules (`limits.py`), and PAD
and BOS are never predicted, as in search.py. Greedy outputs are then tfx's own; beam search scores
length as CTranslate2 does (the score divided by length ** alpha, where tfx divides by
GNMT's ((5 + length) / 6) ** alpha), so a few beam outputs may differ.

`ctranslate2` is an optional extra (`pip install 'tfx[export]'`), imported only here and
in export/.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformer_cli.core.config import Config, DecodeConfig
from transformer_cli.core.errors import CheckpointError, ConfigError, TfxError
from transformer_cli.data.checkpoint_parts import saved_config
from transformer_cli.data.tokenizer import JOINT_FILE, SRC_FILE, TGT_FILE, Tokenizer
from transformer_cli.decoding import limits
from transformer_cli.decoding.scoring import PairScore, cut_pairs

if TYPE_CHECKING:
    from transformer_cli.decoding.search import Hypothesis

EXPORT_FILE = "tfx_export.json"
EXTRA = "pip install 'tfx[export]' (or: pip install ctranslate2)"


def is_export_dir(path: str | Path) -> bool:
    """True for a directory `tfx export --to ctranslate2` wrote."""
    path = Path(path)
    return path.is_dir() and (path / "model.bin").is_file() and (path / EXPORT_FILE).is_file()


def require_ctranslate2() -> Any:
    """The ctranslate2 module, or a one-line error that names the extra to install."""
    try:
        import ctranslate2
    except ImportError:
        raise TfxError(f"CTranslate2 is not installed: {EXTRA}") from None
    return ctranslate2


@dataclass
class Exported:
    """A loaded export directory: its tfx config and tokenizer, and CTranslate2's model."""

    path: Path
    cfg: Config
    tokenizer: Tokenizer
    step: int | None
    translator: Any  # ctranslate2.Translator


def read_export_info(path: Path) -> dict:
    """tfx_export.json of an export directory; CheckpointError if it is unreadable."""
    try:
        return json.loads((path / EXPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / EXPORT_FILE}: unreadable ({e})") from None


def load_export(
    path: str | Path, device: str = "cpu", threads: int = 0, seed: int | None = None
) -> Exported:
    """Open an export directory on `device` (cpu or cuda) with `threads` CPU threads.

    Its sampling draws from one random stream, seeded here by `seed` (None: the export's
    decode.seed): CTranslate2 seeds each worker thread's generator once, when it first
    samples, so a seed can only be given before that.
    """
    path = Path(path)
    ctranslate2 = require_ctranslate2()
    info = read_export_info(path)
    cfg = saved_config(info, path, source=path / EXPORT_FILE)
    ctranslate2.set_random_seed((cfg.decode.seed if seed is None else seed) % 2**32)
    names = [n for n in (JOINT_FILE, SRC_FILE, TGT_FILE) if (path / n).is_file()]
    tokenizer = Tokenizer.from_bytes({n: (path / n).read_bytes() for n in names})
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: CTranslate2 runs on cpu or cuda")
    translator = ctranslate2.Translator(str(path), device=device, intra_threads=threads)
    return Exported(path, cfg, tokenizer, info.get("step"), translator)


def decode_exported(
    exp: Exported, sources: list[list[int]], decode: DecodeConfig, nbest: int = 1
) -> list[list[int]] | list[list[Hypothesis]]:
    """`runner.decode_all` by CTranslate2: piece ids (nbest 1) or scored n-best lists.

    Sampling uses CTranslate2's own (`sampling_topk`, `_topp`, `_temperature`): the same
    distribution as tfx's, drawn from the export's one random stream (`load_export`), so
    its draws depend on the batches and on what was sampled before. Samples are scored
    as tfx scores them: their mean log-probability per token, by `score_batch`.
    """
    sources, caps = _fitted(exp, sources, decode)
    if decode.sample:
        return _sample_exported(exp, sources, caps, decode, nbest)
    nothing: Hypothesis = ([], 0.0)
    empty: list[int] | list[Hypothesis] = [] if nbest == 1 else [nothing] * nbest
    results: list = [empty] * len(sources)
    for group in _groups(_by_cap(sources, caps), caps, decode):
        pieces = [exp.tokenizer.src_id_pieces(sources[i]) for i in group]
        cap = max(caps[i] for i in group)
        out = exp.translator.translate_batch(
            pieces,
            beam_size=decode.beam,
            num_hypotheses=nbest,
            length_penalty=decode.alpha if decode.beam > 1 else 0.0,
            max_decoding_length=cap,
            max_input_length=0,
            suppress_sequences=limits.NEVER_EMITTED_PIECES,
            return_scores=nbest > 1,
        )
        for i, result in zip(group, out, strict=True):
            hyps = [exp.tokenizer.tgt_piece_ids(h)[: caps[i]] for h in result.hypotheses]
            results[i] = hyps[0] if nbest == 1 else list(zip(hyps, result.scores, strict=True))
    return results


def _fitted(
    exp: Exported, sources: list[list[int]], decode: DecodeConfig
) -> tuple[list[list[int]], list[int]]:
    """The sources cut to the model's positions, and their output caps (`limits`)."""
    positions = exp.cfg.model.max_positions
    sources, _ = limits.fit_sources(sources, positions)
    return sources, [limits.output_cap(len(s), decode, positions) for s in sources]


def _by_cap(sources: list[list[int]], caps: list[int]) -> list[int]:
    """The non-empty sources' numbers, by output cap, then longest first."""
    return sorted(
        (i for i, s in enumerate(sources) if s), key=lambda i: (caps[i], -len(sources[i]))
    )


def _sample_exported(
    exp: Exported, sources: list[list[int]], caps: list[int], decode: DecodeConfig, nbest: int
) -> list[list[int]] | list[list[Hypothesis]]:
    """`decode_exported` for `decode.sample`, on fitted sources and their caps."""
    # CTranslate2 refuses a top-k beyond its vocabulary, and several hypotheses of top-k 1;
    # top-k 1 is greedy search, whose every draw is the same
    topk = min(decode.topk, exp.tokenizer.tgt_vocab_size)
    draws = 1 if topk == 1 else nbest
    results: list = [[] if nbest == 1 else [[]] * nbest for _ in sources]
    one_at_a_time = dataclasses.replace(decode, beam=1)  # any caps in a batch, as greedy's
    for group in _groups(_by_cap(sources, caps), caps, one_at_a_time):
        out = exp.translator.translate_batch(
            [exp.tokenizer.src_id_pieces(sources[i]) for i in group],
            beam_size=1,
            num_hypotheses=draws,
            sampling_topk=topk,
            sampling_topp=decode.topp,
            sampling_temperature=decode.temperature,
            max_decoding_length=max(caps[i] for i in group),
            max_input_length=0,
            suppress_sequences=limits.NEVER_EMITTED_PIECES,
        )
        for i, result in zip(group, out, strict=True):
            hyps = [exp.tokenizer.tgt_piece_ids(h)[: caps[i]] for h in result.hypotheses]
            results[i] = hyps[0] if nbest == 1 else hyps * (nbest // draws)
    if nbest == 1:
        return results
    return _scored_samples(exp, sources, results)


def _scored_samples(
    exp: Exported, sources: list[list[int]], samples: list[list[list[int]]]
) -> list[list[Hypothesis]]:
    """Each sentence's samples with their mean log-probability per token (`pair_scores`)."""
    pairs = [(i, hyp) for i, hyps in enumerate(samples) if sources[i] for hyp in hyps]
    scores = pair_scores(exp, [sources[i] for i, _ in pairs], [h for _, h in pairs])
    means = iter(score.mean for score in scores)
    nothing: Hypothesis = ([], 0.0)
    return [
        [(hyp, next(means)) for hyp in hyps] if sources[i] else [nothing] * len(hyps)
        for i, hyps in enumerate(samples)
    ]


def _groups(order: list[int], caps: list[int], decode: DecodeConfig) -> list[list[int]]:
    """Batches of at most batch_sentences; under beam search, of one output cap each.

    Greedy outputs with a larger cap are cut back to each sentence's own, which is
    exact (a greedy output is a prefix of a longer one); beam outputs are not prefixes.
    """
    groups: list[list[int]] = []
    for i in order:
        fits = groups and len(groups[-1]) < decode.batch_sentences
        if fits and (decode.beam == 1 or caps[groups[-1][0]] == caps[i]):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def target_log_probs(
    exp: Exported, sources: list[list[int]], targets: list[list[int]], batch_tokens: int = 0
) -> list[list[float]]:
    """Per-token log-probabilities of each target (its pieces, then EOS), teacher-forced;
    `batch_tokens` > 0 bounds CTranslate2's batches by tokens."""
    fitted, _ = limits.fit_sources(sources, exp.cfg.model.max_positions)
    src = [exp.tokenizer.src_id_pieces(s) for s in fitted]
    tgt = [exp.tokenizer.tgt_pieces(t) for t in targets]
    batching = {"max_batch_size": batch_tokens, "batch_type": "tokens"} if batch_tokens else {}
    results = exp.translator.score_batch(src, tgt, max_input_length=0, **batching)
    return [list(r.log_probs) for r in results]


def pair_scores(
    exp: Exported, sources: list[list[int]], targets: list[list[int]], batch_tokens: int = 0
) -> list[PairScore]:
    """`scoring.score_pairs` by CTranslate2's `score_batch`: the pairs cut alike
    (`scoring.cut_pairs`), each pair's log-probability summed over its tokens."""
    sources, targets = cut_pairs(sources, targets, exp.cfg.model.max_positions)
    log_probs = target_log_probs(exp, sources, targets, batch_tokens)
    return [PairScore(math.fsum(lp), len(lp)) for lp in log_probs]
