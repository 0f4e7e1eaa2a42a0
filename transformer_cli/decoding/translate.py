"""`tfx translate CHECKPOINT`: the checkpoint alone -> translations.

Input, one sentence per line: the TEXT arguments, else `--input FILE`, else stdin. Piped
stdin and files are read as bytes and translated in chunks of `CHUNK_LINES` lines, each
written out as soon as it is done, so a large file never sits in memory. A terminal on
stdin gives an interactive `> ` prompt instead.

The output has exactly one line per input line (with `--nbest K`, exactly K lines per
input line: `hypothesis<TAB>score`, best first, the score being the length-normalised
log-probability of search.py). So that this always holds:

- an empty or whitespace-only line gives an empty line (nbest: K lines `<TAB>0.0000`);
- a line longer than the encoder can hold (`model.max_positions` pieces; sources have no
  BOS/EOS) is cut to that length, with a warning naming it. Lines longer than the
  training data's `data.max_len` are translated whole, though the model never saw such
  lengths: cutting them would lose words for certain, while the model may cope;
- bytes that are not UTF-8 are replaced by U+FFFD, with a warning naming the line;
- a hypothesis never contains a line break or a tab (they would read as extra lines or
  fields; SentencePiece does not produce them, but the output format must not depend on it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, TextIO, cast

from transformer_cli.core.config import (
    DEVICES,
    NO_OVERRIDES,
    DecodeConfig,
    DecodeOverrides,
    ResolvedPrecision,
    is_device,
)
from transformer_cli.core.config_rules import apply_decode_overrides
from transformer_cli.core.errors import ConfigError, DataError, TfxError

if TYPE_CHECKING:
    import torch

    from transformer_cli.decoding.search import Hypothesis

CHUNK_LINES = 1000
# Packing the weights for oneDNN costs more than it saves on a handful of lines, so a
# model is packed at its first chunk of at least this many (docs/performance.md,
# "Weights packed once"); the outputs are the same either way, up to float rounding order.
PACK_MIN_LINES = 128


# ----------------------------------------------------------------------------- input


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def decode_line(raw: bytes, number: int, name: str = "") -> str:
    """One input line as text: line ending removed, invalid UTF-8 replaced (and reported)."""
    raw = raw.removesuffix(b"\n").removesuffix(b"\r")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"{name}:{number}" if name else f"line {number}"
        warn(f"{where}: invalid UTF-8 at byte {e.start + 1}; replaced with U+FFFD")
        text = raw.decode("utf-8", errors="replace")
    return text.removeprefix("\ufeff") if number == 1 else text


def read_lines(stream: BinaryIO, name: str = "") -> Iterator[str]:
    """The text lines of a binary stream, split on b"\\n" only.

    Splitting bytes on newline keeps the line count exact: str.splitlines() would also
    split on U+2028, U+0085 and friends, and the output would have extra lines.
    """
    for number, raw in enumerate(stream, start=1):
        yield decode_line(raw, number, name)


def read_input_lines(path: str | Path) -> list[str]:
    """All lines of a text file, as `read_lines` gives them; DataError if it cannot be read."""
    with _open_input(path) as f:
        return list(read_lines(f, str(path)))


def chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(lines)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


# ----------------------------------------------------------------------------- translating


class Translator:
    """A loaded model with its decoding options: lines of text in, lines of text out."""

    def __init__(
        self,
        checkpoint_path: str | Path,
        device: str = "auto",
        decode: DecodeOverrides = NO_OVERRIDES,
    ) -> None:
        """`decode`: the options that replace the checkpoint's decode section (ConfigError
        naming the flag if one is out of range)."""
        from transformer_cli.decoding import ctranslate2 as ct2
        from transformer_cli.decoding.loading import load_model

        self.device = pick_device(device)
        self.exported: ct2.Exported | None = None  # a CTranslate2 export decodes instead
        if ct2.is_export_dir(checkpoint_path):
            self.exported = ct2.load_export(checkpoint_path, self.device.type)
            self.tokenizer, cfg = self.exported.tokenizer, self.exported.cfg
        else:
            self.model, self.tokenizer, cfg = load_model(checkpoint_path, self.device)
        self.decode_cfg = apply_decode_overrides(cfg.decode, decode)
        self.precision = decode_precision(self.decode_cfg, self.device)
        self.packed = False
        self.nbest = decode.nbest
        self.max_pieces = cfg.model.max_positions  # one position per source piece
        self.lines_done = 0  # for warnings' line numbers across chunks

    def translate(self, lines: list[str]) -> list[str]:
        """Output lines for `lines`: one each, or `nbest` each with scores."""
        first = self.lines_done + 1
        self.lines_done += len(lines)
        keep = [i for i, line in enumerate(lines) if line.strip()]
        sources: list[list[int]] = [[] for _ in lines]
        for i, ids in zip(keep, self.tokenizer.encode_src([lines[i] for i in keep]), strict=True):
            sources[i] = ids
        for i, ids in enumerate(sources):
            if len(ids) > self.max_pieces:
                warn(
                    f"line {first + i}: {len(ids)} pieces, more than the model's maximum "
                    f"of {self.max_pieces}; translating the first {self.max_pieces}"
                )
        results = self._decode(sources, len(lines))
        if self.nbest == 1:
            return [
                _one_line(h) for h in self.tokenizer.decode_tgt(cast("list[list[int]]", results))
            ]
        out: list[str] = []
        for hyps in cast("list[list[Hypothesis]]", results):  # nbest > 1: scored hypotheses
            texts = self.tokenizer.decode_tgt([ids for ids, _ in hyps])
            out.extend(
                f"{_one_line(t)}\t{score:.4f}" for t, (_, score) in zip(texts, hyps, strict=True)
            )
        return out

    def _decode(self, sources: list[list[int]], n_lines: int) -> list:
        """Piece ids (nbest 1) or scored n-best lists, by tfx's search or CTranslate2's."""
        from transformer_cli.decoding.ctranslate2 import decode_exported
        from transformer_cli.decoding.loading import ready_to_decode
        from transformer_cli.decoding.stream import decode_all

        if self.exported is not None:
            return decode_exported(self.exported, sources, self.decode_cfg, self.nbest)
        if not self.packed and n_lines >= PACK_MIN_LINES:
            ready_to_decode(self.model, self.device, self.precision)
            self.packed = True
        return decode_all(
            self.model, sources, self.decode_cfg, self.device, self.precision, nbest=self.nbest
        )


def _one_line(text: str) -> str:
    """Whitespace runs (line and paragraph separators, tabs) become single spaces."""
    return " ".join(text.split())


def pick_device(name: str) -> torch.device:
    """The torch device for --device; a one-line error naming the option if it cannot be used."""
    from transformer_cli.core import runtime

    if not is_device(name):
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    try:
        return runtime.pick_device(name)
    except ConfigError as e:  # its message names the config key train.device
        raise ConfigError(f"--device {name}: not available here") from e


def decode_precision(decode: DecodeConfig, device: torch.device) -> ResolvedPrecision:
    """The resolved precision of `decode.precision` (or --precision) on `device`."""
    from transformer_cli.core import runtime

    return runtime.resolve_precision(decode.precision, device, "--precision")


# ----------------------------------------------------------------------------- the command


def run(
    checkpoint: str | Path,
    texts: list[str] | None = None,
    input_path: str | Path | None = None,
    output_path: str | Path | None = None,
    *,
    decode: DecodeOverrides = NO_OVERRIDES,
    device: str = "auto",
    chunk_lines: int = CHUNK_LINES,
) -> int:
    """Translate TEXT arguments, a file or stdin to stdout or a file; returns lines read.

    `decode`: the options that replace the checkpoint's decode section (see `Translator`).
    """
    if texts and input_path is not None:
        raise TfxError("give sentences as arguments or --input FILE, not both")
    interactive = not texts and input_path is None and sys.stdin.isatty()
    translator = Translator(checkpoint, device, decode)
    if interactive and output_path is None:
        return interact(translator)
    with contextlib.ExitStack() as stack:
        if texts:
            lines: Iterable[str] = texts
        elif input_path is not None:
            lines = read_lines(stack.enter_context(_open_input(input_path)))
        elif interactive:
            lines = prompt_lines()
        else:
            lines = read_lines(sys.stdin.buffer)
        out = stack.enter_context(_open_output(output_path))
        count = 0
        started = time.monotonic()
        for chunk in chunks(lines, chunk_lines):
            for line in translator.translate(chunk):
                out.write(line.encode("utf-8") + b"\n")
            out.flush()
            count += len(chunk)
    if output_path is not None:
        seconds = time.monotonic() - started
        print(f"translated {count} lines into {output_path} in {seconds:.1f} s", file=sys.stderr)
    return count


@contextlib.contextmanager
def _open_input(path: str | Path) -> Iterator[BinaryIO]:
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a text file")
    try:
        # not `with open(...)`: only open's own errors are reported here, not the reader's
        f = open(path, "rb")  # noqa: SIM115 (closed by the `with f` below)
    except FileNotFoundError:
        raise DataError(f"{path}: no such input file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        yield f


class _ByteSink(Protocol):
    """Where translations are written: a binary file, or stdout's buffer."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> None: ...


