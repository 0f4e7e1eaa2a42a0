"""`tfx inspect batch`: one real batch, its target shift and every mask, as training
builds them (batching, masks and the loss of the training code itself)."""

from __future__ import annotations

from transformer_cli.core.config import Config
from transformer_cli.core.errors import ConfigError, DataError


def _bits(mask) -> list:
    """A bool tensor as nested lists of 0/1."""
    return mask.int().tolist()


def batch_view(cfg, split: str = "train", index: int = 0, rows: int = 4, epoch: int = 0) -> dict:
    """One batch exactly as training (or evaluation) builds it, with its masks.

    `rows` rows are shown, spread from the batch's first to its last (a batch is
    length-sorted, so shortest to longest); `the_batch` says which batch it is.
    """
    import torch

    from transformer_cli.data.tokenizer import Tokenizer
    from transformer_cli.model import masks

    if rows < 1:
        raise ConfigError(f"--rows must be >= 1, got {rows}")
    batch, n_batches = the_batch(cfg, split, index, epoch)
    tokenizer = Tokenizer.load(cfg.run_dir)
    size = len(batch)
    shown = _spread(size, rows)
    pick = torch.tensor(shown)

    src_mask = masks.padding_mask(batch.src)  # (B, 1, 1, S)
    look_ahead = masks.causal_mask(batch.tgt_in.size(1))  # (T, T)
    tgt_pad = masks.padding_mask(batch.tgt_in)  # (B, 1, 1, T)
    dec_mask = masks.decoder_mask(batch.tgt_in)  # (B, 1, T, T)

    tgt_out = batch.tgt_out[pick]  # (R, T)
    loss_mask = _loss_mask(tgt_out, cfg.train.label_smoothing)  # (R, T)
    src_side = _source_side(tokenizer)
    dec_pad = tgt_pad[pick, 0, 0]  # (R, T)
    return {
        "split": split,
        "epoch": epoch if split == "train" else None,
        "index": index,
        "batches": n_batches,
        "batch_size": size,
        "shown_rows": shown,
        "sentences": batch.indices[pick].tolist(),
        "n_tokens": batch.n_tokens,
        "padded_target_slots": batch.tgt_out.numel(),
        "shapes": {
            "src": list(batch.src.shape),
            "tgt_in": list(batch.tgt_in.shape),
            "padding_mask(src)": list(src_mask.shape),
            "causal_mask(T)": list(look_ahead.shape),
            "decoder_mask(tgt_in)": list(dec_mask.shape),
        },
        "src_ids": batch.src[pick].tolist(),
        "tgt_in_ids": batch.tgt_in[pick].tolist(),
        "tgt_out_ids": tgt_out.tolist(),
        "src_pieces": [src_side.tgt_pieces(r) for r in batch.src[pick]],
        "tgt_in_pieces": [tokenizer.tgt_pieces(r) for r in batch.tgt_in[pick]],
        "tgt_out_pieces": [tokenizer.tgt_pieces(r) for r in tgt_out],
        "source_padding": _bits(src_mask[pick, 0, 0]),
        "look_ahead": _bits(look_ahead),
        "target_padding": _bits(dec_pad),
        "decoder": _bits(dec_mask[pick, 0]),
        "loss": _bits(loss_mask),
        # the shown row with the most target padding: where the union is easiest to see
        "decoder_row": int((~dec_pad).sum(-1).argmax()),
    }


def the_batch(cfg: Config, split: str, index: int, epoch: int):
    """(batch `index` of the split, collated as training or evaluation does, batch count).

    `train` batches are `batching.epoch_batches(...)[index]` of `epoch`, collated as the
    training loop does; `valid`/`test` batches follow `batching.eval_order`, truncated
    as `loss.split_loss` truncates them.
    """
    from transformer_cli.data import batching, store

    if split not in store.SPLITS:
        raise ConfigError(f"--split {split}: choose one of {', '.join(store.SPLITS)}")
    data = store.load_split(cfg.run_dir, split)
    if split == "train":
        groups = batching.epoch_batches(data, cfg.train.batch_tokens, cfg.train.seed, epoch)
        truncate = 0
    else:
        truncate = batching.eval_truncation(cfg.model.max_positions)  # as split_loss cuts
        groups = batching.eval_order(data, cfg.train.batch_tokens, truncate=truncate)
    if not groups:
        raise DataError(f"the {split} split of {cfg.run_dir} is empty")
    if not 0 <= index < len(groups):
        raise ConfigError(
            f"--index {index}: the {split} split has {len(groups)} batches (0..{len(groups) - 1})"
        )
    return batching.collate(data, groups[index], truncate), len(groups)


def _source_side(tokenizer):
    """A tokenizer whose target pieces are the source's (itself when joint)."""
    from transformer_cli.data.tokenizer import JOINT_FILE, SRC_FILE, Tokenizer

    if tokenizer.joint:
        return tokenizer
    return Tokenizer.from_bytes({JOINT_FILE: tokenizer.to_bytes()[SRC_FILE]})


