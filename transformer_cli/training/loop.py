"""The training loop. It reads top to bottom: setup (and resume), the loop (updates, logs,
validations with their saves), the end (a last validation or a signal's save, the summary).
The run's state travels in one `Session`; what an update needs, in its `Trainer`.

The pieces it calls are small and testable alone: one update (step.py: batches, the
masked loss of loss.py), the learning-rate schedule (schedule.py), what the run records
(records.py), checkpoints (core/checkpoint.py) and greedy decoding for validation BLEU
(decoding/runner.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from transformer_cli.core import checkpoint, runtime
from transformer_cli.core.config import Config
from transformer_cli.core.config_file import write_resolved
from transformer_cli.core.errors import TrainingError
from transformer_cli.core.metrics import score_texts
from transformer_cli.data import batching, store
from transformer_cli.data.tokenizer import Tokenizer
from transformer_cli.decoding import runner
from transformer_cli.decoding.runner import decode_all
from transformer_cli.fast import allocator
from transformer_cli.model.transformer import Transformer
from transformer_cli.training import distributed, finetune, lock, saving, schedule
from transformer_cli.training.distributed import World
from transformer_cli.training.finetune import Start
from transformer_cli.training.loss import split_loss
from transformer_cli.training.records import (
    BadSteps,
    MetricsLog,
    Progress,
    Window,
    format_summary,
    train_record,
)
from transformer_cli.training.session import (
    Session,
    StopSignals,
    ValidSet,
    count,
    prefetcher,
    settle,
    settle_interval,
    shared_stop,
    stop_condition,
)
from transformer_cli.training.step import Trainer, build_trainer, make_optimizer, train_step
from transformer_cli.training.tensorboard import BoardLog, require_writer

__all__ = ["Session", "StopSignals", "ValidSet", "run", "stop_condition", "validation"]


def run(cfg: Config, resume: bool = False, init_from: str | Path | None = None) -> dict:
    """Train as configured; return a summary. Everything is written under cfg.run_dir.

    `resume` continues the run dir's last checkpoint; `init_from` starts a new run from
    another checkpoint's weights (training/finetune.py); not both.

    Under torchrun this is one rank of a data-parallel job (training/distributed.py):
    rank 0 holds the run dir's lock (unless `tfx train --nproc` holds it for the job),
    logs, validates and writes; the other ranks train and wait for it.
    """
    start = Start(resume, None if init_from is None else Path(init_from))
    if cfg.train.tensorboard:
        require_writer()  # a missing extra says so before anything is built or written
    run_dir = Path(cfg.run_dir)
    world = distributed.from_env()
    device = distributed.rank_device(world, runtime.pick_device(cfg.train.device))
    with distributed.process_group(world, device, cfg.train.dist_timeout_minutes):
        if not world.is_main:
            return _train(cfg, run_dir, start, world, device)
        run_dir.mkdir(parents=True, exist_ok=True)
        held = lock.held_by_launcher(run_dir)
        with contextlib.nullcontext() if held else lock.RunLock(run_dir):
            checkpoint.remove_partial_writes(run_dir)  # litter of a save that was killed
            return _train(cfg, run_dir, start, world, device)


def _train(cfg: Config, run_dir: Path, start: Start, world: World, device: torch.device) -> dict:
    """One rank's run. Its session, with the DDP that the trainer's loss is when launched,
    is dropped when this returns, before the process group goes (`process_group`)."""
    session = setup(cfg, run_dir, start, world, device)
    with opened(session):
        train_loop(session)
        finish(session)
    summary = summarize(session)
    if world.is_main:
        print(format_summary(summary))
    return summary


# ---------------------------------------------------------------------- setup


def setup(cfg: Config, run_dir: Path, start: Start, world: World, device: torch.device) -> Session:
    """Build the run, once: data, model, optimizer; restore a checkpoint when resuming, or
    load another run's weights into the new model (--init-from); then the trainer, whole.
    """
    t = cfg.train
    store.load_meta(run_dir)  # a clear error if `tfx prepare` has not run
    tokenizer = Tokenizer.load(run_dir)
    base = finetune.base_for(cfg, run_dir, start.init_from) if start.init_from else None
    model_cfg = dataclasses.replace(
        cfg.model, src_vocab=tokenizer.src_vocab_size, tgt_vocab=tokenizer.tgt_vocab_size
    )
    cfg = dataclasses.replace(cfg, model=model_cfg)
    precision, why = runtime.resolve_precision_why(t.precision, device)
    threads = runtime.set_threads(distributed.rank_threads(world, t.threads))
    if device.type == "cpu":
        allocator.tune_cpu_memory()  # fast path: glibc kept from unmapping every step
    runtime.seed_everything(t.seed)

    train_split = store.load_split(run_dir, "train")
    valid = ValidSet(store.load_split(run_dir, "valid"), store.load_text(run_dir, "valid", "tgt"))
    model = Transformer(cfg.model).to(device)
    if base is not None:
        note = finetune.load_weights(model, base)
        if world.is_main:
            print(note, file=sys.stderr)
    runtime.seed_everything(distributed.rank_seed(t.seed, world.rank))  # each its own dropout
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    if world.is_main:
        saving.refuse_a_second_run(run_dir, start.resume)
    progress = Progress()
    if start.resume:
        progress = saving.restore(run_dir, world, t.seed, model, optimizer, scaler)
    if world.is_main:
        write_resolved(cfg, run_dir)
    # compiled under train.compile; launched, DDP wraps the loss (and broadcasts the weights)
    trainer = build_trainer(model, optimizer, scaler, train_split, cfg, device, precision, world)
    # fast path: the next update's batches collated on a thread while this one runs
    prefetch = prefetcher(trainer, device)
    settle_every = settle_interval(cfg, device)
    session = Session(run_dir, tokenizer, trainer, valid, progress, settle_every, prefetch)
    where = world.gather(
        runtime.describe(device, precision, threads, allocator.active(), why), "devices"
    )
    if world.is_main:
        print(first_line(model, where, len(train_split), run_dir), file=sys.stderr)
    return session


def first_line(model: Transformer, where: list[str], pairs: int, run_dir: Path) -> str:
    """What runs where: the parameters, the world size and each rank's device."""
    n_params = sum(p.numel() for p in model.parameters())
    ranks = ", ".join(f"rank {rank} on {device}" for rank, device in enumerate(where))
    return (
        f"training {n_params:,} parameters, world size {len(where)}: {ranks}; "
        f"{pairs:,} training pairs; run dir {run_dir}"
    )


