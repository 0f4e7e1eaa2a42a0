"""The range and cross-field rules of a config, one message per problem.

Decoding options are checked by one set of rules whether they come from a config file
or from a command's flags (`apply_decode_overrides`); only the names in the messages
differ.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from transformer_cli.core.config import (
    DECODE_FLAGS,
    PRECISIONS,
    Config,
    DecodeConfig,
    DecodeOverrides,
    Precision,
    is_precision,
)
from transformer_cli.core.errors import ConfigError
from transformer_cli.core.specials import BOS, EOS, PAD, UNK

Check = Callable[[bool, str, str], None]
SAMPLING_ONLY = ("topk", "topp", "temperature")  # flags that mean nothing to a search


def validate(cfg: Config) -> list[str]:
    """Cross-field and range rules; returns one message per problem."""
    problems: list[str] = []

    def check(ok: bool, key: str, message: str) -> None:
        if not ok:
            problems.append(f"{key}: {message}")

    _data_rules(cfg, check)
    _model_rules(cfg, check)
    _train_rules(cfg, check)
    problems.extend(decode_problems(cfg.decode, flags=False))
    return problems


def _data_rules(cfg: Config, check: Check) -> None:
    """run_dir, data and tokenizer."""
    d, tok = cfg.data, cfg.tokenizer
    check(bool(cfg.run_dir.strip()), "run_dir", "must not be empty")
    check(d.source != "hub" or bool(d.hub_name), "data.hub_name", "required when source is hub")
    check(d.max_len >= 1, "data.max_len", f"must be >= 1, got {d.max_len}")
    check(d.max_ratio >= 0, "data.max_ratio", f"must be >= 0 (0 = off), got {d.max_ratio}")
    check(
        d.src_lang != d.tgt_lang or d.source != "files" or d.format != "text",
        "data.tgt_lang",
        "must differ from data.src_lang for text files",
    )
    check(tok.vocab_size >= 16, "tokenizer.vocab_size", f"must be >= 16, got {tok.vocab_size}")
    check(
        0 < tok.character_coverage <= 1,
        "tokenizer.character_coverage",
        f"must be in (0, 1], got {tok.character_coverage}",
    )
    check(tok.sample_size >= 1, "tokenizer.sample_size", f"must be >= 1, got {tok.sample_size}")
    if isinstance(d.train, tuple):
        _corpus_rules(cfg, check)


def _corpus_rules(cfg: Config, check: Check) -> None:
    """data.train as a list of corpora: weights, tags and where each one is."""
    corpora = cfg.data.train
    assert isinstance(corpora, tuple)
    check(bool(corpora), "data.train", "an empty list names no corpus")
    check(
        not corpora or any(c.weight > 0 for c in corpora),
        "data.train",
        "every corpus has weight 0: nothing to train on",
    )
    seen: dict[str, int] = {}
    for i, c in enumerate(corpora):
        key = f"data.train.{i}"
        check(
            math.isfinite(c.weight) and c.weight >= 0,
            f"{key}.weight",
            f"must be a number >= 0, got {c.weight}",
        )
        source = c.source or cfg.data.source
        check(
            source != "hub" or bool(c.hub_name or cfg.data.hub_name),
            f"{key}.hub_name",
            "required when source is hub",
        )
        if not c.tag:
            continue
        check(
            not any(ch.isspace() for ch in c.tag),
            f"{key}.tag",
            f"must be one piece without spaces, got {c.tag!r}",
        )
        check(
            c.tag not in (PAD, UNK, BOS, EOS),
            f"{key}.tag",
            f"{c.tag} is a special piece of every tfx tokenizer; choose another, e.g. <bt>",
        )
        check(
            c.tag not in seen,
            f"{key}.tag",
            f"{c.tag} is already data.train.{seen.get(c.tag)}.tag; each corpus's tag must differ",
        )
        seen.setdefault(c.tag, i)


def _model_rules(cfg: Config, check: Check) -> None:
    """The model's shape, and what it needs of the data and tokenizer."""
    m, d, tok = cfg.model, cfg.data, cfg.tokenizer
    for name in ("d_model", "heads", "enc_layers", "dec_layers", "d_ff", "max_positions"):
        value = getattr(m, name)
        check(value >= 1, f"model.{name}", f"must be >= 1, got {value}")
    if m.heads >= 1:
        check(
            m.d_model % m.heads == 0,
            "model.heads",
            f"must divide model.d_model ({m.d_model} % {m.heads} != 0)",
        )
    for name in ("dropout", "attention_dropout"):
        value = getattr(m, name)
        check(0 <= value < 1, f"model.{name}", f"must be in [0, 1), got {value}")
    if m.positional == "rope" and m.heads >= 1 and m.d_model % m.heads == 0:
        head_dim = m.d_model // m.heads
        check(
            head_dim % 2 == 0,
            "model.positional",
            f"rope rotates pairs of dimensions: the head size d_model / heads must be even, "
            f"got {head_dim}",
        )
    check(
        m.max_relative_distance >= 1,
        "model.max_relative_distance",
        f"must be >= 1, got {m.max_relative_distance}",
    )
    check(
        m.max_positions >= d.max_len + 2,
        "model.max_positions",
        f"must be >= data.max_len + 2 ({d.max_len + 2}), got {m.max_positions}",
    )
    check(
        not m.share_embeddings or tok.joint,
        "model.share_embeddings",
        "needs a joint vocabulary (tokenizer.joint: true)",
    )
    check(m.src_vocab >= 0 and m.tgt_vocab >= 0, "model.src_vocab", "must be >= 0")


