"""`tfx translate CHECKPOINT`: the checkpoint alone -> translations.

Input, one sentence per line: the TEXT arguments, else `--input FILE`, else stdin. Piped
stdin and files are read as bytes and translated in chunks of `CHUNK_LINES` lines, each
written out as soon as it is done, so a large file never sits in memory. A terminal on
stdin gives an interactive `> ` prompt instead.

The output has exactly one line per input line (with `--nbest K`, exactly K lines per
input line: `hypothesis<TAB>score`, best first, the score being the length-normalised
log-probability of search.py; with `--sample`, K samples in the order drawn, each scored
by its mean log-probability per token, as `tfx score` gives it). With `--alignments`, each
line ends in a tab and the hypothesis's word alignments, `i-j ...` (decoding/alignment.py).
So that this always holds:

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
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from transformer_cli.core import runtime
from transformer_cli.core.config import NO_OVERRIDES, Config, DecodeOverrides
from transformer_cli.core.config_rules import apply_decode_overrides
from transformer_cli.core.errors import ConfigError, TfxError
from transformer_cli.decoding.limits import fit_sources
from transformer_cli.decoding.lines import (
    chunks,
    open_input,
    open_output,
    prompt_lines,
    read_lines,
    warn,
)

if TYPE_CHECKING:
    from transformer_cli.data.tokenizer import Tokenizer
    from transformer_cli.decoding.alignment import Aligner
    from transformer_cli.decoding.search import Hypothesis

CHUNK_LINES = 1000


@dataclass(frozen=True)
class Align:
    """`--alignments`: which decoder layer's cross-attention (None: the second to last)."""

    layer: int | None = None

    @classmethod
    def of(cls, alignments: bool, layer: int | None) -> Align | None:
        """The flags `--alignments` and `--align-layer N`: None without --alignments."""
        if not alignments:
            if layer is not None:
                raise ConfigError("--align-layer picks the layer of --alignments; add it")
            return None
        return cls(layer)


# Packing the weights for oneDNN costs more than it saves on a handful of lines, so a
# model is packed at its first chunk of at least this many (docs/performance.md,
# "Weights packed once"); the outputs are the same either way, up to float rounding order.
PACK_MIN_LINES = 128


# ----------------------------------------------------------------------------- translating