@contextlib.contextmanager
def _open_output(path: str | Path | None) -> Iterator[_ByteSink]:
    """The output: a temp file renamed over `path` at the end (no half file), or stdout."""
    if path is not None:
        from transformer_cli.core.fileio import atomic_open

        if Path(path).is_dir():
            raise DataError(f"{path}: is a directory; --output needs a file name")
        with atomic_open(path) as f:
            yield f
        return
    sys.stdout.flush()
    stdout = getattr(sys.stdout, "buffer", None)
    try:
        yield stdout if stdout is not None else _TextSink(sys.stdout)
    except BrokenPipeError:
        # the reader went away (`tfx translate ... | head`): stop quietly, as cat does;
        # stdout now points at /dev/null so that the flush at exit cannot fail again
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())


class _TextSink:
    """A bytes-accepting wrapper for a text stream without `.buffer`."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode("utf-8"))

    def flush(self) -> None:
        self.stream.flush()


def prompt_lines() -> Iterator[str]:
    """Lines typed at a `> ` prompt (on stderr, so stdout holds translations only)."""
    for number in itertools.count(1):
        print("> ", end="", file=sys.stderr, flush=True)
        raw = sys.stdin.buffer.readline()
        if not raw:
            print(file=sys.stderr)
            return
        yield decode_line(raw, number)


def interact(translator: Translator) -> int:
    """The interactive loop: one sentence at a time until EOF (Ctrl-D)."""
    print("tfx translate: type a sentence, Ctrl-D to quit", file=sys.stderr)
    count = 0
    for line in prompt_lines():
        for out in translator.translate([line]):
            print(out, flush=True)
        count += 1
    return count