@contextlib.contextmanager
def opened(session: Session) -> Iterator[None]:
    """The metrics log, the stop signals and the progress bar, for as long as the loop runs.

    Ranks other than 0 write their log to nowhere and show no bar.
    """
    main = session.world.is_main
    session.metrics = MetricsLog.open(session.run_dir / "metrics.jsonl" if main else None)
    wanted = main and session.cfg.train.tensorboard
    session.board = BoardLog.open(session.run_dir, wanted, session.progress.step)
    session.signals.install()
    session.bar = tqdm(
        total=session.cfg.train.max_steps or None,
        initial=session.progress.step,
        unit="step",
        dynamic_ncols=True,
        disable=None if main else True,
        file=sys.stderr,
    )
    try:
        yield
    finally:
        session.bar.close()
        session.metrics.close()
        session.board.close()
        session.signals.restore()
        if session.prefetch is not None:
            session.prefetch.close()


# ---------------------------------------------------------------------- the loop


def train_loop(session: Session) -> None:
    """Update, log and validate until a stop condition holds; epochs roll over in between.

    A resumed run may have ended already (killed after its final checkpoint, or resumed
    with the same limits): then it adds no step, no validation and no save.
    """
    t, progress = session.cfg.train, session.progress
    session.started = time.monotonic() - progress.elapsed
    session.window = Window()
    session.bad = BadSteps(run=progress.bad_in_a_row)
    session.stop_reason = shared_stop(session)
    session.last_eval_step = progress.step if session.stop_reason else -1
    split = session.trainer.split
    session.batches = batching.epoch_batches(split, t.batch_tokens, t.seed, progress.epoch)
    while not session.stop_reason:
        group = next_group(session)
        if group:
            update(session, group)
        else:
            next_epoch(session)


def next_group(session: Session) -> list[torch.Tensor]:
    """The micro-batches of the next update, over all ranks; [] when the epoch is done."""
    t, progress = session.cfg.train, session.progress
    return distributed.global_group(
        session.batches, progress.batch_pos, t.accum_steps, session.world
    )


def next_epoch(session: Session) -> None:
    t, progress = session.cfg.train, session.progress
    progress.epoch += 1
    progress.batch_pos = 0
    session.stop_reason = shared_stop(session)
    if not session.stop_reason:
        session.batches = batching.epoch_batches(
            session.trainer.split, t.batch_tokens, t.seed, progress.epoch
        )


def update(session: Session, group: list[torch.Tensor]) -> None:
    """One optimizer update from `group` (`next_group`), its log record and validation;
    then whether to stop. Each rank trains on its shard of the update's batches."""
    t, progress = session.cfg.train, session.progress
    lr = schedule.learning_rate(progress.step + 1, t, session.cfg.model.d_model)
    mine, batches = distributed.shard(group, session.world), None
    if session.prefetch is not None:
        batches = session.prefetch.take(mine)
        upcoming = distributed.global_group(
            session.batches, progress.batch_pos + len(group), t.accum_steps, session.world
        )
        session.prefetch.ahead(distributed.shard(upcoming, session.world))
    with distributed.world_guard(session.world, "training a step"):  # DDP all-reduces in it
        result = train_step(session.trainer, mine, lr, batches)
    progress.batch_pos += len(group)
    progress.step += 1
    progress.tokens += result.tokens
    progress.elapsed = time.monotonic() - session.started
    count(session, result)
    session.bar.update(1)
    at_log, at_eval = progress.step % t.log_every == 0, progress.step % t.eval_every == 0
    if at_log or at_eval or progress.step % session.settle_every == 0:
        settle(session)
    if at_log and session.window.tokens:
        log_train(session, lr)
    if at_eval:
        paused = time.monotonic()
        validate(session)
        # the log's tokens/s is the training loop's own: validation is left out
        session.window.t0 += time.monotonic() - paused
        session.last_eval_step = progress.step
        if t.patience and progress.evals_since_best >= t.patience:
            session.stop_reason = f"early stopping: no better BLEU in {t.patience} validations"
    reason = shared_stop(session)  # on every rank at every step: it is a collective
    session.stop_reason = session.stop_reason or reason


