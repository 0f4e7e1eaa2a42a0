"""The `tfx` command line. Each command is a few lines: load config -> <module>.run(...).

torch and the heavy modules are imported inside the commands, so `tfx --help` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from transformer_cli.cli.decode_options import (
    AlignLayerOpt,
    AlignmentsOpt,
    AlphaOpt,
    BatchOpt,
    BeamOpt,
    DeviceOpt,
    EarlyStopOpt,
    HeadOpt,
    LayerOpt,
    MaxLenAOpt,
    MaxLenBOpt,
    PlotAttentionOpt,
    PrecisionOpt,
    SampleOpt,
    SeedOpt,
    SelfAttentionOpt,
    SyncEveryOpt,
    TagOpt,
    TemperatureOpt,
    TopkOpt,
    ToppOpt,
)
from transformer_cli.cli.inspect import inspect_app
from transformer_cli.cli.options import ConfigOpt, SetOpt, load
from transformer_cli.core.errors import boundary

app = typer.Typer(
    name="tfx",
    help="tfx: train, evaluate and use Transformer translation models from YAML configs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
@boundary
def prepare(
    config: ConfigOpt,
    set_: SetOpt = None,
    tokenizer_from: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer-from",
            help="Encode with this checkpoint's SentencePiece model(s) instead of training "
            "new ones (to fine-tune it: tfx train --init-from). The config's tokenizer "
            "section must be the checkpoint's.",
        ),
    ] = None,
) -> None:
    """Read the corpus, train SentencePiece, and write the encoded cache into the run dir."""
    from transformer_cli.data import prepare as prepare_mod

    prepare_mod.run(load(config, set_), tokenizer_from=tokenizer_from)


@app.command()
@boundary
def train(
    config: ConfigOpt,
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run dir's last checkpoint.")
    ] = False,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            help="Start from this checkpoint's weights (fine-tuning), with a fresh optimizer, "
            "schedule and step count. The model shape must be the checkpoint's, and the cache "
            "prepared with --tokenizer-from it.",
        ),
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option(
            "--nproc",
            help="Train on N processes of this machine (one per GPU, or CPU processes), "
            "started by torchrun. train.batch_tokens is per process.",
        ),
    ] = None,
) -> None:
    """Train a model on the prepared cache; checkpoints go into the run dir."""
    cfg = load(config, set_)
    if nproc is not None:
        from transformer_cli.training import launch
        from transformer_cli.training.finetune import Start

        start = Start(resume, init_from)
        code = launch.run(cfg, nproc, launch.rank_args(config, set_ or [], start), start)
        raise typer.Exit(code)
    from transformer_cli.training import loop as train_mod

    train_mod.run(cfg, resume=resume, init_from=init_from)


ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Write OUT_DIR even if it holds what tfx did not write: that directory is "
        "moved aside to OUT_DIR.tfx-backup, never deleted.",
    ),
]


@app.command()
@boundary
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A tfx checkpoint (.pt).")],
    out_dir: Annotated[
        Path,
        typer.Argument(
            help="The directory to write: new, empty, or an earlier tfx export (replaced whole)."
        ),
    ],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="ctranslate2: a directory for ctranslate2.Translator; huggingface: a "
            "transformers model (MarianMT for post-norm, Pegasus for pre-norm) and tokenizer.",
        ),
    ],
    quantization: Annotated[
        str,
        typer.Option(
            "--quantization",
            help="ctranslate2: int8, int8_float32, int16, float16, bfloat16 or float32.",
        ),
    ] = "float32",
    push_to_hub: Annotated[
        str | None,
        typer.Option(
            "--push-to-hub",
            metavar="REPO",
            help="huggingface: then upload OUT_DIR to this Hugging Face Hub model repo "
            "(user/name; created if missing, public unless its organization's default is "
            "private), as the login of `hf auth login` or HF_TOKEN. Refused when "
            "HF_HUB_OFFLINE is set; if the upload fails, OUT_DIR stays exported.",
        ),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Export a checkpoint for CTranslate2 or Hugging Face transformers (and the Hub)."""
    from transformer_cli.core.errors import ConfigError

    if to not in ("ctranslate2", "huggingface"):
        raise ConfigError(f"--to must be ctranslate2 or huggingface, got {to!r}")
    if push_to_hub is not None:
        from transformer_cli.export import hub

        hub.check(to, push_to_hub)  # before anything is written
    if to == "ctranslate2":
        from transformer_cli.export import ctranslate2 as ct2_export

        out = ct2_export.export(checkpoint, out_dir, quantization, force=force)
    else:
        from transformer_cli.export import huggingface as hf_export

        out = hf_export.export(checkpoint, out_dir, repo=push_to_hub, force=force)
    print(f"exported {checkpoint} to {out} ({to}); see {out / 'README.md'}", file=sys.stderr)
    if push_to_hub is not None:
        url = hub.push(out, push_to_hub, checkpoint)
        print(f"pushed {out} to {url}", file=sys.stderr)


