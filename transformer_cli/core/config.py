"""The config schema: every option tfx has, as a typed field with one default.

Here and nowhere else. Reading a YAML file into these dataclasses, strictly, is
`config_file.py`; the range and cross-field rules are `config_rules.py`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

# auto: bf16 (or fp16) on CUDA; on the CPU bf16 where it has bf16 matrix units
# (avx512_bf16 or amx_bf16), else fp32; fp32 on MPS; resolved by `runtime.resolve_precision`
Precision = Literal["auto", "fp32", "bf16", "fp16"]
ResolvedPrecision = Literal["fp32", "bf16", "fp16"]  # what `auto` becomes on a device
# auto: CUDA, else Apple's MPS, else the CPU; resolved by `runtime.pick_device`
Device = Literal["auto", "cpu", "cuda", "mps"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
DEVICES: tuple[str, ...] = typing.get_args(Device)


def is_precision(name: str) -> TypeGuard[Precision]:
    return name in PRECISIONS


def is_device(name: str) -> TypeGuard[Device]:
    return name in DEVICES


@dataclass(frozen=True)
class CorpusConfig:
    """One of several training corpora: `data.train: [{name: web}, {name: bt, weight: 0.5,
    tag: <bt>}]`. An empty key takes its value from `data`. How weights and tags work, and
    how to mix corpora: docs/corpora.md."""

    name: str = "train"  # the file name's stem in dir, or the hub dataset's split
    # where and how this corpus is read, as the data key of the same name; empty = data's
    source: Literal["", "toy", "files", "hub"] = ""
    dir: str = ""
    format: Literal["", "text", "tsv", "jsonl"] = ""
    src_field: str = ""
    tgt_field: str = ""
    hub_name: str = ""
    hub_config: str = ""
    # expected passes over this corpus per epoch: 0.5 = a new random half each epoch,
    # 2 = every pair twice
    weight: float = 1.0
    # a reserved piece put before each source sentence (tagged back-translation, language
    # tags); empty = none
    tag: str = ""


@dataclass(frozen=True)
class DataConfig:
    """Where the parallel text comes from, and which pairs are kept for training."""

    # toy: the toy corpus's text files in dir; files: your own files in dir; hub: a
    # Hugging Face hub dataset
    source: Literal["toy", "files", "hub"] = "toy"
    # files: {dir}/{split}.{lang}[.gz] for format text, {dir}/{split}.{tsv|jsonl} otherwise
    dir: str = "data/toy"
    # text: one sentence a line, one file per language; tsv: a header row names the
    # fields; jsonl: one JSON object a line
    format: Literal["text", "tsv", "jsonl"] = "text"
    # language codes: the text files' suffixes and the default field names
    src_lang: str = "en"
    tgt_lang: str = "de"
    # field names for tsv/jsonl/hub rows; empty = the language code; dotted = nested
    src_field: str = ""
    tgt_field: str = ""
    hub_name: str = ""  # the dataset's name on the Hugging Face hub (source: hub)
    hub_config: str = ""  # the hub dataset's configuration, e.g. de-en; empty = none
    # the training split's name (the file name's stem in dir, or the hub dataset's split),
    # or a list of corpora, each with its own weight and tag (data.train[i] below)
    train: str | tuple[CorpusConfig, ...] = "train"
    # the validation and test splits' names, as for train
    valid: str = "valid"
    test: str = "test"
    # training pairs longer than this (in pieces, either side) are dropped
    max_len: int = 100
    # training pairs whose piece-length ratio exceeds this are dropped (0 = keep all)
    max_ratio: float = 3.0
    # training pairs seen before in the same corpus (the same source and target) are
    # dropped: a repeat only weighs its pair more, which is what a corpus weight is for
    dedup: bool = True
    # training pairs whose source equals their target are dropped: untranslated copies
    # teach a model to copy its input (Khayrallah and Koehn 2018)
    drop_copies: bool = True


@dataclass(frozen=True)
class TokenizerConfig:
    """SentencePiece: one joint model or one per language."""

    joint: bool = True  # one model for both languages; false: one per language
    vocab_size: int = 8000  # pieces in each SentencePiece model
    model_type: Literal["unigram", "bpe", "char", "word"] = "unigram"  # SentencePiece's algorithm
    # the share of characters the pieces must cover; below 1, rare ones become <unk>
    character_coverage: float = 1.0
    # at most this many sentences train each SentencePiece model, drawn uniformly from the
    # training corpora as they stream (all of them, in order, when there are fewer)
    sample_size: int = 300_000


@dataclass(frozen=True)
class ModelConfig:
    """The Transformer's shape. The vocabulary sizes come from the tokenizer (0 = not set yet)."""

    d_model: int = 512  # the width of every layer's input and output
    heads: int = 8  # attention heads; must divide d_model
    enc_layers: int = 6  # encoder layers
    dec_layers: int = 6  # decoder layers
    d_ff: int = 2048  # the feed-forward layer's inner width (eq. 2)
    dropout: float = 0.1  # on the embeddings, the feed-forward layer and the residual branches
    attention_dropout: float = 0.0  # on the attention probabilities
    # post: LayerNorm(x + sublayer(x)), the paper's; pre: x + sublayer(LayerNorm(x)), with
    # a final LayerNorm per stack
    norm: Literal["post", "pre"] = "post"
    # sinusoidal: the paper's table added to the input; learned: a learned table added;
    # rope: queries and keys rotated by position in every self-attention (Su et al. 2021);
    # relative: learned vectors of the clipped offset inside self-attention (Shaw et al.
    # 2018, keys and values). The last two add nothing to the input (docs/positions.md)
    positional: Literal["sinusoidal", "learned", "rope", "relative"] = "sinusoidal"
    max_relative_distance: int = 16  # relative: offsets beyond +-k share one vector (Shaw's k)
    max_positions: int = 1024  # the longest sequence, in pieces, the positions cover
    # the token embeddings' initial weights: normal, N(0, d_model^-0.5), which is N(0, 1)
    # after the sqrt(d_model) scale, so the token outweighs its position from the start
    # (measured: docs/results.md, "Embedding initialisation"); or xavier (uniform, as
    # torch.nn.Transformer's matrices), the default of checkpoints from before the option
    embedding_init: Literal["xavier", "normal"] = "normal"
    share_embeddings: bool = True  # one embedding for source and target (a joint tokenizer)
    tie_output: bool = True  # the target embedding is also the output projection (3.4)
    # sdpa: torch's fused kernel; math: eq. 1 written out; auto: sdpa on CUDA, math on the
    # CPU, where it is the faster one at sentence lengths (docs/performance.md, "Attention paths")
    attention: Literal["auto", "sdpa", "math"] = "auto"
    # set from the prepared tokenizer when training starts; leave at 0
    src_vocab: int = 0
    tgt_vocab: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe: batches, optimiser, schedule, precision, checkpoints."""

    seed: int = 1234  # the weights' initialisation, dropout and the batch order
    device: Device = "auto"
    precision: Precision = "auto"
    compile: bool = False  # run the training step's encode, decode and logits through torch.compile
    threads: int = 0  # 0 = one per core
    batch_tokens: int = 4096  # real (non-pad) target tokens per batch
    # pad batch lengths to a multiple of this, never past model.max_positions;
    # 0 = auto: 8 on CUDA, else 1
    pad_multiple: int = 0
    # collate the next update's batches on a background thread (auto: on CUDA, pinned)
    prefetch: Literal["auto", "always", "never"] = "auto"
    accum_steps: int = 1  # batches per optimiser update (gradient accumulation)
    max_steps: int = 0  # 0 = no limit
    max_epochs: int = 0  # 0 = no limit
    max_minutes: float = 0.0  # wall-clock budget, 0 = none
    optimizer: Literal["adam", "adamw"] = "adam"  # adamw: weight decay decoupled from the gradient
    betas: tuple[float, float] = (0.9, 0.98)  # Adam's, as in the paper
    eps: float = 1e-9  # Adam's epsilon, as in the paper
    weight_decay: float = 0.0  # adam: added to the gradient; adamw: applied to the weights
    # noam: the paper's eq. 3; inverse_sqrt: linear warm-up to lr, then 1/sqrt(step) decay
    schedule: Literal["noam", "inverse_sqrt", "constant"] = "noam"
    noam_factor: float = 2.0  # noam: lr = factor * d_model^-0.5 * min(step^-0.5, step*warmup^-1.5)
    lr: float = 5e-4  # inverse_sqrt: the peak; constant: the value
    warmup: int = 4000  # updates of rising learning rate (noam, inverse_sqrt)
    clip_norm: float = 0.0  # 0 = no clipping
    label_smoothing: float = 0.1  # of the target distribution (section 5.4); 0 = none
    fused_loss: bool = True  # project + score in chunks, never all (tokens x vocab) logits
    log_every: int = 50  # updates between training records in metrics.jsonl
    # also write the records as TensorBoard event files under RUN_DIR/tensorboard/
    # (pip install 'tfx[tensorboard]'); metrics.jsonl is written either way
    tensorboard: bool = False
    eval_every: int = 1000  # updates between validations (loss, BLEU, chrF) and checkpoints
    keep_last: int = 3  # step checkpoints kept; last.pt and best.pt are kept besides
    patience: int = 0  # validations without a better BLEU before stopping; 0 = never stop early
    max_bad_steps: int = 10  # non-finite updates (loss or gradients) in a row before it stops
    # distributed: how long a rank waits in a collective (validation on rank 0 included)
    # before the job fails instead of hanging
    dist_timeout_minutes: float = 30.0


@dataclass(frozen=True)
class DecodeConfig:
    """Defaults for greedy/beam search and sampling in translate and evaluate (validation
    always searches: greedy, whatever these say)."""

    beam: int = 1  # 1 = greedy search
    alpha: float = 1.0  # GNMT length penalty exponent (beam search only)
    early_stop: bool = False  # beam: also stop a sentence when its best candidate ends
    max_len_a: float = 1.5  # max output pieces = a * source pieces + b
    max_len_b: int = 10  # see max_len_a
    batch_sentences: int = 64  # sentences decoded together
    # auto is bf16 on a CPU with bf16 matrix units, where it decodes faster and its outputs
    # differ from fp32's in a few sentences; fp32 for outputs that do not depend on the CPU
    precision: Precision = "auto"
    # greedy search: decoding steps between two checks for finished sentences, each a read
    # of the device (on a GPU, a wait for it); 0 = auto: 1 on the CPU, 8 on CUDA or MPS.
    # Outputs are the same for every value; a sentence may decode sync_every - 1 extra steps
    sync_every: int = 0
    # draw each piece from the model's distribution instead of searching; beam is not
    # used (docs/decoding.md, "Sampling")
    sample: bool = False
    topk: int = 0  # sampling: only from the k most probable pieces; 0 = all of them
    # sampling: then only from the fewest most probable pieces whose probability reaches
    # topp; 1 = all of them
    topp: float = 1.0
    temperature: float = 1.0  # sampling: logits / temperature; towards 0, greedy search
    # sampling: each sentence draws from its own generator, seeded by (seed, its line), so
    # its samples do not depend on the batch
    seed: int = 0


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
    sync_every: int | None = None
    sample: bool | None = None
    topk: int | None = None
    topp: float | None = None
    temperature: float | None = None
    seed: int | None = None
    nbest: int = 1  # hypotheses (or samples) per source (translate); not a decode setting


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
    "sync_every": "--sync-every",
    "sample": "--sample",
    "topk": "--topk",
    "topp": "--topp",
    "temperature": "--temperature",
    "seed": "--seed",
    "nbest": "--nbest",
}


@dataclass(frozen=True)
class Config:
    """A whole tfx run. Everything the run writes goes under `run_dir`."""

    run_dir: str  # cache/, checkpoints/, config.yaml, metrics.jsonl, tensorboard/, eval/ go here
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config (tuples become lists), for YAML and checkpoints."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return plain(cfg)
