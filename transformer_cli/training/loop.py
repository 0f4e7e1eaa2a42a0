"""The training loop. It reads top to bottom: setup (and resume), the loop (updates, logs,
validations with their saves), the end (a last validation or a signal's save, the summary).
The run's state travels in one `Session`; what an update needs, in its `Trainer`.

The pieces it calls are small and testable alone: one update (step.py: batches, the
masked loss of loss.py), the learning-rate schedule (schedule.py), what the run records
(records.py), checkpoints (core/checkpoint.py) and greedy decoding for validation BLEU
(decoding/stream.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from transformer_cli import __version__
from transformer_cli.core import checkpoint, runtime
from transformer_cli.core.config import Config, TrainConfig, to_dict
from transformer_cli.core.config_file import write_resolved
from transformer_cli.core.errors import TrainingError
from transformer_cli.data import batching
from transformer_cli.data import store as cache
from transformer_cli.data.tokenizer import Tokenizer
from transformer_cli.decoding.stream import decode_all
from transformer_cli.fast import allocator
from transformer_cli.model.transformer import Transformer
from transformer_cli.training import lock, schedule
from transformer_cli.training.evaluate import score_texts
from transformer_cli.training.loss import split_loss
from transformer_cli.training.records import (
    MetricsLog,
    Progress,
    Window,
    format_summary,
    train_record,
)
from transformer_cli.training.step import (
    CompiledSteps,
    StepResult,
    Trainer,
    make_optimizer,
    train_step,
)


@dataclass
class StopSignals:
    """Ctrl-C (or SIGTERM) asks to stop at the next step boundary; a second one kills.

    `received` holds the signals caught while installed; `restore` puts back the handlers
    that were there before `install`.
    """

    received: list[int] = dataclasses.field(default_factory=list)
    previous: dict = dataclasses.field(default_factory=dict)

    def install(self) -> None:
        self.previous = {s: signal.signal(s, self._caught) for s in (signal.SIGINT, signal.SIGTERM)}

    def _caught(self, signum: int, _frame: object) -> None:
        self.received.append(signum)
        signal.signal(signum, signal.SIG_DFL)  # the next one kills

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


@dataclass
class Session:
    """One `tfx train` run: what setup built, and where the loop stands."""

    run_dir: Path
    tokenizer: Tokenizer
    model: Transformer  # the weights saved and validated (the trainer may step a compiled view)
    trainer: Trainer
    valid: cache.EncodedSplit
    valid_refs: list[str]
    progress: Progress
    signals: StopSignals = dataclasses.field(default_factory=StopSignals)
    metrics: MetricsLog = dataclasses.field(init=False)  # set by `opened`, for the loop
    bar: tqdm = dataclasses.field(init=False)  # set by `opened`, for the loop
    window: Window = dataclasses.field(default_factory=Window)
    started: float = 0.0  # time.monotonic() at which training time would have been 0
    batches: list[torch.Tensor] = dataclasses.field(default_factory=list)  # this epoch's
    stop_reason: str = ""
    last_eval_step: int = -1

    @property
    def cfg(self) -> Config:
        return self.trainer.cfg


def run(cfg: Config, resume: bool = False) -> dict:
    """Train as configured; return a summary. Everything is written under cfg.run_dir."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with lock.RunLock(run_dir):
        checkpoint.remove_partial_writes(run_dir)  # litter of a save that was killed
        return _train(cfg, run_dir, resume)


def _train(cfg: Config, run_dir: Path, resume: bool) -> dict:
    session = setup(cfg, run_dir, resume)
    with opened(session):
        train_loop(session)
        finish(session)
    summary = summarize(session)
    print(format_summary(summary))
    return summary


# ---------------------------------------------------------------------- setup


