"""Corpus BLEU and chrF of detokenized text: what validation and `tfx evaluate` report.

sacreBLEU is imported when a score is asked for, so importing this module costs nothing.
"""

from __future__ import annotations


def score_texts(hyps: list[str], refs: list[str]) -> dict:
    """Corpus BLEU and chrF (sacreBLEU defaults: 13a tokenization, cased) with signatures."""
    import sacrebleu

    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references")
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(hyps, [refs])
    c = chrf.corpus_score(hyps, [refs])
    return {
        "bleu": round(b.score, 2),
        "chrf": round(c.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }
