"""YAML -> frozen dataclasses, with strict validation and `--set a.b=v` overrides.

Every option tfx has is a typed field with one default, here and nowhere else. A
misspelled key is an error with a suggestion, a value is converted by its field's
declared type (PyYAML reads `1e-3` as a string; tfx reads it as the float the field
asks for), and all problems are reported together.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from transformer_cli.core.errors import ConfigError

# auto: bf16 (or fp16) on CUDA, fp32 elsewhere; resolved by `runtime.resolve_precision`
Precision = Literal["auto", "fp32", "bf16", "fp16"]
# auto: CUDA, else Apple's MPS, else the CPU; resolved by `runtime.pick_device`
Device = Literal["auto", "cpu", "cuda", "mps"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
DEVICES: tuple[str, ...] = typing.get_args(Device)


@dataclass(frozen=True)
class DataConfig:
    """Where the parallel text comes from, and which pairs are kept for training."""

    source: Literal["toy", "files", "hub"] = "toy"
    # files: {dir}/{split}.{lang}[.gz] for format text, {dir}/{split}.{tsv|jsonl} otherwise
    dir: str = "data/toy"
    format: Literal["text", "tsv", "jsonl"] = "text"
    src_lang: str = "en"
    tgt_lang: str = "de"
    # field names for tsv/jsonl/hub rows; empty = the language code; dotted = nested
    src_field: str = ""
    tgt_field: str = ""
    hub_name: str = ""
    hub_config: str = ""
    train: str = "train"
    valid: str = "valid"
    test: str = "test"
    # training pairs longer than this (in pieces, either side) are dropped
    max_len: int = 100
    # training pairs whose piece-length ratio exceeds this are dropped (0 = keep all)
    max_ratio: float = 3.0


@dataclass(frozen=True)
class TokenizerConfig:
    """SentencePiece: one joint model or one per language."""

    joint: bool = True
    vocab_size: int = 8000
    model_type: Literal["unigram", "bpe", "char", "word"] = "unigram"
    character_coverage: float = 1.0
    # at most this many sentences are sampled to train SentencePiece
    sample_size: int = 300_000


@dataclass(frozen=True)
class ModelConfig:
    """The Transformer's shape. The vocabulary sizes come from the tokenizer (0 = not set yet)."""

    d_model: int = 512
    heads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.0
    norm: Literal["post", "pre"] = "post"
    positional: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_positions: int = 1024
    share_embeddings: bool = True
    tie_output: bool = True
    # sdpa: torch's fused kernel; math: eq. 1 written out; auto: sdpa on CUDA, math on the
    # CPU, where it is the faster one at sentence lengths (README, "attention paths")
    attention: Literal["auto", "sdpa", "math"] = "auto"
    src_vocab: int = 0
    tgt_vocab: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe: batches, optimiser, schedule, precision, checkpoints."""

    seed: int = 1234
    device: Device = "auto"
    precision: Precision = "auto"
    compile: bool = False
    threads: int = 0  # 0 = one per core
    batch_tokens: int = 4096  # real (non-pad) target tokens per batch
    accum_steps: int = 1
    max_steps: int = 0  # 0 = no limit
    max_epochs: int = 0  # 0 = no limit
    max_minutes: float = 0.0  # wall-clock budget, 0 = none
    optimizer: Literal["adam", "adamw"] = "adam"
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    schedule: Literal["noam", "inverse_sqrt", "constant"] = "noam"
    noam_factor: float = 2.0  # noam: lr = factor * d_model^-0.5 * min(step^-0.5, step*warmup^-1.5)
    lr: float = 5e-4  # inverse_sqrt: the peak; constant: the value
    warmup: int = 4000
    clip_norm: float = 0.0  # 0 = no clipping
    label_smoothing: float = 0.1
    fused_loss: bool = True  # project + score in chunks, never all (tokens x vocab) logits
    log_every: int = 50
    eval_every: int = 1000
    keep_last: int = 3
    patience: int = 0  # validations without a better BLEU before stopping; 0 = never stop early
    max_bad_steps: int = 10  # non-finite losses in a row before training stops


@dataclass(frozen=True)
class DecodeConfig:
    """Defaults for greedy/beam search in validation, translate and evaluate."""

    beam: int = 1
    alpha: float = 1.0  # GNMT length penalty exponent (beam search only)
    early_stop: bool = False  # beam: also stop a sentence when its best candidate ends
    max_len_a: float = 1.5  # max output pieces = a * source pieces + b
    max_len_b: int = 10
    batch_sentences: int = 64
    # bf16 on a CPU with bf16 matrix units decodes faster; outputs then differ from fp32
    # in a few sentences
    precision: Precision = "auto"


@dataclass(frozen=True)
class DecodeOverrides:
    """A command's decode options; None keeps the checkpoint's (or --config's) value."""

    beam: int | None = None
    alpha: float | None = None
    early_stop: bool | None = None
    max_len_a: float | None = None
    max_len_b: int | None = None
    batch_sentences: int | None = None
    precision: Precision | None = None
    nbest: int = 1  # hypotheses per source (translate); not a decode setting


NO_OVERRIDES = DecodeOverrides()  # decode as the checkpoint's (or --config's) config says

# the command-line flag of each decoding option, for messages about a command's options
DECODE_FLAGS = {
    "beam": "--beam",
    "alpha": "--alpha",
    "early_stop": "--early-stop",
    "max_len_a": "--max-len-a",
    "max_len_b": "--max-len-b",
    "batch_sentences": "--batch-size",
    "precision": "--precision",
    "nbest": "--nbest",
}


@dataclass(frozen=True)
class Config:
    """A whole tfx run. Everything the run writes goes under `run_dir`."""

    run_dir: str
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


_MISSING = object()


# ----------------------------------------------------------------------------- reading


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `a.b=v` overrides, convert, validate; raise ConfigError."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"config path is a directory, not a YAML file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    raw, lines, repeated = parse_yaml(text, str(path))
    return config_from_dict(raw, overrides, source=str(path), lines=lines, problems=repeated)


def parse_yaml(text: str, source: str) -> tuple[dict, dict[str, int], list[str]]:
    """Safe-load YAML text into a dict, with the line number of every dotted key.

    The third item names each key given twice in one mapping (`file:9: model: key given
    twice (first at line 3)`): YAML would silently keep the last one.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else "?"
        raise ConfigError(
            f"{source}:{line}: YAML tag not allowed ({e.problem}); tfx reads plain YAML only"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    lines: dict[str, int] = {}
    repeated: list[str] = []
    _key_lines(node, "", lines, repeated)
    return raw, lines, [f"{source}:{problem}" for problem in repeated]


def _key_lines(node: Any, prefix: str, out: dict[str, int], repeated: list[str]) -> None:
    """Each dotted key's line into `out` (a repeated key's last, the one YAML keeps), and a
    `LINE: key: key given twice` message into `repeated` for each repeat within a mapping."""
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}  # this mapping's keys, at their first line
        for key_node, value_node in node.value:
            dotted = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            if dotted in first:
                was = first[dotted]
                repeated.append(f"{line}: {dotted}: key given twice (first at line {was})")
            else:
                first[dotted] = line
            out[dotted] = line
            _key_lines(value_node, dotted + ".", out, repeated)


def config_from_dict(
    raw: dict,
    overrides: list[str] | tuple[str, ...] = (),
    source: str = "config",
    lines: dict[str, int] | None = None,
    problems: list[str] | tuple[str, ...] = (),
) -> Config:
    """Build a validated Config from plain data; every problem is reported in one error.

    `problems` are the reader's own (keys given twice), reported first with the rest.
    """
    lines = lines or {}
    errors: list[str] = list(problems)
    raw = _apply_overrides(raw, overrides, errors)
    override_keys = {o.split("=", 1)[0].strip() for o in overrides if "=" in o}

    def where(dotted: str) -> str:
        if dotted in override_keys:
            return f"--set {dotted}"
        if dotted in lines:
            return f"{source}:{lines[dotted]}: {dotted}"
        return f"{source}: {dotted}"

    cfg = _build(Config, raw, "", errors, where)
    if not errors:
        errors.extend(validate(cfg))
    if errors:
        shown = "; ".join(errors[:8])
        more = f" (and {len(errors) - 8} more)" if len(errors) > 8 else ""
        raise ConfigError(shown + more)
    return cfg


def _apply_overrides(raw: dict, overrides, errors: list[str]) -> dict:
    raw = _deep_copy(raw)
    for item in overrides:
        if "=" not in item:
            errors.append(f"--set {item}: expected KEY=VALUE, e.g. train.lr=3e-4")
            continue
        key, value = (s.strip() for s in item.split("=", 1))
        if not key:
            errors.append(f"--set {item}: empty key")
            continue
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = parsed
    return raw


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    return d


def _build(cls: type, raw: Any, prefix: str, errors: list[str], where) -> Any:
    """Convert a mapping into dataclass `cls`, appending problems to `errors`."""
    if not isinstance(raw, dict):
        errors.append(f"{where(prefix.rstrip('.'))}: expected a mapping, got {_show(raw)}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            errors.append(f"{where(prefix + str(key))}: unknown key{_suggest(str(key), prefix)}")
    values = {}
    for name, f in fields.items():
        dotted = prefix + name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append(f"{where(dotted)}: required key missing")
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(
                tp, raw[name] if raw[name] is not None else {}, dotted + ".", errors, where
            )
        else:
            value = _convert(raw[name], tp)
            if value is _MISSING:
                errors.append(f"{where(dotted)}: expected {_type_name(tp)}, got {_show(raw[name])}")
            else:
                values[name] = value
    if errors:  # keep checking the other sections, but build nothing half-valid
        return None
    return cls(**values)


def _convert(value: Any, tp: Any) -> Any:
    """Convert a YAML value to the declared type, or return _MISSING."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        return value if isinstance(value, str) and value in choices else _MISSING
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return _MISSING
        out = tuple(_convert(v, a) for v, a in zip(value, args, strict=True))
        return _MISSING if any(v is _MISSING for v in out) else out
    if origin in (typing.Union, types.UnionType):
        return _MISSING
    if tp is bool:
        return value if isinstance(value, bool) else _MISSING
    if tp is int:
        if isinstance(value, bool):
            return _MISSING
        if isinstance(value, int):
            return value
        number = _number(value)
        if number is not None and float(number).is_integer():
            return int(number)
        return _MISSING
    if tp is float:
        if isinstance(value, bool):
            return _MISSING
        number = _number(value)
        return float(number) if number is not None else _MISSING
    if tp is str:
        return value if isinstance(value, str) else _MISSING
    raise TypeError(f"config field type {tp!r} is not supported")


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace("_", ""))
        except ValueError:
            return None
    return None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + "|".join(typing.get_args(tp))
    if origin is tuple:
        return "a list [" + ", ".join(_type_name(a) for a in typing.get_args(tp)) + "]"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key a config may have."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(all_keys(hints[f.name], prefix + f.name + "."))
    return keys