def setup(cfg: Config, run_dir: Path, resume: bool) -> Session:
    """Build the run: device, data, model, optimizer; restore a checkpoint when resuming."""
    t = cfg.train
    cache.load_meta(run_dir)  # a clear error if `tfx prepare` has not run
    tokenizer = Tokenizer.load(run_dir)
    model_cfg = dataclasses.replace(
        cfg.model, src_vocab=tokenizer.src_vocab_size, tgt_vocab=tokenizer.tgt_vocab_size
    )
    cfg = dataclasses.replace(cfg, model=model_cfg)
    device = runtime.pick_device(t.device)
    precision = runtime.resolve_precision(t.precision, device)
    threads = runtime.set_threads(t.threads)
    if device.type == "cpu":
        allocator.tune_cpu_memory()  # fast path: glibc kept from unmapping every step
    runtime.seed_everything(t.seed)

    train_split = cache.load_split(run_dir, "train")
    valid_split = cache.load_split(run_dir, "valid")
    valid_refs = cache.load_text(run_dir, "valid", "tgt")
    model = Transformer(cfg.model).to(device)
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    trainer = Trainer(model, optimizer, scaler, train_split, cfg, device, precision)
    session = Session(run_dir, tokenizer, model, trainer, valid_split, valid_refs, Progress())

    refuse_a_second_run(run_dir, resume)
    if resume:
        restore(session)
    write_resolved(cfg, run_dir)
    if t.compile:
        trainer.model = CompiledSteps(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"training {n_params:,} parameters on "
        f"{runtime.describe(device, precision, threads, allocator.active())}; "
        f"{len(train_split):,} training pairs; run dir {run_dir}",
        file=sys.stderr,
    )
    return session


def refuse_a_second_run(run_dir: Path, resume: bool) -> None:
    """A fresh run into a run_dir that already holds checkpoints is an error."""
    if not resume and checkpoint.step_checkpoints(run_dir):
        raise TrainingError(
            f"{run_dir} already holds a training run ({checkpoint.checkpoints_dir(run_dir)}); "
            "continue it with --resume, or train into another run_dir"
        )


def restore(session: Session) -> None:
    """Load the latest good checkpoint: weights, optimizer, scaler, progress and RNG."""
    path, state = checkpoint.find_resumable(session.run_dir)
    trainer = session.trainer
    session.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scaler is not None and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    session.progress = Progress(**state["progress"])
    checkpoint.restore_rng(state["rng"])
    print(f"resuming from {path} at step {session.progress.step}", file=sys.stderr)


@contextlib.contextmanager
def opened(session: Session) -> Iterator[None]:
    """The metrics log, the stop signals and the progress bar, for as long as the loop runs."""
    session.metrics = MetricsLog.open(session.run_dir / "metrics.jsonl")
    session.signals.install()
    session.bar = tqdm(
        total=session.cfg.train.max_steps or None,
        initial=session.progress.step,
        unit="step",
        dynamic_ncols=True,
        disable=None,
        file=sys.stderr,
    )
    try:
        yield
    finally:
        session.bar.close()
        session.metrics.close()
        session.signals.restore()


# ---------------------------------------------------------------------- the loop


def train_loop(session: Session) -> None:
    """Update, log and validate until a stop condition holds; epochs roll over in between.

    A resumed run may have ended already (killed after its final checkpoint, or resumed
    with the same limits): then it adds no step, no validation and no save.
    """
    t, progress = session.cfg.train, session.progress
    session.started = time.monotonic() - progress.elapsed
    session.window = Window()
    session.stop_reason = stop_condition(progress, t, session.signals.received)
    session.last_eval_step = progress.step if session.stop_reason else -1
    split = session.trainer.split
    session.batches = batching.epoch_batches(split, t.batch_tokens, t.seed, progress.epoch)
    while not session.stop_reason:
        if progress.batch_pos < len(session.batches):
            update(session)
        else:
            next_epoch(session)


def next_epoch(session: Session) -> None:
    t, progress = session.cfg.train, session.progress
    progress.epoch += 1
    progress.batch_pos = 0
    session.stop_reason = stop_condition(progress, t, session.signals.received)
    if not session.stop_reason:
        session.batches = batching.epoch_batches(
            session.trainer.split, t.batch_tokens, t.seed, progress.epoch
        )


def update(session: Session) -> None:
    """One optimizer update from the next batches, its log record and validation; then
    whether to stop."""
    t, progress = session.cfg.train, session.progress
    group = session.batches[progress.batch_pos : progress.batch_pos + t.accum_steps]
    lr = schedule.learning_rate(progress.step + 1, t, session.cfg.model.d_model)
    result = train_step(session.trainer, group, lr)
    progress.batch_pos += len(group)
    progress.step += 1
    progress.tokens += result.tokens
    progress.elapsed = time.monotonic() - session.started
    count(session, result)
    session.bar.update(1)
    if progress.step % t.log_every == 0 and session.window.tokens:
        log_train(session, lr)
    if progress.step % t.eval_every == 0:
        paused = time.monotonic()
        validate(session)
        # the log's tokens/s is the training loop's own: validation is left out
        session.window.t0 += time.monotonic() - paused
        session.last_eval_step = progress.step
        if t.patience and progress.evals_since_best >= t.patience:
            session.stop_reason = f"early stopping: no better BLEU in {t.patience} validations"
    session.stop_reason = session.stop_reason or stop_condition(
        progress, t, session.signals.received
    )


