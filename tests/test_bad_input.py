"""Bad input through the CLI: one `error:` line, exit code 2, no traceback, nothing written.

CASES is the one table of everything a user can get wrong; adding a case is one line.
Each case builds what it needs in a fresh directory (`World`) and returns the argv;
after the run, no file may have appeared or changed there or in the shared run dir.
LINE_CASES are the inputs `tfx translate` accepts with a warning instead.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import BASE, Trap, assert_one_line_error, tiny_raw, toy_splits, write_splits
from typer.testing import CliRunner

from transformer_cli.cli.app import app
from transformer_cli.core import checkpoint
from transformer_cli.core.config_file import config_from_dict
from transformer_cli.data import prepare
from transformer_cli.data.toy import generate
from transformer_cli.training import loop as train


@dataclass
class Shared:
    """A prepared and trained (2 steps) run, made once for the module; never modified."""

    data: Path
    run_dir: Path

    @property
    def ckpt(self) -> Path:
        return checkpoint.last_path(self.run_dir)


@dataclass
class World:
    """A fresh directory for one case, with a toy corpus in `data/`."""

    root: Path
    shared: Shared

    def config(self, **sections: dict) -> str:
        """A valid tiny config file for `root/run` and `root/data`, with `sections` merged in."""
        return self.text("c.yaml", self.config_text(**sections))

    def config_text(self, **sections: dict) -> str:
        return yaml.safe_dump(tiny_raw(self.root, **sections), sort_keys=False)

    def text(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path)

    def ckpt_file(self, name: str, state: object | None = None, damage=None) -> str:
        """A copy of the shared checkpoint, or a framed checkpoint of `state`, maybe damaged."""
        path = self.root / name
        if state is None:
            shutil.copyfile(self.shared.ckpt, path)
        else:
            checkpoint.save_checkpoint(path, state)
        if damage is not None:
            path.write_bytes(damage(path.read_bytes()))
        return str(path)

    def prepared(self) -> str:
        """The config of a run dir that holds the shared prepared cache (no checkpoints)."""
        shutil.copytree(self.shared.run_dir / "cache", self.root / "run" / "cache")
        return self.config()


def evil(w: World) -> str:
    return w.ckpt_file("evil.pt", {"tfx_version": "0.1.0", "model": Trap(w.root / "pwned")})


def flip(data: bytes) -> bytes:
    return data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1 :]


def cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def drop_last_line(path: Path) -> None:
    path.write_text("".join(f"{line}\n" for line in lines_of(path)[:-1]), encoding="utf-8")


def with_data(change: Callable[[Path], object]) -> Callable[[World], list[str]]:
    """A prepare case: apply `change` to the data dir, then run prepare on it."""

    def setup(w: World) -> list[str]:
        change(w.root / "data")
        return ["prepare", "--config", w.config()]

    return setup


def train_resume_with_an_evil_last(w: World) -> list[str]:
    config = w.prepared()
    (w.root / "run" / "checkpoints").mkdir()
    shutil.move(evil(w), w.root / "run" / "checkpoints" / "last.pt")
    return ["train", "--config", config, "--resume"]


def init_from(w: World, *extra: str, **sections: dict) -> list[str]:
    """train --init-from the shared checkpoint, on the shared cache, with `sections`."""
    w.prepared()
    return ["train", "-c", w.config(**sections), "--init-from", str(w.shared.ckpt), *extra]


def init_from_onto_another_tokenizer(w: World) -> list[str]:
    """A cache whose SentencePiece model, trained on other pairs, has the checkpoint's size."""
    write_splits(w.root / "data", toy_splits(generate(300, seed=9)))
    prepare.run(config_from_dict(tiny_raw(w.root)))
    return ["train", "-c", w.config(), "--init-from", str(w.shared.ckpt)]


def evaluate_src_ref(w: World, src: str, ref: str) -> list[str]:
    return ["evaluate", str(w.shared.ckpt), "--src", w.text("s.txt", src), "--ref",
            w.text("r.txt", ref), "--output-dir", str(w.root / "eval")]  # fmt: skip


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[World], list[str]]
    fragment: str


