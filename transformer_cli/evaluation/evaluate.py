"""`tfx evaluate`: many checkpoints (or exports) scored alike, in one report."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from transformer_cli.core.checkpoint import load_state, state_step
from transformer_cli.core.config import (
    NO_OVERRIDES,
    Config,
    DecodeConfig,
    DecodeOverrides,
    ResolvedPrecision,
)
from transformer_cli.core.errors import ConfigError, DataError
from transformer_cli.core.fileio import atomic_write_text
from transformer_cli.core.table import aligned
from transformer_cli.data import store
from transformer_cli.data.checkpoint_parts import saved_config
from transformer_cli.evaluation import average as average_mod
from transformer_cli.evaluation.scores import EvalData, score_checkpoint, score_export

if TYPE_CHECKING:
    import torch


# ----------------------------------------------------------------------------- tfx evaluate

EVAL_SPLITS = ("valid", "test")  # the splits prepare keeps as raw text, for references


@dataclass
class Evaluation:
    """One `tfx evaluate`: what every checkpoint is scored with, and where the results go."""

    paths: list[Path]
    device: torch.device
    decode: DecodeConfig  # the same for every checkpoint, so that their scores compare
    precision: ResolvedPrecision
    out_dir: Path
    split: str
    cfg_override: Config | None  # --config: its run dir and decode, for every checkpoint
    first_cfg: Config  # the first checkpoint's (or --config's): decode and the report's data
    first_state: dict | None  # the first checkpoint, read once for its config; None once scored
    raw: EvalData | None = None  # --src/--ref: every checkpoint's data
    splits: dict[str, EvalData] = field(default_factory=dict)  # prepared splits by run dir
    names: set[str] = field(default_factory=set)  # hypothesis file names taken so far

    def data_for(self, cfg: Config) -> EvalData:
        """What a checkpoint of `cfg` is scored on: --src/--ref, else its run dir's split."""
        if self.raw is not None:
            return self.raw
        if cfg.run_dir not in self.splits:
            self.splits[cfg.run_dir] = split_data(cfg, self.split)
        return self.splits[cfg.run_dir]


def run(
    checkpoints: list[str],
    split: str = "test",
    src_file: str | Path | None = None,
    ref_file: str | Path | None = None,
    config: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    decode: DecodeOverrides = NO_OVERRIDES,
    device: str = "auto",
    as_json: bool = False,
    average: int = 0,
    output_dir: str | Path | None = None,
) -> dict:
    """Score checkpoints on a prepared split or raw files; print a table (or JSON).

    Writes, atomically, into `output_dir` (default: RUN_DIR/eval, RUN_DIR being --config's
    run dir or else the one the first checkpoint file is in): `<checkpoint stem>.<label>.hyp`
    per checkpoint, `report.<label>.json` for all, and `avg_last<N>.pt` with `average` N.
    The options of `decode` left as None come from --config's decode section, or else from
    the first checkpoint's, and are the same for every checkpoint.
    """
    if (src_file is None) != (ref_file is None):
        raise ConfigError("--src and --ref go together: give both, or neither (for --split)")
    if average < 0:
        raise ConfigError(f"--average must be >= 0 (0 = none), got {average}")
    ev = setup(checkpoints, split, config, overrides, decode, device, output_dir)
    # the data is read before any decoding, so that a mistake there is reported at once
    if src_file is not None and ref_file is not None:
        ev.raw = raw_data(Path(src_file), Path(ref_file))
    ev.data_for(ev.first_cfg)
    if average:
        add_average(ev, average)
    rows = [score_path(ev, number, path) for number, path in enumerate(ev.paths, start=1)]
    report = make_report(ev, rows)
    write_report(report, ev.out_dir, as_json)
    return report