def count(session: Session, result: StepResult) -> None:
    """Add an applied update to the window; count a skipped one, aborting after too many."""
    progress, window = session.progress, session.window
    if result.applied:
        progress.bad_in_a_row = 0
        window.loss += result.loss
        window.nll += result.nll
        window.tokens += result.tokens
        return
    progress.skipped_steps += 1
    progress.bad_in_a_row += 1
    limit = session.cfg.train.max_bad_steps
    if progress.bad_in_a_row >= limit:
        raise TrainingError(
            f"{progress.bad_in_a_row} non-finite updates (loss or gradients) in a row at step "
            f"{progress.step} (train.max_bad_steps={limit}); the last "
            f"good checkpoint in {session.run_dir / 'checkpoints'} is intact. Try a lower "
            "learning rate, train.clip_norm, or train.precision: fp32"
        )


def log_train(session: Session, lr: float) -> None:
    record = train_record(session.progress, session.window, lr)
    session.metrics.write(record)
    session.bar.set_postfix(
        loss=f"{record['loss']:.3f}",
        lr=f"{lr:.2e}",
        tok_s=f"{record['tokens_per_s']:.0f}",
        refresh=False,
    )
    session.window = Window()


def validate(session: Session) -> None:
    """Score the valid split, log and print it, and save a checkpoint (best if improved)."""
    trainer, progress = session.trainer, session.progress
    result = validation(
        session.model,
        session.valid,
        session.valid_refs,
        session.tokenizer,
        trainer.cfg,
        trainer.device,
        trainer.precision,
    )
    improved = result["bleu"] > progress.best_bleu
    if improved:
        progress.best_bleu, progress.best_step = result["bleu"], progress.step
        progress.evals_since_best = 0
    else:
        progress.evals_since_best += 1
    session.metrics.write({"kind": "valid", "step": progress.step, **result})
    session.bar.write(
        f"step {progress.step:>7}  valid loss {result['loss']:.3f}  ppl {result['ppl']:.2f}  "
        f"BLEU {result['bleu']:.2f}" + ("  (best)" if improved else "")
    )
    save(session, is_best=improved)


def save(session: Session, is_best: bool) -> Path:
    trainer = session.trainer
    state = {
        "tfx_version": __version__,
        "config": to_dict(trainer.cfg),
        "tokenizer": session.tokenizer.to_bytes(),
        "model": session.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "progress": dataclasses.asdict(session.progress),
        "rng": checkpoint.capture_rng(),
    }
    keep = trainer.cfg.train.keep_last
    return checkpoint.save_step(session.run_dir, state, session.progress.step, keep, best=is_best)


# ---------------------------------------------------------------------- the end


def finish(session: Session) -> None:
    """A stop by signal saves where it stands; otherwise the last step gets its validation."""
    if session.signals.received:
        save(session, is_best=False)
    elif session.last_eval_step != session.progress.step:
        validate(session)


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
        "last": str(checkpoints / "last.pt"),
        "best": str(checkpoints / "best.pt"),
    }


def stop_condition(progress: Progress, t: TrainConfig, stop_signal: list[int]) -> str:
    if stop_signal:
        name = signal.Signals(stop_signal[0]).name
        return f"stopped by {name}; continue with --resume"
    if t.max_steps and progress.step >= t.max_steps:
        return f"reached train.max_steps={t.max_steps}"
    if t.max_epochs and progress.epoch >= t.max_epochs:
        return f"reached train.max_epochs={t.max_epochs}"
    if t.max_minutes and progress.elapsed >= t.max_minutes * 60:
        return f"reached train.max_minutes={t.max_minutes:g}"
    return ""


@torch.no_grad()
def validation(model, split, refs, tokenizer, cfg: Config, device, precision) -> dict:
    """Validation loss, perplexity, and greedy-decoding BLEU against the raw references."""
    model.eval()
    try:
        loss = split_loss(model, split, cfg, device, precision)
        sources = [split.src_ids(i).tolist() for i in range(len(split))]
        hyp_ids = decode_all(model, sources, cfg.decode, device, precision, beam=1)
        hyps = tokenizer.decode_tgt(hyp_ids)
        scores = score_texts(hyps, refs)
    finally:
        model.train()
    return {"loss": loss["nll"], "ppl": loss["ppl"], "bleu": scores["bleu"], "chrf": scores["chrf"]}
