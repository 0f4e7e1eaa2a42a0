"""`tfx inspect ...`: the commands. Each loads its input, calls a view of inspect/, and
prints it as text, or as JSON with `--json`, or draws it with `--plot FILE.png`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from transformer_cli.cli.options import ConfigOpt, SetOpt, load
from transformer_cli.core.console import emit, wrote
from transformer_cli.core.errors import boundary
from transformer_cli.inspect.batch import batch_view, format_batch
from transformer_cli.inspect.views import (
    format_positions,
    format_scaling,
    format_schedule,
    positions_view,
    scaling_view,
    schedule_view,
)

inspect_app = typer.Typer(
    help=(
        "Look inside: batches and masks, positions, attention scaling, the LR schedule, "
        "norms, residuals, parallel decoding, the torch.nn reference."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


PlotOpt = Annotated[Path | None, typer.Option("--plot", help="Also draw it into this PNG.")]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")]


CheckpointOpt = Annotated[
    Path | None,
    typer.Option("--checkpoint", help="A trained tfx checkpoint (.pt) instead of a fresh model."),
]
MaybeConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config: a fresh model and its prepared cache's batch."
    ),
]
SplitOpt = Annotated[str, typer.Option("--split", help="train, valid or test.")]
IndexOpt = Annotated[int, typer.Option("--index", help="Which batch (0-based).")]


def _subject(
    config: Path | None, set_: list[str] | None, checkpoint: Path | None, split: str, index: int
):
    """The model and batch a model view looks at (inspect/subject.py)."""
    from transformer_cli.inspect.subject import subject

    return subject(None if config is None else load(config, set_), checkpoint, split, index)


def _show(view: dict, as_json: bool, text, plot: Path | None, draw) -> None:
    """Print `view` as text or JSON; draw it into `plot` when given."""
    emit(json.dumps(view) if as_json else text(view))
    if plot is not None:
        wrote(draw(view, plot))


@inspect_app.command("batch")
@boundary
def batch_command(
    config: ConfigOpt,
    set_: SetOpt = None,
    split: Annotated[str, typer.Option("--split", help="train, valid or test.")] = "train",
    index: Annotated[int, typer.Option("--index", help="Which batch (0-based).")] = 0,
    epoch: Annotated[int, typer.Option("--epoch", help="Training epoch (train only).")] = 0,
    rows: Annotated[int, typer.Option("--rows", help="Rows to show, shortest to longest.")] = 4,
    plot: PlotOpt = None,
    json_: JsonOpt = False,
) -> None:
    """One real batch from the prepared cache: pieces, the target shift, and every mask."""
    view = batch_view(load(config, set_), split, index, rows, epoch)
    emit(json.dumps(view) if json_ else format_batch(view))
    if plot is not None:
        from transformer_cli.inspect.plots import plot_masks

        wrote(plot_masks(view, plot))


@inspect_app.command("positions")
@boundary
def positions_command(
    d_model: Annotated[int, typer.Option("--d-model", help="Encoding size.")] = 64,
    length: Annotated[int, typer.Option("--length", help="Positions to show.")] = 100,
    k: Annotated[
        list[int] | None, typer.Option("--k", help="Offsets to check (repeatable).")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", help="Also: a trained layer's W_q, W_k and the embedding scale."
        ),
    ] = None,
    layer: Annotated[
        int, typer.Option("--layer", help="With --checkpoint: which encoder layer's W_q, W_k.")
    ] = 0,
    plot: PlotOpt = None,
    json_: JsonOpt = False,
) -> None:
    """The sinusoidal positional encoding, and a check that PE(pos+k) = M_k PE(pos).

    With --checkpoint: whether the position part of a trained layer's scores depends on
    the offset alone. For sinusoidal and learned tables it does not after W_q and W_k;
    for rope and relative it does, by construction. And sqrt(d_model) * embedding
    against the position vector, trained and at initialisation.
    """
    if checkpoint is not None:
        return _trained_positions(checkpoint, length, layer, tuple(k or ()), plot, json_)
    view = positions_view(d_model, length, tuple(k or ()))
    if json_:
        emit(json.dumps({key: v for key, v in view.items() if key != "table"}))
    else:
        emit(format_positions(view))
    if plot is not None:
        from transformer_cli.inspect.plots import plot_positions

        wrote(plot_positions(view["table"], plot))


@inspect_app.command("scaling")
@boundary
def scaling_command(
    d_k: Annotated[int, typer.Option("--d-k", help="Head dimension d_k.")] = 64,
    keys: Annotated[int, typer.Option("--keys", help="Keys per softmax.")] = 50,
    samples: Annotated[int, typer.Option("--samples", help="Random queries.")] = 2000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Use this model's d_k (d_model/heads).")
    ] = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Why scores are divided by sqrt(d_k): variance, softmax peak and gradient, measured."""
    if config is not None:
        cfg = load(config, set_)
        d_k = cfg.model.d_model // cfg.model.heads
    view = scaling_view(d_k, keys, samples, seed)
    emit(json.dumps(view) if json_ else format_scaling(view))


