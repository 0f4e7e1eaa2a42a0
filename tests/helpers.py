"""What many test modules need, defined once: the CLI runner, the one-line error check,
tiny corpora, configs, models and padded batches."""

from __future__ import annotations

import builtins
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from transformer_cli.core.config import ModelConfig
from transformer_cli.core.errors import TfxError
from transformer_cli.core.specials import BOS_ID, EOS_ID, PAD_ID
from transformer_cli.model.transformer import Transformer


def cli(*args, input: bytes | str | None = None):
    """`tfx ARGS...` in this process; stdout and stderr apart."""
    from transformer_cli.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def assert_one_line_error(result, fragment: str, alone: bool = False) -> None:
    """Exit 2; stderr ends with the only `error:` line, which holds `fragment`; no traceback.

    Commands that have started work may have printed progress lines before it (prepare's
    "reading ..." and evaluate's "[1/1] CKPT"); `alone` says stderr has nothing else.
    """
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines, result.output
    assert lines[-1].startswith("error: "), lines
    assert [line for line in lines if "error" in line.split(":")[0]] == [lines[-1]], lines
    assert fragment in lines[-1], lines[-1]
    assert not alone or len(lines) == 1, lines
    assert "Traceback" not in result.output
    assert "internal error" not in result.output


def error_of(fn, *args, error: type[Exception] = TfxError, **kwargs) -> str:
    """The one-line message of the `error` that `fn(*args, **kwargs)` raises."""
    with pytest.raises(error) as raised:
        fn(*args, **kwargs)
    message = str(raised.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- corpora


def toy_splits(pairs: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """The test suite's usual cut of 300 toy pairs: 240 / 30 / 30."""
    return {"train": pairs[:240], "valid": pairs[240:270], "test": pairs[270:]}


def write_splits(directory: Path, splits: dict[str, list[tuple[str, str]]]) -> None:
    """{split}.en and {split}.de text files in `directory`, one pair per line."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, pairs in splits.items():
        (directory / f"{name}.en").write_text("".join(f"{en}\n" for en, _ in pairs), "utf-8")
        (directory / f"{name}.de").write_text("".join(f"{de}\n" for _, de in pairs), "utf-8")


# ----------------------------------------------------------------------------- configs and runs

# a model and run small enough to train two steps in a blink
BASE = {
    "tokenizer": {"vocab_size": 100},
    "model": {"d_model": 32, "heads": 2, "enc_layers": 1, "dec_layers": 1, "d_ff": 64},
    "train": {
        "batch_tokens": 600,
        "warmup": 5,
        "threads": 1,
        "device": "cpu",
        "max_steps": 2,
        "eval_every": 2,
    },
    "decode": {"max_len_a": 0, "max_len_b": 5},
}


def tiny_raw(root: Path, **sections: dict) -> dict:
    """A valid tiny config dict for run dir `root/run` and corpus `root/data`."""
    raw = json.loads(json.dumps(BASE))
    raw.update(run_dir=str(root / "run"), data={"source": "files", "dir": str(root / "data")})
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return raw


def make_tiny_run(
    root: Path, pairs: list[tuple[str, str]], steps: tuple[int, ...] = (10,), **data: object
):
    """A prepared run dir with a tiny random model saved at `steps`: returns the config.
    `data`: keys of its data section (train: a list of corpora, say).

    Untrained weights are enough here: what is tested is the plumbing around the model
    (lines in = lines out, files, errors), not the quality of its translations.
    """
    from transformer_cli import __version__
    from transformer_cli.core.checkpoint import save_checkpoint
    from transformer_cli.core.config import to_dict
    from transformer_cli.core.config_file import config_from_dict
    from transformer_cli.data import prepare
    from transformer_cli.data.tokenizer import Tokenizer
    from transformer_cli.model.transformer import Transformer

    write_splits(root / "data", toy_splits(pairs))
    raw = {
        "run_dir": str(root / "run"),
        "data": {"source": "files", "dir": str(root / "data"), "max_len": 20, **data},
        "tokenizer": {"vocab_size": 100},
        "model": {
            "d_model": 16,
            "heads": 2,
            "enc_layers": 1,
            "dec_layers": 1,
            "d_ff": 32,
            "max_positions": TINY_RUN_POSITIONS,
        },
        "decode": {"max_len_a": 1.0, "max_len_b": 4, "batch_sentences": 8},
    }
    prepare.run(config_from_dict(raw))
    tokenizer = Tokenizer.load(raw["run_dir"])
    raw["model"].update(src_vocab=tokenizer.src_vocab_size, tgt_vocab=tokenizer.tgt_vocab_size)
    cfg = config_from_dict(raw)
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    for step in steps:
        state = {
            "tfx_version": __version__,
            "config": to_dict(cfg),
            "tokenizer": tokenizer.to_bytes(),
            "model": model.state_dict(),
            "progress": {"step": step},
        }
        save_checkpoint(Path(cfg.run_dir) / "checkpoints" / f"ckpt_{step:08d}.pt", state)
    return cfg


TINY_RUN_POSITIONS = 24  # small, so that an overlong line is easy to write

# `--set` overrides of a tiny model that trains in a second (make_config's corpus), for
# the training tests; each adds its own batch, schedule and logging settings
TINY_TRAINING = (
    "model.d_model=32",
    "model.heads=2",
    "model.enc_layers=1",
    "model.dec_layers=1",
    "model.d_ff=64",
    "train.threads=1",
    "decode.max_len_b=5",
    "decode.max_len_a=0",
)


# ----------------------------------------------------------------------------- trained models

# the model layouts an export must carry over exactly
SHAPES = {
    "post-norm": {"norm": "post"},
    "pre-norm": {"norm": "pre"},
    "separate-learned": {
        "norm": "pre",
        "positional": "learned",
        "share_embeddings": False,
        "tie_output": False,
    },
    "rope": {"norm": "pre", "positional": "rope"},
    # a distance shorter than the toy sentences, so that clipping is exercised
    "relative": {"norm": "post", "positional": "relative", "max_relative_distance": 3},
}
_TRAINED: dict[str, Path] = {}


def trained_tiny(tmp_path_factory, pairs, shape: str) -> Path:
    """The last checkpoint of a tiny model trained 150 updates (once per shape)."""
    from transformer_cli.core.config_file import config_from_dict
    from transformer_cli.data import prepare
    from transformer_cli.training import loop as train

    if shape not in _TRAINED:
        root = tmp_path_factory.mktemp(shape)
        write_splits(root / "data", toy_splits(pairs))
        model = {**SHAPES[shape], "dropout": 0.0, "max_positions": 128}
        raw = tiny_raw(root, model=model, train={"max_steps": 150, "eval_every": 150, "warmup": 30})
        raw["decode"] = {"max_len_a": 1.5, "max_len_b": 5}
        cfg = config_from_dict(raw)
        prepare.run(cfg)
        train.run(cfg)
        _TRAINED[shape] = root / "run" / "checkpoints" / "last.pt"
    return _TRAINED[shape]


# ----------------------------------------------------------------------------- models and batches


def tiny_model_config(**overrides) -> ModelConfig:
    """A small model shape (no dropout, so outputs are deterministic), with overrides."""
    shape = dict(
        d_model=16,
        heads=4,
        enc_layers=2,
        dec_layers=2,
        d_ff=32,
        dropout=0.0,
        max_positions=40,
        src_vocab=29,
        tgt_vocab=29,
    )
    return ModelConfig(**{**shape, **overrides})


def padded(lengths: list[int], vocab: int, width: int | None = None, seed: int = 0):
    """Random real token ids (>= 4) of the given lengths, right-padded with PAD_ID: (B, L)."""
    gen = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    ids = torch.randint(4, vocab, (len(lengths), width), generator=gen)
    for row, n in enumerate(lengths):
        ids[row, n:] = PAD_ID
    return ids


# the searches' models: a tiny vocabulary, sources of real pieces
FIRST_REAL = EOS_ID + 1
VOCAB = 14  # small: the tiny models train in a fraction of a second


def tiny_model(seed: int = 0, train_steps: int = 40, **overrides) -> Transformer:
    """A tiny model, half-trained to reverse its source.

    A random model mostly repeats one token and rarely says EOS; a few Adam steps on a toy
    task give peaked distributions and sentences that end at varied lengths, so the
    searches' stopping and batch-shrinking paths are all exercised.
    """
    torch.manual_seed(seed)
    shape = dict(
        d_model=32,
        heads=4,
        enc_layers=2,
        dec_layers=2,
        d_ff=64,
        dropout=0.0,
        max_positions=40,
        src_vocab=VOCAB,
        tgt_vocab=VOCAB,
    )
    cfg = ModelConfig(**{**shape, **overrides})
    model = Transformer(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(train_steps):
        sources = random_sources(32, seed=1000 + step)
        targets = [s[::-1] for s in sources]
        tgt_in = pad([[BOS_ID] + t for t in targets])
        tgt_out = pad([t + [EOS_ID] for t in targets])
        logits = model(pad(sources), tgt_in)  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD_ID
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def random_sources(n: int, seed: int = 1, max_len: int = 9) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=g).tolist()
    return [torch.randint(FIRST_REAL, VOCAB, (k,), generator=g).tolist() for k in lengths]


def pad(sources: list[list[int]]) -> torch.Tensor:
    width = max(len(s) for s in sources)
    return torch.tensor([s + [PAD_ID] * (width - len(s)) for s in sources])


class Trap:
    """Unpickling this runs open(marker, "w"): code a safe loader must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_side: int = 200, max_side: int = 4000) -> None:
    """A real PNG that matplotlib can read back, neither a thumbnail nor a poster."""
    import matplotlib.image

    path = Path(path)
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert min_side <= height <= max_side, (height, width)
    assert min_side <= width <= max_side, (height, width)
    assert pixels.std() > 0.01  # something was drawn
    assert not list(path.parent.glob(f".{path.name}.*.tmp"))  # written atomically


def assert_only_error(result, fragment: str) -> None:
    """`assert_one_line_error` with nothing else on stderr."""
    assert_one_line_error(result, fragment, alone=True)


def nan_on(updates: set[int], monkeypatch) -> dict:
    """Make the training loss non-finite on the given 1-based update numbers (one
    micro-batch each); returns the counter of `batch_loss` calls."""
    from transformer_cli.training import step
    from transformer_cli.training.loss import LossParts

    real = step.batch_loss
    counter = {"n": 0}

    def maybe_nan(*args, **kwargs):
        counter["n"] += 1
        parts = real(*args, **kwargs)
        if counter["n"] in updates:
            return LossParts(parts.loss * float("nan"), parts.nll * float("nan"), parts.n_tokens)
        return parts

    monkeypatch.setattr(step, "batch_loss", maybe_nan)
    return counter


def a_users_directory(root: Path) -> Path:
    """A directory of the user's own, as reported against `tfx export`: `myproject/`
    holding thesis.tex and src/notes.txt."""
    project = root / "myproject"
    (project / "src").mkdir(parents=True)
    (project / "thesis.tex").write_text("\\chapter{Results}\n")
    (project / "src" / "notes.txt").write_text("remember the baseline\n")
    return project


# ----------------------------------------------------------------------------- known distributions


class IdentityStack:
    layers: list = []

    def __call__(self, x, *_):
        return x


class BigramModel:
    """A decoder whose next-token distribution depends only on the previous token.

    `table[prev]` holds the next-token probabilities: a search over it can be checked
    by hand. The hidden state is the previous token, one-hot.
    """

    def __init__(self, table: dict[int, dict[int, float]], max_positions: int = 10) -> None:
        self.cfg = ModelConfig(
            d_model=VOCAB, heads=1, max_positions=max_positions, src_vocab=VOCAB, tgt_vocab=VOCAB
        )
        logp = torch.full((VOCAB, VOCAB), -30.0)
        for prev, row in table.items():
            for tok, p in row.items():
                logp[prev, tok] = math.log(p)
        self.logp = logp

    def encode(self, src):
        return torch.zeros(src.size(0), src.size(1), VOCAB)

    # the cached decoder: an identity stack, with no layers to cache, over one-hot inputs
    decoder = IdentityStack()

    def embed_target(self, tgt_in, offset=0):  # noqa: ARG002 (the model's signature)
        return torch.nn.functional.one_hot(tgt_in, VOCAB).float()  # (R, T, V)

    def decode_hidden(self, tgt_in, memory, src):  # noqa: ARG002 (the model's signature)
        return self.embed_target(tgt_in)

    def logits(self, hidden):
        return hidden @ self.logp  # (R, V)
