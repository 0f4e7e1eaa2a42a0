"""The training loop. It reads top to bottom: setup, resume, then steps, validations, saves.

The pieces it calls are small and testable alone: batches (batching.py), the masked
loss (loss.py), the learning-rate schedule (schedule.py), checkpoints (checkpoint.py)
and greedy decoding for validation BLEU (search.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from transformer_cli import __version__
from transformer_cli.core import checkpoint, runtime
from transformer_cli.core.config import Config, to_dict
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
from transformer_cli.training.loss import batch_loss, split_loss


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so that --resume continues exactly."""

    step: int = 0  # optimizer updates done
    epoch: int = 0  # current epoch (0-based)
    batch_pos: int = 0  # batches of this epoch already consumed
    elapsed: float = 0.0  # training seconds so far, across resumes
    tokens: int = 0  # real target tokens trained on
    best_bleu: float = -1.0
    best_step: int = 0
    evals_since_best: int = 0
    skipped_steps: int = 0  # updates skipped for non-finite loss or gradients
    bad_in_a_row: int = 0


def run(cfg: Config, resume: bool = False) -> dict:
    """Train as configured; return a summary. Everything is written under cfg.run_dir."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with lock.RunLock(run_dir):
        checkpoint.remove_partial_writes(run_dir)  # litter of a save that was killed
        return _train(cfg, run_dir, resume)


def _train(cfg: Config, run_dir: Path, resume: bool) -> dict:
    t = cfg.train
    # ------------------------------------------------------------------ setup
    cache.load_meta(run_dir)  # a clear error if `tfx prepare` has not run
    tokenizer = Tokenizer.load(run_dir)
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(
            cfg.model, src_vocab=tokenizer.src_vocab_size, tgt_vocab=tokenizer.tgt_vocab_size
        ),
    )
    device = runtime.pick_device(t.device)
    precision = runtime.resolve_precision(t.precision, device)
    threads = runtime.set_threads(t.threads)
    if device.type == "cpu":
        allocator.tune_cpu_memory()
    runtime.seed_everything(t.seed)

    train_split = cache.load_split(run_dir, "train")
    valid_split = cache.load_split(run_dir, "valid")
    valid_refs = cache.load_text(run_dir, "valid", "tgt")

    model = Transformer(cfg.model).to(device)
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    progress = Progress()

    if not resume and checkpoint.step_checkpoints(run_dir):
        raise TrainingError(
            f"{run_dir} already holds a training run ({checkpoint.checkpoints_dir(run_dir)}); "
            "continue it with --resume, or train into another run_dir"
        )
    if resume:
        path, state = checkpoint.find_resumable(run_dir)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        progress = Progress(**state["progress"])
        checkpoint.restore_rng(state["rng"])
        print(f"resuming from {path} at step {progress.step}", file=sys.stderr)
    write_resolved(cfg, run_dir)
    step_model = CompiledSteps(model) if t.compile else model

    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"training {n_params:,} parameters on "
        f"{runtime.describe(device, precision, threads, allocator.active())}; "
        f"{len(train_split):,} training pairs; run dir {run_dir}",
        file=sys.stderr,
    )

    def save(is_best: bool) -> Path:
        state = {
            "tfx_version": __version__,
            "config": to_dict(cfg),
            "tokenizer": tokenizer.to_bytes(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "progress": dataclasses.asdict(progress),
            "rng": checkpoint.capture_rng(),
        }
        return checkpoint.save_step(run_dir, state, progress.step, t.keep_last, best=is_best)

    def validate() -> dict:
        result = validation(model, valid_split, valid_refs, tokenizer, cfg, device, precision)
        improved = result["bleu"] > progress.best_bleu
        if improved:
            progress.best_bleu, progress.best_step = result["bleu"], progress.step
            progress.evals_since_best = 0
        else:
            progress.evals_since_best += 1
        log({"kind": "valid", "step": progress.step, **result})
        bar.write(
            f"step {progress.step:>7}  valid loss {result['loss']:.3f}  ppl {result['ppl']:.2f}  "
            f"BLEU {result['bleu']:.2f}" + ("  (best)" if improved else "")
        )
        save(is_best=improved)
        return result

    metrics_path = run_dir / "metrics.jsonl"
    drop_partial_record(metrics_path)
    metrics_file = metrics_path.open("a", encoding="utf-8")

    def log(record: dict) -> None:
        try:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
        except OSError as e:  # a full disk usually shows here first, before a checkpoint save
            raise TrainingError(checkpoint.write_failure(e, metrics_path)) from None

    # Ctrl-C (or SIGTERM) stops at the next step boundary with a checkpoint; a second one kills.
    stop_signal: list[int] = []

    def on_signal(signum, _frame):
        stop_signal.append(signum)
        signal.signal(signum, signal.SIG_DFL)

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    # ------------------------------------------------------------------ the loop
    bar = tqdm(
        total=t.max_steps or None,
        initial=progress.step,
        unit="step",
        dynamic_ncols=True,
        disable=None,
        file=sys.stderr,
    )
    started = time.monotonic() - progress.elapsed
    window = {"loss": torch.zeros(()), "nll": torch.zeros(()), "tokens": 0, "t0": time.monotonic()}
    # A resumed run may have ended already (killed after its final checkpoint, or resumed
    # with the same limits): then it must not add a step, a validation or a save.
    stop_reason = stop_condition(progress, t, stop_signal)
    last_eval_step = progress.step if stop_reason else -1
    try:
        batches = batching.epoch_batches(train_split, t.batch_tokens, t.seed, progress.epoch)
        while not stop_reason:
            while progress.batch_pos < len(batches):
                group = batches[progress.batch_pos : progress.batch_pos + t.accum_steps]
                lr = schedule.learning_rate(progress.step + 1, t, cfg.model.d_model)
                loss_sum, nll_sum, n_tokens, finite = train_step(
                    step_model, optimizer, scaler, train_split, group, cfg, device, precision, lr
                )
                progress.batch_pos += len(group)
                progress.step += 1
                progress.tokens += n_tokens
                progress.elapsed = time.monotonic() - started
                if finite:
                    progress.bad_in_a_row = 0
                    window["loss"] += loss_sum
                    window["nll"] += nll_sum
                    window["tokens"] += n_tokens
                else:
                    progress.skipped_steps += 1
                    progress.bad_in_a_row += 1
                    if progress.bad_in_a_row >= t.max_bad_steps:
                        raise TrainingError(
                            f"{progress.bad_in_a_row} non-finite losses in a row at step "
                            f"{progress.step} (train.max_bad_steps={t.max_bad_steps}); the last "
                            f"good checkpoint in {run_dir / 'checkpoints'} is intact. Try a lower "
                            "learning rate, train.clip_norm, or train.precision: fp32"
                        )
                bar.update(1)

                if progress.step % t.log_every == 0 and window["tokens"]:
                    record = train_record(progress, window, lr)
                    log(record)
                    bar.set_postfix(
                        loss=f"{record['loss']:.3f}",
                        lr=f"{lr:.2e}",
                        tok_s=f"{record['tokens_per_s']:.0f}",
                        refresh=False,
                    )
                    window.update(
                        loss=torch.zeros(()), nll=torch.zeros(()), tokens=0, t0=time.monotonic()
                    )

                if progress.step % t.eval_every == 0:
                    paused = time.monotonic()
                    validate()
                    # the log's tokens/s is the training loop's own: validation is left out
                    window["t0"] += time.monotonic() - paused
                    last_eval_step = progress.step
                    if t.patience and progress.evals_since_best >= t.patience:
                        stop_reason = f"early stopping: no better BLEU in {t.patience} validations"
                stop_reason = stop_reason or stop_condition(progress, t, stop_signal)
                if stop_reason:
                    break
            else:
                progress.epoch += 1
                progress.batch_pos = 0
                stop_reason = stop_condition(progress, t, stop_signal)
                if not stop_reason:
                    batches = batching.epoch_batches(
                        train_split, t.batch_tokens, t.seed, progress.epoch
                    )
        # ------------------------------------------------------------------ the end
        if stop_signal:
            save(is_best=False)
        elif last_eval_step != progress.step:
            validate()
    finally:
        bar.close()
        with contextlib.suppress(OSError):  # a failed write was reported already
            metrics_file.close()
        for s, handler in old_handlers.items():
            signal.signal(s, handler)

    summary = {
        "steps": progress.step,
        "epochs": round(progress.epoch + progress.batch_pos / max(1, len(batches)), 2),
        "seconds": round(progress.elapsed, 1),
        "tokens": progress.tokens,
        "tokens_per_s": round(progress.tokens / max(progress.elapsed, 1e-9), 1),
        "best_bleu": progress.best_bleu,
        "best_step": progress.best_step,
        "skipped_steps": progress.skipped_steps,
        "stopped": stop_reason,
        "last": str(run_dir / "checkpoints" / "last.pt"),
        "best": str(run_dir / "checkpoints" / "best.pt"),
    }
    print(format_summary(summary))
    return summary


def drop_partial_record(path: Path) -> None:
    """Cut a last line left without its newline (a write that failed on a full disk).

    Appending after it would glue the next record onto the fragment, and the log would
    no longer parse.
    """
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, 2)
            start = max(0, size - (1 << 16))  # records are far shorter than this
            f.seek(start)
            tail = f.read()
            if tail and not tail.endswith(b"\n") and (b"\n" in tail or start == 0):
                f.truncate(start + tail.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


def stop_condition(progress: Progress, t, stop_signal: list[int]) -> str:
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


class CompiledSteps:
    """The three calls a training step makes, each through torch.compile.

    `torch.compile(model)` would compile `forward` only, which the step never calls: it
    encodes, decodes to hidden states, and projects just the real positions.
    """

    def __init__(self, model: Transformer) -> None:
        self.encode = torch.compile(model.encode, dynamic=True)
        self.decode_hidden = torch.compile(model.decode_hidden, dynamic=True)
        self.logits = torch.compile(model.logits, dynamic=True)
        self.out_proj = model.out_proj  # the fused loss projects in chunks itself
        self.parameters = model.parameters


def make_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device):
    """Adam(0.9, 0.98, eps 1e-9) as in the paper, or AdamW; fused where torch has it."""
    t = cfg.train
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    kwargs = dict(lr=0.0, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay)
    try:
        return cls(model.parameters(), fused=device.type in ("cuda", "cpu"), **kwargs)
    except (RuntimeError, TypeError):
        return cls(model.parameters(), foreach=True, **kwargs)


def train_step(model, optimizer, scaler, split, group, cfg: Config, device, precision, lr):
    """One update from `group` (accum_steps micro-batches): returns sums and whether it was applied.

    The loss of every micro-batch is a sum over its real tokens divided by the real tokens
    of the whole group, so accumulation gives exactly the gradient of one big batch.
    """
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    batches = [batching.collate(split, indices) for indices in group]
    n_tokens = sum(b.n_tokens for b in batches)
    loss_sum = torch.zeros((), device=device)
    nll_sum = torch.zeros((), device=device)
    for batch in batches:
        parts = batch_loss(
            model, batch, cfg.train.label_smoothing, device, precision, cfg.train.fused_loss
        )
        loss = parts.loss / n_tokens
        (scaler.scale(loss) if scaler is not None else loss).backward()
        loss_sum += parts.loss.detach()
        nll_sum += parts.nll.detach()
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, never the scaled ones
    params = [p for p in model.parameters() if p.grad is not None]
    if cfg.train.clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_norm)
    # one host sync per update: the price of counting skipped steps exactly
    finite = bool(torch.isfinite(loss_sum))
    if scaler is not None:
        scale_before = scaler.get_scale()
        scaler.step(optimizer)  # skips the update itself when gradients overflowed
        scaler.update()
        finite = finite and scaler.get_scale() >= scale_before
    elif finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum.cpu(), nll_sum.cpu(), n_tokens, finite


def train_record(progress: Progress, window: dict, lr: float) -> dict:
    tokens = window["tokens"]
    nll = float(window["nll"]) / tokens
    return {
        "kind": "train",
        "step": progress.step,
        "epoch": progress.epoch,
        "loss": float(window["loss"]) / tokens,
        "nll": nll,
        "ppl": math.exp(min(nll, 50.0)),
        "lr": lr,
        "tokens_per_s": tokens / max(time.monotonic() - window["t0"], 1e-9),
        "elapsed": round(progress.elapsed, 2),
        "skipped_steps": progress.skipped_steps,
    }


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


def format_summary(s: dict) -> str:
    best = f"{s['best_bleu']:.2f} (step {s['best_step']})" if s["best_bleu"] >= 0 else "n/a"
    lines = [
        f"done: {s['stopped'] or 'finished'}",
        f"  steps {s['steps']}, epochs {s['epochs']}, {s['seconds']} s, "
        f"{s['tokens_per_s']:.0f} target tokens/s",
        f"  best valid BLEU {best}; skipped steps {s['skipped_steps']}",
        f"  checkpoints: {s['last']} (last), {s['best']} (best)",
    ]
    return "\n".join(lines)