def _spread(size: int, rows: int) -> list[int]:
    """`rows` row numbers spread evenly from 0 to size - 1 (all of them if fewer)."""
    n = min(rows, size)
    return sorted({round(i * (size - 1) / max(1, n - 1)) for i in range(n)})


def _loss_mask(tgt_out, label_smoothing: float):
    """The positions whose logits get a gradient from the training loss itself: (R, T)."""
    import torch

    from transformer_cli.training.loss import masked_cross_entropy

    # V only needs to exceed the largest id
    logits = torch.zeros(*tgt_out.shape, int(tgt_out.max()) + 1, requires_grad=True)
    loss = masked_cross_entropy(logits, tgt_out, label_smoothing).loss
    (grad,) = torch.autograd.grad(loss, logits)
    return grad.abs().sum(-1) > 0


def _grid_lines(grid: list, row_labels: list[str], indent: str = "  ") -> list[str]:
    """A 0/1 matrix as text, with column indices on top and labels on the left."""
    cols = len(grid[0]) if grid else 0
    cell = len(str(max(cols - 1, 0))) + 1
    pad = max((len(label) for label in row_labels), default=0)
    lines = [indent + " " * pad + "".join(f"{j:>{cell}}" for j in range(cols))]
    for label, row in zip(row_labels, grid, strict=True):
        lines.append(indent + f"{label:<{pad}}" + "".join(f"{v:>{cell}}" for v in row))
    return lines


def format_batch(view: dict) -> str:
    """The batch view as the text `tfx inspect batch` prints."""
    shown = view["shown_rows"]
    if view["split"] == "train":
        where = f"epoch {view['epoch']}, as the training loop sees it"
    else:
        where = "as validation and evaluation see it"
    shapes = view["shapes"]
    slots = view["padded_target_slots"]
    out = [
        f"{view['split']} batch {view['index']} of {view['batches']} ({where}): "
        f"{view['batch_size']} sentences, src {tuple(shapes['src'])}, "
        f"tgt_in/tgt_out {tuple(shapes['tgt_in'])}",
        f"batch-max padding: every row is padded to the longest in this batch; "
        f"{view['n_tokens']} of {slots} target slots are real ({view['n_tokens'] / slots:.0%}); "
        f"showing rows {', '.join(map(str, shown))} (of 0..{view['batch_size'] - 1})",
    ]
    if view["n_tokens"] == slots:
        out.append(
            "(length bucketing gave every target here the same length, so there is no "
            "target padding; --split valid batches, sorted by max(source, target) "
            "length, have some)"
        )
    out.append("")
    for k, row in enumerate(shown):
        out.append(f"row {row} (sentence {view['sentences'][k]} of the split)")
        out.append("  source: " + " ".join(view["src_pieces"][k]))
        out.append("    t  decoder input (tgt_in)   decoder target (tgt_out)")
        for t, (a, b) in enumerate(
            zip(view["tgt_in_pieces"][k], view["tgt_out_pieces"][k], strict=True)
        ):
            out.append(f"  {t:>3}  {a:<24} {b}")
        out.append("")
    out += _format_masks(view)
    return "\n".join(out)


def _format_masks(view: dict) -> list[str]:
    """The shift, then every mask of the batch view as grids of 0/1."""
    shown, names = view["shown_rows"], [f"row {r}" for r in view["shown_rows"]]
    shapes = view["shapes"]
    out = []
    out.append(
        "the shift: tgt_in = <s> y1..yn, tgt_out = y1..yn </s>; position t sees "
        "tgt_in[0..t] and must predict tgt_out[t], the next piece"
    )
    out.append("")
    out.append(
        f"source padding mask  masks.padding_mask(src) -> {shapes['padding_mask(src)']}"
        ", shown [:, 0, 0, :]; 1 = real key (encoder and cross-attention)"
    )
    out += _grid_lines(view["source_padding"], names)
    out.append("")
    out.append(
        f"look-ahead mask  masks.causal_mask(T) -> {shapes['causal_mask(T)']}; "
        "row = query i, column = key j, 1 iff j <= i"
    )
    t_len = len(view["look_ahead"])
    out += _grid_lines(view["look_ahead"], [f"i={i}" for i in range(t_len)])
    out.append("")
    k = view["decoder_row"]
    out.append(
        f"decoder self-attention mask  masks.decoder_mask(tgt_in) -> "
        f"{shapes['decoder_mask(tgt_in)']}, row {shown[k]} (--json has every row)"
    )
    out.append(
        "  = look-ahead AND target padding: the 0s are the union of the upper triangle "
        "(future) and the right-hand columns of <pad> keys"
    )
    out.append("  target padding of this row: " + " ".join(map(str, view["target_padding"][k])))
    out += _grid_lines(
        view["decoder"][k], [f"{i:>3} {p[:12]}" for i, p in enumerate(view["tgt_in_pieces"][k])]
    )
    out.append("")
    out.append(
        "loss mask  the positions loss.masked_cross_entropy counts (tgt_out != <pad>), "
        "read off its gradient"
    )
    out += _grid_lines(view["loss"], names)
    return out