# ----------------------------------------------------------------------------- decoding


@app.command()
@boundary
def translate(
    checkpoint: Annotated[
        Path, typer.Argument(help="A tfx checkpoint (.pt) or a CTranslate2 export directory.")
    ],
    text: Annotated[
        list[str] | None,
        typer.Argument(help="Sentences to translate. None: --input, piped stdin, or a prompt."),
    ] = None,
    input_: Annotated[
        Path | None, typer.Option("--input", "-i", help="Read sentences from a file.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to a file (atomically).")
    ] = None,
    beam: BeamOpt = None,
    alpha: AlphaOpt = None,
    early_stop: EarlyStopOpt = None,
    nbest: Annotated[
        int, typer.Option("--nbest", help="K lines per input: hypothesis<TAB>score.")
    ] = 1,
    max_len_a: MaxLenAOpt = None,
    max_len_b: MaxLenBOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    sync_every: SyncEveryOpt = None,
    sample: SampleOpt = None,
    topk: TopkOpt = None,
    topp: ToppOpt = None,
    temperature: TemperatureOpt = None,
    seed: SeedOpt = None,
    tag: TagOpt = None,
    alignments: AlignmentsOpt = False,
    align_layer: AlignLayerOpt = None,
    plot_attention: PlotAttentionOpt = None,
    layer: LayerOpt = -1,
    head: HeadOpt = "mean",
    self_attention: SelfAttentionOpt = False,
) -> None:
    """Translate with a checkpoint: one output line per input line."""
    from transformer_cli.core.config import DecodeOverrides
    from transformer_cli.core.config_rules import precision_flag
    from transformer_cli.decoding import translate as translate_mod

    if plot_attention is not None:  # first, so that a bad --layer or --head fails at once
        from transformer_cli.inspect.attention_maps import plot_first_attention

        plot_first_attention(
            checkpoint, text, plot_attention, layer=layer, head=head,
            self_attention=self_attention, device=device,
        )  # fmt: skip
    decode = DecodeOverrides(
        beam=beam, alpha=alpha, early_stop=early_stop, max_len_a=max_len_a,
        max_len_b=max_len_b, batch_sentences=batch_size, precision=precision_flag(precision),
        sync_every=sync_every, sample=sample, topk=topk, topp=topp, temperature=temperature,
        seed=seed, nbest=nbest,
    )  # fmt: skip
    align = translate_mod.Align.of(alignments, align_layer)
    translate_mod.run(checkpoint, text, input_, output, decode=decode, device=device, tag=tag,
                      align=align)  # fmt: skip