def log_train(session: Session, lr: float) -> None:
    record = train_record(session.progress, session.window, lr)
    session.metrics.write(record)
    session.board.write(record)
    session.bar.set_postfix(
        loss=f"{record['loss']:.3f}",
        lr=f"{lr:.2e}",
        tok_s=f"{record['tokens_per_s']:.0f}",
        refresh=False,
    )
    session.window = Window()


def validate(session: Session) -> None:
    """Score the valid split, log and print it, and save a checkpoint (best if improved).

    Rank 0 validates; the others wait for its verdict, which every rank then holds.
    """
    progress = session.progress
    verdict: tuple[bool, float, int, int] | None = None
    if session.world.is_main:
        improved = rank0_validation(session)
        verdict = (improved, progress.best_bleu, progress.best_step, progress.evals_since_best)
    shared = session.world.from_main(verdict, "rank 0's validation")
    assert shared is not None  # rank 0 always has one
    improved, progress.best_bleu, progress.best_step, progress.evals_since_best = shared
    saving.save(session, is_best=improved)


def rank0_validation(session: Session) -> bool:
    """Validate, update the best BLEU, log and print; True if the BLEU improved."""
    progress = session.progress
    result, hyps = validation(session.trainer, session.valid, session.tokenizer)
    improved = result["bleu"] > progress.best_bleu
    if improved:
        progress.best_bleu, progress.best_step = result["bleu"], progress.step
        progress.evals_since_best = 0
    else:
        progress.evals_since_best += 1
    record = {"kind": "valid", "step": progress.step, **result}
    session.metrics.write(record)
    session.board.write(record)
    session.board.translations(progress.step, session.valid.refs, hyps)
    session.bar.write(
        f"step {progress.step:>7}  valid loss {result['loss']:.3f}  ppl {result['ppl']:.2f}  "
        f"BLEU {result['bleu']:.2f}" + ("  (best)" if improved else "")
    )
    return improved


# ---------------------------------------------------------------------- the end


def finish(session: Session) -> None:
    """A stop by signal saves where it stands; otherwise the last step gets its validation.

    Then every rank's step is compared: a job whose ranks disagree is an error, not a
    checkpoint to trust.
    """
    settle(session)  # the counts a checkpoint records; an abort still due comes now
    if session.stop_signal:
        saving.save(session, is_best=False)
    elif session.last_eval_step != session.progress.step:
        validate(session)
    steps = session.world.gather(session.progress.step, "the final step")
    if len(set(steps)) > 1:
        raise TrainingError(f"the ranks stopped at different steps ({steps})")


def summarize(session: Session) -> dict:
    progress, checkpoints = session.progress, session.run_dir / "checkpoints"
    return {
        "steps": progress.step,
        "epochs": round(progress.epoch + progress.batch_pos / max(1, len(session.batches)), 2),
        "seconds": round(progress.elapsed, 1),
        "tokens": progress.tokens,
        "tokens_per_s": round(progress.tokens / max(progress.elapsed, 1e-9), 1),
        "best_bleu": progress.best_bleu,
        "best_step": progress.best_step,
        "skipped_steps": progress.skipped_steps,
        "stopped": session.stop_reason,
        "world_size": session.world.size,
        "last": str(checkpoints / "last.pt"),
        "best": str(checkpoints / "best.pt"),
    }


@torch.no_grad()
def validation(trainer: Trainer, valid: ValidSet, tokenizer: Tokenizer) -> tuple[dict, list[str]]:
    """The trainer's model on `valid`: loss, perplexity, and the BLEU and chrF of greedy
    decoding against the raw references; and the hypotheses, in the split's order."""
    model, cfg, device, precision = trainer.model, trainer.cfg, trainer.device, trainer.precision
    model.eval()
    try:
        loss = split_loss(model, valid.split, cfg, device, precision)
        sources = [valid.split.src_ids(i).tolist() for i in range(len(valid.split))]
        hyp_ids = decode_all(model, sources, runner.greedy(cfg.decode), device, precision)
        hyps = tokenizer.decode_tgt(hyp_ids)
        scores = score_texts(hyps, valid.refs)
    finally:
        model.train()
    result = {"loss": loss["nll"], "ppl": loss["ppl"]}
    return result | {"bleu": scores["bleu"], "chrf": scores["chrf"]}, hyps