@inspect_app.command("schedule")
@boundary
def schedule_command(
    config: ConfigOpt,
    set_: SetOpt = None,
    steps: Annotated[
        int, typer.Option("--steps", help="Steps to show (default: train.max_steps).")
    ] = 0,
    plot: PlotOpt = None,
    json_: JsonOpt = False,
) -> None:
    """The configured learning-rate schedule over the run, warm-up peak marked."""
    view = schedule_view(load(config, set_), steps)
    emit(json.dumps(view) if json_ else format_schedule(view))
    if plot is not None:
        from transformer_cli.inspect.plots import plot_schedule

        title = (
            f"{view['schedule']} schedule: lr = {view['formula']}\n"
            f"d_model {view['d_model']}, warmup {view['warmup']}, {view['steps']} steps"
        )
        wrote(plot_schedule(view["lr"], view["warmup"], plot, title))


@inspect_app.command("attention")
@boundary
def attention_command(
    checkpoint: Annotated[Path, typer.Argument(help="A tfx checkpoint (.pt).")],
    text: Annotated[str, typer.Argument(help="One source sentence.")],
    output: Annotated[Path, typer.Option("--plot", help="The PNG to write.")],
    layer: Annotated[int, typer.Option("--layer", help="Decoder layer, 0-based; -1 = last.")] = -1,
    head: Annotated[str, typer.Option("--head", help="A head number, or mean.")] = "mean",
    self_attention: Annotated[
        bool, typer.Option("--self-attention", help="Decoder self-attention, not cross.")
    ] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """Greedy-translate one sentence and draw its attention (cross, or decoder self)."""
    from transformer_cli.inspect.attention_maps import plot_translation_attention

    wrote(
        plot_translation_attention(
            checkpoint,
            text,
            output,
            layer=layer,
            head=head,
            self_attention=self_attention,
            device=device,
        )
    )


def _trained_positions(
    checkpoint: Path,
    length: int,
    layer: int,
    ks: tuple[int, ...],
    plot: Path | None,
    as_json: bool,
) -> None:
    from transformer_cli.inspect.question_plots import plot_relative
    from transformer_cli.inspect.relative import format_trained_positions, trained_positions_view
    from transformer_cli.inspect.subject import load_trained

    model, _, _, step = load_trained(checkpoint)
    view = trained_positions_view(model, length, f"{checkpoint} (step {step})", layer)
    rotation = positions_view(view["d_model"], view["length"], ks)
    if as_json:
        summary = {key: v for key, v in view.items() if key not in ("raw", "heads")}
        emit(json.dumps({**summary, "checks": rotation["checks"]}))
    else:
        emit(format_positions(rotation) + "\n\n" + format_trained_positions(view))
    if plot is not None:
        wrote(plot_relative(view, plot))


@inspect_app.command("norm")
@boundary
def norm_command(
    config: MaybeConfigOpt = None,
    set_: SetOpt = None,
    checkpoint: CheckpointOpt = None,
    split: SplitOpt = "train",
    index: IndexOpt = 0,
    plot: PlotOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Why LayerNorm: BatchNorm's per-feature statistics include the padding, LayerNorm's not."""
    from transformer_cli.inspect.norm import format_norm, norm_view
    from transformer_cli.inspect.question_plots import plot_norm

    s = _subject(config, set_, checkpoint, split, index)
    _show(norm_view(s.model, s.cfg, s.batch, s.source), json_, format_norm, plot, plot_norm)


@inspect_app.command("residual")
@boundary
def residual_command(
    config: MaybeConfigOpt = None,
    set_: SetOpt = None,
    checkpoint: CheckpointOpt = None,
    split: SplitOpt = "train",
    index: IndexOpt = 0,
    plot: PlotOpt = None,
    json_: JsonOpt = False,
) -> None:
    """The gradient reaching each layer, with and without the residual connections.

    A config: fresh models of its shape, post-norm and pre-norm (deepen them with
    --set model.enc_layers=12). A checkpoint: the trained model, in its own norm order.
    """
    from transformer_cli.inspect.question_plots import plot_residual
    from transformer_cli.inspect.residual import format_residual, residual_view

    s = _subject(config, set_, checkpoint, split, index)
    trained = None if checkpoint is None else s.model
    view = residual_view(s.cfg, s.batch, trained, s.source)
    _show(view, json_, format_residual, plot, plot_residual)


@inspect_app.command("decoding")
@boundary
def decoding_command(
    checkpoint: Annotated[Path, typer.Argument(help="A tfx checkpoint (.pt).")],
    text: Annotated[str, typer.Argument(help="One source sentence.")],
    plot: PlotOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Teacher forcing's one parallel pass against greedy decoding's one pass per piece."""
    from transformer_cli.inspect.parallel import decoding_view, format_decoding
    from transformer_cli.inspect.question_plots import plot_decoding
    from transformer_cli.inspect.subject import load_trained

    model, tokenizer, cfg, step = load_trained(checkpoint)
    view = decoding_view(model, tokenizer, cfg, text, f"{checkpoint} (step {step})")
    _show(view, json_, format_decoding, plot, plot_decoding)


@inspect_app.command("reference")
@boundary
def reference_command(
    config: MaybeConfigOpt = None,
    set_: SetOpt = None,
    checkpoint: CheckpointOpt = None,
    split: SplitOpt = "valid",
    index: IndexOpt = 0,
    json_: JsonOpt = False,
) -> None:
    """tfx's layers with their weights copied into torch.nn's, on one real padded batch."""
    from transformer_cli.inspect.reference import format_reference, reference_view

    s = _subject(config, set_, checkpoint, split, index)
    view = reference_view(s.model, s.batch.src, s.batch.tgt_in, s.source)
    emit(json.dumps(view) if json_ else format_reference(view))