class Translator:
    """A loaded model with its decoding options: lines of text in, lines of text out."""

    def __init__(
        self,
        checkpoint_path: str | Path,
        device: str = "auto",
        decode: DecodeOverrides = NO_OVERRIDES,
        tag: str | None = None,
        align: Align | None = None,
    ) -> None:
        """`decode`: the options that replace the checkpoint's decode section (ConfigError
        naming the flag if one is out of range); `tag`: a corpus tag of the model's, put
        before every source (ConfigError naming the known ones if it is not one); `align`:
        add word alignments to each line (decoding/alignment.py)."""
        from transformer_cli.decoding import ct2_backend as ct2
        from transformer_cli.decoding.loading import load_model

        self.device = runtime.device_option(device)
        self.exported: ct2.Exported | None = None  # a CTranslate2 export decodes instead
        if ct2.is_export_dir(checkpoint_path):
            self.exported = ct2.load_export(checkpoint_path, self.device.type, seed=decode.seed)
            self.tokenizer, cfg = self.exported.tokenizer, self.exported.cfg
        else:
            self.model, self.tokenizer, cfg = load_model(checkpoint_path, self.device)
        self.decode_cfg = apply_decode_overrides(cfg.decode, decode)
        self.precision = runtime.decode_precision(self.decode_cfg, self.device)
        self.packed = False
        self.nbest = decode.nbest
        self.positions = cfg.model.max_positions
        self.tag_id = None if tag is None else tag_id(cfg, self.tokenizer, tag)
        self.lines_done = 0  # for warnings' line numbers and sampling's seeds across chunks
        self.aligner = None if align is None else self._aligner(align)

    def _aligner(self, align: Align) -> Aligner:
        from transformer_cli.decoding.alignment import Aligner, chosen_layer

        if self.exported is not None:
            raise ConfigError(
                "--alignments reads tfx's cross-attention: give the checkpoint, not its "
                "CTranslate2 export"
            )
        layer = chosen_layer(len(self.model.decoder.layers), align.layer)
        batch = self.decode_cfg.batch_sentences
        return Aligner(self.model, self.tokenizer, layer, self.device, self.precision, batch)

    def translate(self, lines: list[str]) -> list[str]:
        """Output lines for `lines`: one each, or `nbest` each with scores."""
        first = self.lines_done + 1
        self.lines_done += len(lines)
        keep = [i for i, line in enumerate(lines) if line.strip()]
        sources: list[list[int]] = [[] for _ in lines]
        for i, ids in zip(keep, self.tokenizer.encode_src([lines[i] for i in keep]), strict=True):
            sources[i] = ids if self.tag_id is None else [self.tag_id, *ids]
        cut, overlong = fit_sources(sources, self.positions)  # the backends cut them alike
        for i in overlong:
            warn(
                f"line {first + i}: {len(sources[i])} pieces, more than the model's maximum "
                f"of {self.positions}; translating the first {self.positions}"
            )
        results = self._decode(sources, first - 1)
        if self.nbest == 1:
            hyps = cast("list[list[int]]", results)
            texts = [_one_line(h) for h in self.tokenizer.decode_tgt(hyps)]
            return self._aligned(texts, cut, hyps)
        rows: list[str] = []
        pairs: list[tuple[list[int], list[int]]] = []  # (source, hypothesis) of each row
        for source, scored in zip(cut, cast("list[list[Hypothesis]]", results), strict=True):
            outputs = [hyp for hyp, _ in scored]  # nbest > 1: scored hypotheses, best first
            texts = self.tokenizer.decode_tgt(outputs)
            rows += [f"{_one_line(t)}\t{s:.4f}" for t, (_, s) in zip(texts, scored, strict=True)]
            pairs += [(source, hyp) for hyp in outputs]
        return self._aligned(rows, [src for src, _ in pairs], [hyp for _, hyp in pairs])

    def _aligned(
        self, lines: list[str], sources: list[list[int]], hyps: list[list[int]]
    ) -> list[str]:
        """`lines`, each with its hypothesis's Pharaoh links after a tab under --alignments;
        `sources` as the search read them (cut to the model's positions)."""
        if self.aligner is None:
            return lines
        skip = 0 if self.tag_id is None else 1  # the tag is not a word of the input
        links = self.aligner.links(sources, hyps, skip)
        return [f"{line}\t{link}" for line, link in zip(lines, links, strict=True)]

    def _decode(self, sources: list[list[int]], first: int) -> list:
        """Piece ids (nbest 1) or scored n-best lists, by tfx's search or CTranslate2's;
        `first`: the input's number of sources[0]."""
        from transformer_cli.decoding.ct2_backend import decode_exported
        from transformer_cli.decoding.loading import ready_to_decode
        from transformer_cli.decoding.runner import decode_all

        if self.exported is not None:
            return decode_exported(self.exported, sources, self.decode_cfg, self.nbest)
        if not self.packed and len(sources) >= PACK_MIN_LINES:
            ready_to_decode(self.model, self.device, self.precision)
            self.packed = True
        return decode_all(
            self.model,
            sources,
            self.decode_cfg,
            self.device,
            self.precision,
            nbest=self.nbest,
            first=first,
        )


def tag_id(cfg: Config, tokenizer: Tokenizer, tag: str) -> int:
    """The source id of `tag`, one of the corpus tags `cfg` trained with; ConfigError if not."""
    known = [c.tag for c in cfg.data.train if c.tag] if isinstance(cfg.data.train, tuple) else []
    if tag not in known:
        has = f"its tags: {', '.join(known)}" if known else "it was trained without corpus tags"
        raise ConfigError(f"--tag {tag}: not a tag of this model ({has})")
    return tokenizer.src_piece_id(tag)


def _one_line(text: str) -> str:
    """Whitespace runs (line and paragraph separators, tabs) become single spaces."""
    return " ".join(text.split())


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
    tag: str | None = None,
    align: Align | None = None,
) -> int:
    """Translate TEXT arguments, a file or stdin to stdout or a file; returns lines read.

    `decode`, `tag` and `align`: see `Translator`.
    """
    if texts and input_path is not None:
        raise TfxError("give sentences as arguments or --input FILE, not both")
    interactive = not texts and input_path is None and sys.stdin.isatty()
    translator = Translator(checkpoint, device, decode, tag, align)
    if interactive and output_path is None:
        return interact(translator)
    with contextlib.ExitStack() as stack:
        if texts:
            lines: Iterable[str] = texts
        elif input_path is not None:
            lines = read_lines(stack.enter_context(open_input(input_path)))
        elif interactive:
            lines = prompt_lines()
        else:
            lines = read_lines(sys.stdin.buffer)
        out = stack.enter_context(open_output(output_path))
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


def interact(translator: Translator) -> int:
    """The interactive loop: one sentence at a time until EOF (Ctrl-D)."""
    print("tfx translate: type a sentence, Ctrl-D to quit", file=sys.stderr)
    count = 0
    for line in prompt_lines():
        for out in translator.translate([line]):
            print(out, flush=True)
        count += 1
    return count