def _train_rules(cfg: Config, check: Check) -> None:
    """The training recipe."""
    t = cfg.train
    check(t.threads >= 0, "train.threads", f"must be >= 0, got {t.threads}")
    check(t.batch_tokens >= 1, "train.batch_tokens", f"must be >= 1, got {t.batch_tokens}")
    check(t.accum_steps >= 1, "train.accum_steps", f"must be >= 1, got {t.accum_steps}")
    check(t.pad_multiple >= 0, "train.pad_multiple", f"must be >= 0, got {t.pad_multiple}")
    for name in ("max_steps", "max_epochs", "patience", "max_bad_steps"):
        value = getattr(t, name)
        check(value >= 0, f"train.{name}", f"must be >= 0, got {value}")
    check(t.max_minutes >= 0, "train.max_minutes", f"must be >= 0, got {t.max_minutes}")
    check(
        t.dist_timeout_minutes > 0,
        "train.dist_timeout_minutes",
        f"must be > 0, got {t.dist_timeout_minutes}",
    )
    check(t.warmup >= 1, "train.warmup", f"must be >= 1, got {t.warmup}")
    check(t.noam_factor > 0, "train.noam_factor", f"must be > 0, got {t.noam_factor}")
    check(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
    check(all(0 <= b < 1 for b in t.betas), "train.betas", f"must be in [0, 1), got {t.betas}")
    check(t.eps > 0, "train.eps", f"must be > 0, got {t.eps}")
    check(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    check(t.clip_norm >= 0, "train.clip_norm", f"must be >= 0 (0 = off), got {t.clip_norm}")
    check(
        0 <= t.label_smoothing < 1,
        "train.label_smoothing",
        f"must be in [0, 1), got {t.label_smoothing}",
    )
    for name in ("log_every", "eval_every", "keep_last"):
        value = getattr(t, name)
        check(value >= 1, f"train.{name}", f"must be >= 1, got {value}")


def decode_problems(dec: DecodeConfig, nbest: int = 1, flags: bool = False) -> list[str]:
    """The range rules of decoding options, one message per problem.

    Messages name the config keys (`decode.beam: must be >= 1, got 0`), or with `flags`
    the command's flags (`--beam must be >= 1, got 0`). `precision` is checked where it
    is resolved for a device (`runtime.resolve_precision`).
    """
    problems: list[str] = []

    def name(option: str) -> str:
        if flags:
            return DECODE_FLAGS[option]
        return option if option == "nbest" else f"decode.{option}"

    def check(ok: bool, option: str, message: str) -> None:
        if not ok:
            sep = " " if flags else ": "  # `--beam must be ...`, `decode.beam: must be ...`
            problems.append(f"{name(option)}{sep}{message}")

    check(dec.beam >= 1, "beam", f"must be >= 1, got {dec.beam}")
    if dec.sample:  # each sample is drawn alone: any number of them, whatever the beam
        check(nbest >= 1, "nbest", f"must be >= 1, got {nbest}")
    elif dec.beam >= 1:
        check(
            1 <= nbest <= dec.beam,
            "nbest",
            f"must be between 1 and {name('beam')} ({dec.beam}), got {nbest}",
        )
    check(dec.topk >= 0, "topk", f"must be >= 0 (0 = all pieces), got {dec.topk}")
    check(0 < dec.topp <= 1, "topp", f"must be in (0, 1], got {dec.topp}")
    check(dec.temperature >= 1e-6, "temperature", f"must be >= 1e-06, got {dec.temperature}")
    check(dec.seed >= 0, "seed", f"must be >= 0, got {dec.seed}")
    check(dec.alpha >= 0, "alpha", f"must be >= 0, got {dec.alpha}")
    check(dec.max_len_a >= 0, "max_len_a", f"must be >= 0, got {dec.max_len_a}")
    check(dec.max_len_b >= 0, "max_len_b", f"must be >= 0, got {dec.max_len_b}")
    if dec.max_len_a == 0 and dec.max_len_b == 0:
        problems.append(f"{name('max_len_a')} and {name('max_len_b')} cannot both be 0")
    check(dec.batch_sentences >= 1, "batch_sentences", f"must be >= 1, got {dec.batch_sentences}")
    check(dec.sync_every >= 0, "sync_every", f"must be >= 0 (0 = auto), got {dec.sync_every}")
    return problems


def checked_precision(value: str, key: str) -> Precision:
    """`value` as a precision setting; ConfigError naming `key` if it is not one."""
    if not is_precision(value):
        raise ConfigError(f"{key}: must be one of {'|'.join(PRECISIONS)}, got {value!r}")
    return value


def precision_flag(value: str | None) -> Precision | None:
    """A command's --precision: None keeps the config's; anything else must be a precision
    setting (the same message as `runtime.resolve_precision` gives)."""
    return None if value is None else checked_precision(value, DECODE_FLAGS["precision"])


def apply_decode_overrides(
    decode: DecodeConfig, overrides: DecodeOverrides, flags: bool = True
) -> DecodeConfig:
    """`decode` with each option that `overrides` gives put in, checked by `validate`'s rules.

    One ConfigError names every problem, by flag (`--beam`), or with `flags=False` by
    config key (`decode.beam`).
    """
    given = {
        f.name: getattr(overrides, f.name)
        for f in dataclasses.fields(DecodeConfig)
        if getattr(overrides, f.name) is not None
    }
    merged = dataclasses.replace(decode, **given)
    problems = decode_problems(merged, overrides.nbest, flags)
    if flags and not merged.sample:
        problems += [f"{DECODE_FLAGS[k]} needs --sample" for k in SAMPLING_ONLY if k in given]
    if flags and merged.sample and given.get("beam", 1) > 1:
        problems.append("--sample draws one piece at a time: it takes no --beam")
    if problems:
        raise ConfigError("; ".join(problems))
    return merged
