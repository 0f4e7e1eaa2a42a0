"""The options of the decoding commands: those `tfx translate` and `tfx evaluate` share
(`DecodeOverrides`), and translate's own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

BeamOpt = Annotated[
    int | None,
    typer.Option("--beam", help="Beam size; 1 = greedy. (default: the checkpoint config)"),
]
AlphaOpt = Annotated[
    float | None,
    typer.Option("--alpha", help="GNMT length penalty exponent. (default: the checkpoint config)"),
]
EarlyStopOpt = Annotated[
    bool | None,
    typer.Option(
        "--early-stop/--no-early-stop",
        help="Beam: also stop a sentence once its best candidate ends (faster, favours "
        "short outputs). (default: the checkpoint config)",
    ),
]
MaxLenAOpt = Annotated[
    float | None,
    typer.Option(
        "--max-len-a", help="Output cap = a * source pieces + b. (default: the checkpoint config)"
    ),
]
MaxLenBOpt = Annotated[
    int | None,
    typer.Option("--max-len-b", help="See --max-len-a. (default: the checkpoint config)"),
]
BatchOpt = Annotated[
    int | None,
    typer.Option("--batch-size", help="Sentences per batch. (default: the checkpoint config)"),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="auto, fp32, bf16 or fp16 (CUDA only). auto: bf16/fp16 on CUDA; on the CPU "
        "bf16 where it has bf16 units (faster; a few outputs differ from fp32's), else "
        "fp32. (default: the checkpoint config)",
    ),
]

SyncEveryOpt = Annotated[
    int | None,
    typer.Option(
        "--sync-every",
        help="Greedy: steps between checks for finished sentences; 0 = auto (1 on the CPU, "
        "8 on CUDA or MPS). Same output for every value. (default: the checkpoint config)",
    ),
]
SampleOpt = Annotated[
    bool | None,
    typer.Option(
        "--sample/--no-sample",
        help="Draw each piece from the model's distribution instead of searching (takes no "
        "--beam). With --nbest N: N independent samples, each scored by its mean "
        "log-probability per token (tfx score's mean). (default: the checkpoint config)",
    ),
]
TopkOpt = Annotated[
    int | None,
    typer.Option(
        "--topk",
        help="--sample: only from the K most probable pieces; 0 = all. (default: the checkpoint "
        "config, 0 unless it says)",
    ),
]
ToppOpt = Annotated[
    float | None,
    typer.Option(
        "--topp",
        help="--sample: only from the fewest most probable pieces whose probability reaches "
        "P (after --topk); 1 = all. (default: the checkpoint config, 1 unless it says)",
    ),
]
TemperatureOpt = Annotated[
    float | None,
    typer.Option(
        "--temperature",
        help="--sample: divide the logits by T; below 1 sharper, towards greedy. (default: the "
        "checkpoint config, 1 unless it says)",
    ),
]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        "--seed",
        help="--sample: each sentence draws from its own generator, seeded by (S, its line "
        "number), so the same seed gives the same samples for any --batch-size. A "
        "CTranslate2 export draws from one stream, seeded when it loads: the same input, "
        "--batch-size and seed give the same samples. (default: the checkpoint config, 0 "
        "unless it says)",
    ),
]

# translate's own
TagOpt = Annotated[
    str | None,
    typer.Option(
        "--tag",
        help="Put this corpus tag before each source, for a model trained on tagged "
        "corpora (data.train's tag).",
    ),
]
PlotAttentionOpt = Annotated[
    Path | None,
    typer.Option("--plot-attention", help="Draw the first TEXT's attention into this PNG."),
]
LayerOpt = Annotated[
    int, typer.Option("--layer", help="--plot-attention: decoder layer, 0-based; -1 = last.")
]
HeadOpt = Annotated[str, typer.Option("--head", help="--plot-attention: a head number, or mean.")]
SelfAttentionOpt = Annotated[
    bool, typer.Option("--self-attention", help="--plot-attention: decoder self-attention.")
]
AlignmentsOpt = Annotated[
    bool,
    typer.Option(
        "--alignments",
        help="Add word alignments after a tab: i-j links (Pharaoh), from the cross-attention "
        "of --align-layer averaged over heads: each target piece's most-attended source "
        "piece, both mapped to their words.",
    ),
]
AlignLayerOpt = Annotated[
    int | None,
    typer.Option(
        "--align-layer",
        help="--alignments: decoder layer, 0-based; -1 = last. (default: the second to last)",
    ),
]