def _suggest(key: str, prefix: str) -> str:
    """A did-you-mean hint: first among the same section's keys, then anywhere."""
    keys = all_keys()
    rest = [k[len(prefix) :] for k in keys if k.startswith(prefix)]
    siblings = [k for k in rest if "." not in k]
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {prefix}{close[0]}?)"
    elsewhere = [k for k in keys if k.rsplit(".", 1)[-1] == key]
    if elsewhere:
        return f" (did you mean {elsewhere[0]}?)"
    close = difflib.get_close_matches(prefix + key, keys, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


# ----------------------------------------------------------------------------- validation


def validate(cfg: Config) -> list[str]:
    """Cross-field and range rules; returns one message per problem."""
    problems: list[str] = []

    def check(ok: bool, key: str, message: str) -> None:
        if not ok:
            problems.append(f"{key}: {message}")

    m, t, d, tok, dec = cfg.model, cfg.train, cfg.data, cfg.tokenizer, cfg.decode
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
    check(t.threads >= 0, "train.threads", f"must be >= 0, got {t.threads}")
    check(t.batch_tokens >= 1, "train.batch_tokens", f"must be >= 1, got {t.batch_tokens}")
    check(t.accum_steps >= 1, "train.accum_steps", f"must be >= 1, got {t.accum_steps}")
    for name in ("max_steps", "max_epochs", "patience", "max_bad_steps"):
        value = getattr(t, name)
        check(value >= 0, f"train.{name}", f"must be >= 0, got {value}")
    check(t.max_minutes >= 0, "train.max_minutes", f"must be >= 0, got {t.max_minutes}")
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
    problems.extend(decode_problems(dec, flags=False))
    return problems


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
    if dec.beam >= 1:
        check(
            1 <= nbest <= dec.beam,
            "nbest",
            f"must be between 1 and {name('beam')} ({dec.beam}), got {nbest}",
        )
    check(dec.alpha >= 0, "alpha", f"must be >= 0, got {dec.alpha}")
    check(dec.max_len_a >= 0, "max_len_a", f"must be >= 0, got {dec.max_len_a}")
    check(dec.max_len_b >= 0, "max_len_b", f"must be >= 0, got {dec.max_len_b}")
    if dec.max_len_a == 0 and dec.max_len_b == 0:
        problems.append(f"{name('max_len_a')} and {name('max_len_b')} cannot both be 0")
    check(dec.batch_sentences >= 1, "batch_sentences", f"must be >= 1, got {dec.batch_sentences}")
    return problems


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
    if problems:
        raise ConfigError("; ".join(problems))
    return merged


# ----------------------------------------------------------------------------- writing


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config (tuples become lists), for YAML and checkpoints."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def write_resolved(cfg: Config, run_dir: Path) -> Path:
    """Write the fully resolved config into the run dir (atomically)."""
    from transformer_cli.core.fileio import atomic_write_text

    path = Path(run_dir) / "config.yaml"
    atomic_write_text(path, to_yaml(cfg))
    return path