def setup(
    checkpoints: list[str],
    split: str,
    config: str | Path | None,
    overrides: list[str] | tuple[str, ...],
    decode: DecodeOverrides,
    device: str,
    output_dir: str | Path | None,
) -> Evaluation:
    """The device, the checkpoints and the decoding of `run`: the same for every checkpoint."""
    from transformer_cli.core import runtime
    from transformer_cli.core.config_file import load_config
    from transformer_cli.core.config_rules import apply_decode_overrides

    dev = runtime.device_option(device)
    cfg_override = load_config(config, list(overrides)) if config is not None else None
    paths = average_mod.expand(checkpoints)
    first_state = _state_of(paths[0])
    first_cfg = cfg_override or saved_config(first_state, paths[0])
    decode_cfg = apply_decode_overrides(first_cfg.decode, decode)
    return Evaluation(
        paths=paths,
        device=dev,
        decode=decode_cfg,
        precision=runtime.decode_precision(decode_cfg, dev),
        out_dir=Path(output_dir) if output_dir else default_output_dir(paths[0], cfg_override),
        split=split,
        cfg_override=cfg_override,
        first_cfg=first_cfg,
        first_state=first_state,
    )


def add_average(ev: Evaluation, last: int) -> None:
    """Average the `last` newest steps into OUT_DIR/avg_last<N>.pt, to be scored last."""
    chosen = average_mod.last_steps(ev.paths, last)
    averaged = ev.out_dir / f"avg_last{last}.pt"
    average_mod.average_checkpoints(chosen, averaged)
    print(f"averaged {', '.join(str(p) for p in chosen)} into {averaged}", file=sys.stderr)
    ev.paths.append(averaged)


def _state_of(path: Path) -> dict:
    """A checkpoint's state; for a CTranslate2 export, what it records (config and step)."""
    from transformer_cli.decoding.ct2_backend import is_export_dir, read_export_info

    if is_export_dir(path):
        info = read_export_info(path)
        return {"config": info.get("config"), "progress": {"step": info.get("step")}}
    return load_state(path)


def score_path(ev: Evaluation, number: int, path: Path) -> dict:
    """Load, decode and score checkpoint `number` of `ev.paths`, and write its hypotheses."""
    from transformer_cli.decoding import ct2_backend as ct2
    from transformer_cli.decoding.loading import model_from_state, ready_to_decode

    print(f"[{number}/{len(ev.paths)}] {path}", file=sys.stderr, flush=True)
    state = ev.first_state if number == 1 and ev.first_state is not None else _state_of(path)
    ev.first_state = None  # so that its weights go once it is scored
    if ct2.is_export_dir(path):
        exported = ct2.load_export(path, ev.device.type, seed=ev.decode.seed)
        cfg = ev.cfg_override or exported.cfg
        data = ev.data_for(cfg)
        row = score_export(exported, ev.decode, data)
    else:
        model, tokenizer, ckpt_cfg = model_from_state(state, path, ev.device)
        ready_to_decode(model, ev.device, ev.precision)
        cfg = ev.cfg_override or ckpt_cfg
        data = ev.data_for(cfg)
        row = score_checkpoint(model, tokenizer, cfg, ev.decode, data, ev.device, ev.precision)
    hyp_path = ev.out_dir / f"{_unique(path.stem + '.' + data.label, ev.names)}.hyp"
    atomic_write_text(hyp_path, "".join(h + "\n" for h in row.pop("hypotheses")))
    step = state_step(state)
    return {
        "checkpoint": str(path),
        "step": step if step >= 0 else None,
        **row,
        "data": data.origin,
        "hyp": str(hyp_path),
    }


def make_report(ev: Evaluation, rows: list[dict]) -> dict:
    """The results, best BLEU first, under the first checkpoint's data and the decoding."""
    data = ev.data_for(ev.first_cfg)  # the first checkpoint's; each result names its own
    rows = sorted(rows, key=lambda r: -r["bleu"])
    return {
        "data": data.origin,
        "label": data.label,
        "sentences": len(data.sources),
        "decode": dataclasses.asdict(ev.decode),
        "device": ev.device.type,
        "precision": ev.precision,
        "bleu_signature": rows[0]["bleu_signature"],
        "chrf_signature": rows[0]["chrf_signature"],
        "results": [{k: v for k, v in r.items() if not k.endswith("_signature")} for r in rows],
    }