@app.command()
@boundary
def evaluate(
    checkpoints: Annotated[
        list[str], typer.Argument(help="Checkpoints: files, directories (their *.pt), globs.")
    ],
    split: Annotated[
        str, typer.Option("--split", help="Prepared split of the run dir: valid or test.")
    ] = "test",
    src: Annotated[Path | None, typer.Option("--src", help="Raw source file (with --ref).")] = None,
    ref: Annotated[Path | None, typer.Option("--ref", help="Raw reference file.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Use this config's run dir and decode.")
    ] = None,
    set_: SetOpt = None,
    beam: BeamOpt = None,
    alpha: AlphaOpt = None,
    early_stop: EarlyStopOpt = None,
    max_len_a: MaxLenAOpt = None,
    max_len_b: MaxLenBOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    sync_every: SyncEveryOpt = None,
    sample: SampleOpt = None,
    topk: TopkOpt = None,
    topp: ToppOpt = None,
    temperature: TemperatureOpt = None,
    seed: SeedOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    average: Annotated[
        int, typer.Option("--average", help="Also score the average of the last N checkpoints.")
    ] = 0,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help="Where to write (default: RUN_DIR/eval).")
    ] = None,
) -> None:
    """Score checkpoints (BLEU, chrF, loss, speed), best first; write hypotheses and a report."""
    from transformer_cli.core.config import DecodeOverrides
    from transformer_cli.core.config_rules import precision_flag
    from transformer_cli.evaluation import evaluate as evaluate_mod

    decode = DecodeOverrides(
        beam=beam, alpha=alpha, early_stop=early_stop, max_len_a=max_len_a,
        max_len_b=max_len_b, batch_sentences=batch_size, precision=precision_flag(precision),
        sync_every=sync_every, sample=sample, topk=topk, topp=topp, temperature=temperature,
        seed=seed,
    )  # fmt: skip
    evaluate_mod.run(
        checkpoints,
        split,
        src,
        ref,
        config,
        set_ or [],
        decode=decode,
        device=device,
        as_json=json_,
        average=average,
        output_dir=output_dir,
    )


@app.command()
@boundary
def score(
    checkpoint: Annotated[
        Path, typer.Argument(help="A tfx checkpoint (.pt) or a CTranslate2 export directory.")
    ],
    src: Annotated[Path, typer.Option("--src", help="Source sentences, one per line.")],
    tgt: Annotated[Path, typer.Option("--tgt", help="Their translations, line by line.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to a file (atomically).")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="JSON lines instead of TSV.")] = False,
    filter_: Annotated[
        float | None,
        typer.Option(
            "--filter",
            metavar="MIN",
            help="Write only the pairs whose mean log-probability per token is at least MIN, "
            "as source<TAB>target lines (a tsv corpus; with --json, their scores too).",
        ),
    ] = None,
    batch_tokens: Annotated[
        int, typer.Option("--batch-tokens", help="Pieces per batch (the longer side + 1).")
    ] = 4096,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
) -> None:
    """Score given translations: log p(target | source) per pair, as training scores it."""
    from transformer_cli.core.config_rules import precision_flag
    from transformer_cli.evaluation import score as score_mod

    score_mod.run(
        score_mod.ScoreJob(
            checkpoint, src, tgt, output, json_, filter_, batch_tokens, device,
            precision_flag(precision),
        )
    )  # fmt: skip


@app.command()
@boundary
def average(
    checkpoints: Annotated[
        list[str], typer.Argument(help="Checkpoints: files, directories (their *.pt), globs.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The averaged checkpoint.")],
    last: Annotated[
        int, typer.Option("--last", help="Only the N newest steps among them (0 = all).")
    ] = 0,
) -> None:
    """Average checkpoints' weights into one self-contained checkpoint."""
    from transformer_cli.evaluation import average as average_mod

    average_mod.run(checkpoints, output, last=last)


app.add_typer(inspect_app, name="inspect")


@app.command()
@boundary
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run dir with metrics.jsonl.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The PNG (default: RUN_DIR/curves.png).")
    ] = None,
) -> None:
    """Draw a run's training curves: loss, perplexity, validation BLEU, learning rate."""
    from transformer_cli.inspect.curves import plot_run

    print(plot_run(run_dir, output))


def main() -> None:
    """Console-script entry point."""
    if sys.argv[1:2] == ["train"]:
        from transformer_cli.fast import allocator

        allocator.use_jemalloc()  # runs this command again under jemalloc, where installed
    app()


if __name__ == "__main__":
    main()
