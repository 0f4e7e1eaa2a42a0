"""What the model views of `tfx inspect` look at: a model and one real batch.

A config gives a fresh model, initialised as training initialises it (seeded with
`train.seed`), and a batch from the config's prepared cache. A checkpoint gives the
trained model, and a batch from the cache of the config given with it, or else of the
checkpoint's own run directory. The model is on the CPU in float32 and in eval mode
(no dropout), so every number is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transformer_cli.core.config import Config
from transformer_cli.core.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from transformer_cli.data.batching import Batch
    from transformer_cli.data.tokenizer import Tokenizer
    from transformer_cli.model.transformer import Transformer


@dataclass
class Subject:
    """A model, the config it was built from, one real batch, and where they came from."""

    model: Transformer  # CPU, float32, eval mode
    cfg: Config
    batch: Batch
    source: str  # e.g. "a fresh model of configs/toy.yaml (seed 1)" or "CKPT (step 400)"


def fresh_model(cfg: Config) -> Transformer:
    """A model as `tfx train` builds one: vocabulary sizes from the prepared tokenizer,
    `train.seed`, then `Transformer(cfg.model)`."""
    import dataclasses

    import torch

    from transformer_cli.data.tokenizer import Tokenizer
    from transformer_cli.model.transformer import Transformer

    tokenizer = Tokenizer.load(cfg.run_dir)
    shape = dataclasses.replace(
        cfg.model, src_vocab=tokenizer.src_vocab_size, tgt_vocab=tokenizer.tgt_vocab_size
    )
    torch.manual_seed(cfg.train.seed)
    return Transformer(shape).eval()


def subject(
    cfg: Config | None,
    checkpoint: Path | None,
    split: str = "train",
    index: int = 0,
) -> Subject:
    """The model (fresh from `cfg`, or trained from `checkpoint`) and batch `index` of `split`.

    The batch is built as `tfx inspect batch` builds it, which is how training and
    evaluation build theirs. ConfigError if neither is given, or if the checkpoint's
    tokenizer is not the one the cache was prepared with.
    """
    from transformer_cli.data.tokenizer import Tokenizer
    from transformer_cli.inspect.batch import the_batch

    if checkpoint is None:
        if cfg is None:
            raise ConfigError("give --config (a fresh model) or --checkpoint (a trained one)")
        batch, _ = the_batch(cfg, split, index, 0)
        return Subject(fresh_model(cfg), cfg, batch, f"a fresh model (seed {cfg.train.seed})")
    model, tokenizer, trained_cfg, step = load_trained(checkpoint)
    data_cfg = cfg or trained_cfg
    if Tokenizer.load(data_cfg.run_dir).fingerprint() != tokenizer.fingerprint():
        raise CheckpointError(
            f"{checkpoint}: its tokenizer is not the one {data_cfg.run_dir} was prepared "
            "with; give --config the config it was trained with"
        )
    batch, _ = the_batch(data_cfg, split, index, 0)
    return Subject(model, trained_cfg, batch, f"{checkpoint} (step {step})")


def load_trained(checkpoint: Path) -> tuple[Transformer, Tokenizer, Config, int]:
    """(model on the CPU in float32 and eval mode, tokenizer, config, step) of a checkpoint.

    The step is 0 where the checkpoint records none (an average of checkpoints).
    """
    import torch

    from transformer_cli.core.checkpoint import load_state
    from transformer_cli.decoding.loading import model_from_state

    state = load_state(checkpoint)
    model, tokenizer, cfg = model_from_state(state, checkpoint, torch.device("cpu"))
    progress = state.get("progress")
    step = int(progress["step"]) if isinstance(progress, dict) and "step" in progress else 0
    return model.float().eval(), tokenizer, cfg, step