def write_report(report: dict, out_dir: Path, as_json: bool) -> None:
    """OUT_DIR/report.<label>.json, and the report on stdout as JSON or as a table."""
    report_path = out_dir / f"report.{report['label']}.json"
    atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
        print(f"hypotheses and report: {out_dir}/ ({report_path.name})")


def default_output_dir(first: Path, cfg_override: Config | None) -> Path:
    """RUN_DIR/eval: --config's run dir, else the run dir the first checkpoint file is in.

    Never the run_dir recorded inside a checkpoint: in a shared checkpoint that is its
    author's path (or any path someone chose), and tfx writes only where it is pointed.
    """
    if cfg_override is not None:
        return Path(cfg_override.run_dir) / "eval"
    run_dir = first.parent.parent if first.parent.name == "checkpoints" else first.parent
    return run_dir / "eval"


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `name-2`, `name-3`...: two runs' best.pt must not share a hypothesis file."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate)
    return candidate


def split_data(cfg: Config, split: str) -> EvalData:
    """Source and reference lines of a prepared split (valid or test) of cfg's run dir."""
    names = {cfg.data.valid: "valid", cfg.data.test: "test"}  # e.g. test_2016_flickr -> test
    name = names.get(split, split)
    if name not in EVAL_SPLITS:
        raise ConfigError(
            f"--split {split}: evaluate scores 'valid' or 'test' (the splits prepare keeps "
            "as text), or give --src FILE --ref FILE"
        )
    store.load_meta(cfg.run_dir)  # one clear error if the run dir was never prepared
    sources = store.load_text(cfg.run_dir, name, "src")
    references = store.load_text(cfg.run_dir, name, "tgt")
    if len(sources) != len(references):
        raise DataError(
            f"{store.cache_dir(cfg.run_dir)}: {name} has {len(sources)} sources "
            f"but {len(references)} references; run tfx prepare again"
        )
    return EvalData(name, sources, references, f"{store.cache_dir(cfg.run_dir)} ({name})")


def raw_data(src_file: Path, ref_file: Path) -> EvalData:
    """Source and reference lines from two text files, which must have as many lines."""
    from transformer_cli.decoding.lines import read_input_lines

    sources = read_input_lines(src_file)
    references = read_input_lines(ref_file)
    if len(sources) != len(references):
        raise DataError(
            f"--src {src_file} has {len(sources)} lines but --ref {ref_file} has "
            f"{len(references)}; they must be line-aligned"
        )
    return EvalData(src_file.name, sources, references, f"{src_file} -> {ref_file}")


def format_table(report: dict) -> str:
    """The results as an aligned table, best BLEU first, with the sacreBLEU signatures."""
    header = ("checkpoint", "step", "BLEU", "chrF", "loss", "ppl", "sents", "decode s", "sent/s")
    lines = [header]
    for r in report["results"]:
        step = "" if r["step"] is None else str(r["step"])
        row = (
            r["checkpoint"],
            step,
            f"{r['bleu']:.2f}",
            f"{r['chrf']:.2f}",
            f"{r['loss']:.3f}",
            f"{r['ppl']:.2f}",
            str(r["sentences"]),
            f"{r['decode_seconds']:.2f}",
            f"{r['sentences_per_s']:.1f}",
        )
        lines.append(row)
    text = aligned(lines)
    d = report["decode"]
    search = "greedy" if d["beam"] == 1 else f"beam {d['beam']}, alpha {d['alpha']}"
    if d["beam"] > 1 and d.get("early_stop"):
        search += ", early stop"
    text.append(
        f"data: {report['data']}, {report['sentences']} sentences; {search}; "
        f"{report['device']} {report['precision']}"
    )
    text.append(f"BLEU: {report['bleu_signature']}")
    text.append(f"chrF: {report['chrf_signature']}")
    return "\n".join(text)