CASES = [
    # ------------------------------------------------------------------ config
    Case("config file missing", lambda w: ["train", "-c", str(w.root / "none.yaml")],
         "config file not found"),
    Case("config is a directory", lambda w: ["train", "-c", str(w.root)],
         "config path is a directory"),
    Case("config is not YAML", lambda w: ["prepare", "-c", w.text("c.yaml", "run_dir: [x\n")],
         "not valid YAML"),
    Case("config is not a mapping", lambda w: ["prepare", "-c", w.text("c.yaml", "- a\n")],
         "expected a mapping of sections"),
    Case("config is not UTF-8", lambda w: ["prepare", "-c", w.text("c.yaml", b"run_dir: \xff\n")],
         "not UTF-8"),
    Case("config has a Python tag", lambda w: ["prepare", "-c", w.text(
         "c.yaml", f"run_dir: !!python/object/apply:os.system ['touch {w.root}/pwned']\n")],
         "YAML tag not allowed"),
    Case("config without run_dir", lambda w: ["prepare", "-c", w.text("c.yaml", "model: {}\n")],
         "run_dir: required key missing"),
    Case("unknown key", lambda w: ["train", "-c", w.config(train={"lrr": 0.1})],
         "train.lrr: unknown key (did you mean train.lr?)"),
    Case("key in the wrong section", lambda w: ["train", "-c", w.config(model={"warmup": 9})],
         "model.warmup: unknown key (did you mean train.warmup?)"),
    Case("wrong type", lambda w: ["train", "-c", w.config(model={"d_model": "big"})],
         "model.d_model: expected an integer, got 'big'"),
    Case("negative dropout", lambda w: ["train", "-c", w.config(model={"dropout": -0.1})],
         "model.dropout: must be in [0, 1), got -0.1"),
    Case("heads do not divide d_model", lambda w: ["train", "-c", w.config(model={"heads": 3})],
         "model.heads: must divide model.d_model (32 % 3 != 0)"),
    Case("warmup 0", lambda w: ["train", "-c", w.config(train={"warmup": 0})],
         "train.warmup: must be >= 1, got 0"),
    Case("section given twice", lambda w: ["train", "-c", w.text("c.yaml", w.config_text()
         + "model:\n  heads: 4\n")], "model: key given twice (first at line "),
    Case("--set without =", lambda w: ["train", "-c", w.config(), "--set", "train.lr"],
         "--set train.lr: expected KEY=VALUE"),
    Case("--set unknown key", lambda w: ["train", "-c", w.config(), "--set", "train.lrr=1"],
         "--set train.lrr: unknown key (did you mean train.lr?)"),
    Case("--set wrong type", lambda w: ["train", "-c", w.config(), "--set", "train.seed=x"],
         "--set train.seed: expected an integer, got 'x'"),
    Case("fp16 on a CPU", lambda w: ["train", "-c", w.prepared(), "--set",
         "train.precision=fp16"], "fp16 needs CUDA"),
    # ------------------------------------------------------------------ data
    Case("line counts differ", with_data(lambda d: drop_last_line(d / "train.de")),
         "train.de has 239; the two sides of a split must be line-aligned"),
    Case("invalid UTF-8 in training data", with_data(lambda d: (d / "train.en").write_bytes(
         (d / "train.en").read_bytes().replace(b"\n", b"\xff\n", 1))),
         "train.en:1: invalid UTF-8 (byte 0xff"),
    Case("a data file is missing", with_data(lambda d: (d / "valid.de").unlink()),
         "valid.de: file not found"),
    Case("the data dir is missing", with_data(shutil.rmtree), "data directory not found"),
    Case("only empty pairs", with_data(lambda d: (d / "train.en").write_text("\n" * 240)),
         "no sentence pairs (all 240 pairs have an empty side)"),
    Case("empty corpus after filtering", lambda w: ["prepare", "-c",
         w.config(data={"max_len": 1, "source": "files"})],
         "no training pairs left after filtering"),
    # ------------------------------------------------------------------ train
    Case("train before prepare", lambda w: ["train", "-c", w.config()], "run `tfx prepare"),
    Case("resume without a checkpoint", lambda w: ["train", "-c", w.prepared(), "--resume"],
         "no checkpoint to resume from"),
    Case("resume from an evil last.pt", train_resume_with_an_evil_last,
         "no checkpoint to resume from"),
    # ------------------------------------------------------------------ fine-tuning
    Case("--init-from with --resume", lambda w: init_from(w, "--resume"),
         "--init-from and --resume do not go together"),
    Case("--init-from a missing checkpoint", lambda w: ["train", "-c", w.prepared(),
         "--init-from", str(w.root / "no.pt")], "no.pt: no such checkpoint"),
    Case("--init-from runs code", lambda w: ["train", "-c", w.prepared(), "--init-from",
         evil(w)], "refused to load"),
    Case("--init-from another model shape", lambda w: init_from(w, model={"d_model": 64,
         "d_ff": 128}), "model.d_model: 64 in the config, 32 in the checkpoint; model.d_ff"),
    Case("--init-from another tokenizer section", lambda w: init_from(w, tokenizer={
         "model_type": "bpe"}), "tokenizer.model_type: bpe in the config, unigram in the"),
    Case("--init-from onto another tokenizer's cache", init_from_onto_another_tokenizer,
         "was prepared with another tokenizer"),
    Case("--tokenizer-from a missing checkpoint", lambda w: ["prepare", "-c", w.config(),
         "--tokenizer-from", str(w.root / "no.pt")], "no.pt: no such checkpoint"),
    Case("--tokenizer-from runs code", lambda w: ["prepare", "-c", w.config(),
         "--tokenizer-from", evil(w)], "refused to load"),
    Case("--tokenizer-from another tokenizer section", lambda w: ["prepare", "-c", w.config(
         tokenizer={"vocab_size": 90}), "--tokenizer-from", str(w.shared.ckpt)],
         "tokenizer.vocab_size: 90 in the config, 100 in the checkpoint"),
    # ------------------------------------------------------------------ checkpoints
    Case("checkpoint is a directory", lambda w: ["translate", str(w.root), "x"],
         "is a directory, not a checkpoint file"),
    Case("checkpoint is missing", lambda w: ["translate", str(w.root / "no.pt"), "x"],
         "no such checkpoint"),
    Case("checkpoint is text", lambda w: ["translate", w.text("c.pt", "hello\n"), "x"],
         "not a tfx checkpoint"),
    Case("checkpoint is a plain torch.save", lambda w: ["translate", w.text("c.pt", b"PK\3\4"),
         "x"], "not a tfx checkpoint (a plain torch.save file?)"),
    Case("checkpoint cut short", lambda w: ["translate", w.ckpt_file("c.pt", damage=cut), "x"],
         "is corrupt (checksum mismatch)"),
    Case("checkpoint with a flipped byte", lambda w: ["translate", w.ckpt_file("c.pt",
         damage=flip), "x"], "is corrupt (checksum mismatch)"),
    Case("checkpoint runs code (translate)", lambda w: ["translate", evil(w), "x"],
         "refused to load"),
    Case("checkpoint runs code (evaluate)", lambda w: ["evaluate", evil(w)], "refused to load"),
    Case("checkpoint runs code (average)", lambda w: ["average", evil(w), "-o",
         str(w.root / "avg.pt")], "refused to load"),
    Case("checkpoint of plain data", lambda w: ["translate", w.ckpt_file("c.pt", {"a": 1}), "x"],
         "not a complete tfx checkpoint (missing tfx_version, config, tokenizer, model)"),
    # ------------------------------------------------------------------ translate
    Case("--input missing", lambda w: ["translate", str(w.shared.ckpt), "-i",
         str(w.root / "no.txt")], "no such input file"),
    Case("--input is a directory", lambda w: ["translate", str(w.shared.ckpt), "-i",
         str(w.root)], "is a directory, not a text file"),
    Case("--output is a directory", lambda w: ["translate", str(w.shared.ckpt), "x", "-o",
         str(w.root)], "--output needs a file name"),
    Case("--beam 0", lambda w: ["translate", str(w.shared.ckpt), "x", "--beam", "0"],
         "--beam must be >= 1"),
    Case("--nbest above --beam", lambda w: ["translate", str(w.shared.ckpt), "x", "--nbest",
         "2"], "--nbest must be between 1 and --beam (1)"),
    Case("--device unknown, with --plot-attention", lambda w: ["translate", str(w.shared.ckpt),
         "x", "--plot-attention", str(w.root / "a.png"), "--device", "tpu"],
         "--device must be one of"),
    Case("--device unknown (inspect attention)", lambda w: ["inspect", "attention",
         str(w.shared.ckpt), "x", "--plot", str(w.root / "a.png"), "--device", "tpu"],
         "--device must be one of"),
    Case("text and --input", lambda w: ["translate", str(w.shared.ckpt), "x", "-i",
         w.text("in.txt", "a\n")], "not both"),
    Case("--output under a file", lambda w: ["translate", str(w.shared.ckpt), "x", "-o",
         w.text("f", "") + "/out.txt"], "/f: exists and is not a directory"),
    # ------------------------------------------------------------------ outputs
    Case("run dir under a file (prepare)", lambda w: ["prepare", "-c", w.config(), "--set",
         f"run_dir={w.text('f', '')}/run"], "/f/run/cache/meta.json: not a directory"),
    Case("run dir under a file (train)", lambda w: ["train", "-c", w.config(), "--set",
         f"run_dir={w.text('f', '')}/run"], "/f/run: not a directory"),
    Case("--output-dir under a file", lambda w: ["evaluate", str(w.shared.ckpt),
         "--output-dir", w.text("f", "") + "/eval"], "/f/eval: not a directory"),
    Case("average --output under a file", lambda w: ["average", str(w.shared.ckpt), "-o",
         w.text("f", "") + "/avg.pt"], "/f: exists and is not a directory while writing"),
    # ------------------------------------------------------------------ plot, inspect
    Case("plot a run dir without metrics", lambda w: ["plot", str(w.root)], "no metrics yet"),
    Case("plot metrics without training records", lambda w: ["plot", str(Path(w.text(
         "r/metrics.jsonl", '{"kind": "valid"}\n')).parent)], "no training records yet"),
    Case("inspect batch before prepare", lambda w: ["inspect", "batch", "-c", w.config()],
         "run `tfx prepare"),
    Case("inspect attention: checkpoint runs code", lambda w: ["inspect", "attention", evil(w),
         "x", "--plot", str(w.root / "a.png")], "refused to load"),
    Case("inspect attention: checkpoint is a directory", lambda w: ["inspect", "attention",
         str(w.root), "x", "--plot", str(w.root / "a.png")], "is a directory"),
    # ------------------------------------------------------------------ evaluate
    Case("glob matching nothing", lambda w: ["evaluate", str(w.root / "nothing_*.pt")],
         "no checkpoint matches this pattern"),
    Case("directory without checkpoints", lambda w: ["evaluate", str(w.root)],
         "no *.pt checkpoints in this directory"),
    Case("--split train", lambda w: ["evaluate", str(w.shared.ckpt), "--split", "train"],
         "--split train: evaluate scores 'valid' or 'test'"),
    Case("--src without --ref", lambda w: ["evaluate", str(w.shared.ckpt), "--src",
         w.text("s.txt", "a\n")], "--src and --ref go together"),
    Case("--src and --ref differ in length", lambda w: evaluate_src_ref(w, "a\nb\n", "a\n"),
         "they must be line-aligned"),
    Case("--average below 0", lambda w: ["evaluate", str(w.shared.ckpt), "--average", "-1"],
         "--average must be >= 0 (0 = none), got -1"),
    Case("--steps below 0", lambda w: ["inspect", "schedule", "-c", w.config(), "--steps", "-1"],
         "--steps must be >= 0 (0 = train.max_steps), got -1"),
]  # fmt: skip


@pytest.fixture(scope="module")
def shared(tmp_path_factory, toy_pairs) -> Shared:
    root = tmp_path_factory.mktemp("bad_input")
    write_splits(root / "data", toy_splits(toy_pairs))
    cfg = config_from_dict(tiny_raw(root))
    prepare.run(cfg)
    train.run(cfg)
    return Shared(root / "data", root / "run")


@pytest.fixture
def world(tmp_path, shared, toy_pairs) -> World:
    write_splits(tmp_path / "data", toy_splits(toy_pairs))
    return World(tmp_path, shared)


def files_under(*roots: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for root in roots
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: Case, world: World):
    argv = case.argv(world)
    before = files_under(world.root, world.shared.run_dir)
    result = CliRunner().invoke(app, argv)
    assert_one_line_error(result, case.fragment)
    assert result.stdout == ""
    assert files_under(world.root, world.shared.run_dir) == before
    assert not (world.root / "pwned").exists()  # no crafted pickle or YAML tag ran


# ----------------------------------------------------------------------------- translate


@dataclass(frozen=True)
class LineCase:
    name: str
    stdin: bytes
    warning: str  # "" = none expected


LONG = " ".join(["the dog sees the cat ."] * 400)  # thousands of pieces: over max_positions

LINE_CASES = [
    LineCase("empty lines", b"\n\na dog .\n\n", ""),
    LineCase("whitespace-only lines", b"  \n\t\na dog .\n \t \n", ""),
    LineCase("a very long line", f"a dog .\n{LONG}\nthe cat .\n".encode(),
             "more than the model's maximum of 1024; translating the first 1024"),
    LineCase("invalid UTF-8", b"a dog .\n\xff\xfe the cat\nthe cat .\n",
             "line 2: invalid UTF-8 at byte 1; replaced with U+FFFD"),
    LineCase("no final newline", b"a dog .\nthe cat .", ""),
    LineCase("a NUL byte", b"a \x00 dog .\n", ""),
]  # fmt: skip


@pytest.mark.parametrize("case", LINE_CASES, ids=[c.name for c in LINE_CASES])
def test_translate_keeps_one_output_line_per_input_line(case: LineCase, shared: Shared):
    result = CliRunner().invoke(app, ["translate", str(shared.ckpt)], input=case.stdin)
    assert result.exit_code == 0, result.output
    expected = case.stdin.count(b"\n") + (not case.stdin.endswith(b"\n"))
    assert result.stdout.count("\n") == expected
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == bool(case.warning), warnings
    assert case.warning in "".join(warnings), warnings
    for line, out in zip(case.stdin.split(b"\n"), result.stdout.split("\n"), strict=False):
        if not line.strip():
            assert out == ""  # an empty or blank input line gives an empty output line


def test_steps_zero_is_allowed_and_means_the_default(world: World):
    """The bound `--steps must be >= 0` holds what it says: 0 runs, on train.max_steps."""
    argv = ["inspect", "schedule", "-c", world.config(), "--steps", "0", "--json"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["lr"]) == BASE["train"]["max_steps"]
