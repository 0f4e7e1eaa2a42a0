"""`tfx export CHECKPOINT --to ctranslate2 OUT_DIR`: the model in CTranslate2's format.

OUT_DIR is written beside and swapped in whole (core/outdir.py); its `tfx_export.json`
names the checkpoint, holds its config and lists every file of the export.

Built with CTranslate2's own spec API (`ctranslate2.specs.TransformerSpec`, validated,
optimised for the chosen quantization and saved by its `Converter`), so CTranslate2
checks the layout itself. What has to match tfx exactly, and how:

- norm order: `pre_norm` as the config's `model.norm`; pre-norm stacks have their final
  LayerNorm, post-norm ones none; LayerNorm epsilon 1e-5 (torch's default, tfx's);
- the embedding scale sqrt(d_model) (CTranslate2's `scale_embeddings`);
- positions: tfx's own table, written into the model (`position_encodings`): the
  interleaved sinusoids of model/positions.py, position 0 first, `max_positions` long,
  or the learned tables. CTranslate2's built-in table is laid out differently;
- self-attention's fused Q/K/V rows in tfx's order, which is CTranslate2's (Q, K, V);
  cross-attention's query, then fused K/V;
- the vocabularies in id order from the checkpoint's SentencePiece model(s), with tfx's
  special pieces (<pad> 0, <unk> 1, <s> 2, </s> 3): the decoder starts from <s>, stops
  at </s>, and the source gets neither, as tfx frames it;
- shared or separate embeddings and a tied or separate output projection, as trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch

from transformer_cli import __version__
from transformer_cli.core.checkpoint import load_state, state_step
from transformer_cli.core.errors import ConfigError, TfxError
from transformer_cli.core.fileio import atomic_write_text
from transformer_cli.core.outdir import write_dir
from transformer_cli.core.specials import BOS, EOS, UNK
from transformer_cli.decoding.ct2_backend import EXPORT_FILE, require_ctranslate2
from transformer_cli.decoding.loading import model_from_state
from transformer_cli.model.transformer import DecoderLayer, EncoderLayer, Transformer

QUANTIZATIONS = ("int8", "int8_float32", "int16", "float16", "bfloat16", "float32")
LAYER_NORM_EPSILON = 1e-5  # nn.LayerNorm's default, which every tfx LayerNorm uses
# what an export written before tfx_export.json listed its files holds (a CTranslate2
# export: Hugging Face exports had no tfx_export.json then)
LEGACY_FILES = frozenset(
    {
        "model.bin",
        "config.json",
        "shared_vocabulary.json",
        "source_vocabulary.json",
        "target_vocabulary.json",
        "spm.model",
        "spm.src.model",
        "spm.tgt.model",
        "README.md",
    }
)


def export(
    checkpoint: str | Path,
    out_dir: str | Path,
    quantization: str = "float32",
    force: bool = False,
) -> Path:
    """Write the CTranslate2 model of `checkpoint` as the directory `out_dir`.

    `out_dir` is replaced whole, and only if it is missing, empty or an earlier tfx export;
    `force` moves any other directory aside first (core/outdir.py).
    """
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}")
    ctranslate2 = require_ctranslate2()
    out = Path(out_dir)

    def build(tmp: Path) -> dict:
        return write_model(ctranslate2, checkpoint, tmp, out, quantization)

    write_dir(out, build, marker=EXPORT_FILE, force=force, legacy=LEGACY_FILES)
    return out


def write_model(
    ctranslate2: Any, checkpoint: str | Path, tmp: Path, out: Path, quantization: str
) -> dict:
    """Write the export's files into `tmp` (to become `out`); the fields of its marker."""
    state = load_state(checkpoint)
    model, tokenizer, cfg = model_from_state(state, checkpoint, torch.device("cpu"))
    spec = build_spec(ctranslate2, model)
    src = [tokenizer.src_id_pieces([i])[0] for i in range(tokenizer.src_vocab_size)]
    tgt = tokenizer.tgt_pieces(list(range(tokenizer.tgt_vocab_size)))
    spec.register_source_vocabulary(src)
    spec.register_target_vocabulary(tgt)
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = UNK, BOS, EOS
    spec.config.decoder_start_token = BOS
    spec.config.add_source_bos = spec.config.add_source_eos = False
    spec.config.layer_norm_epsilon = LAYER_NORM_EPSILON

    # CTranslate2's Converter validates, quantizes and saves the spec its _load returns;
    # it empties `tmp` (tfx's own temp directory) and writes into it
    converter = type("TfxConverter", (ctranslate2.converters.Converter,), {"_load": lambda _: spec})
    try:
        converter().convert(str(tmp), quantization=quantization, force=True)
    except (ValueError, RuntimeError) as e:
        raise TfxError(f"CTranslate2 refused the model: {e}") from None
    tokenizer.save(tmp)
    atomic_write_text(tmp / "README.md", usage(out, tokenizer.joint, cfg.decode.max_len_b))
    return {
        "tfx_version": __version__,
        "format": "ctranslate2",
        "checkpoint": str(checkpoint),
        "step": state_step(state) if state_step(state) >= 0 else None,
        "quantization": quantization,
        "config": state["config"],
    }


def position_options(positional: str) -> dict:
    """CTranslate2's spec options for `model.positional` (both stacks take the same).

    rope: rotary over the whole head (`rotary_dim` 0), pairs (2i, 2i+1) as tfx rotates
    them (`rotary_interleave`), base 10000, in self-attention only; relative: Shaw's
    key and value vectors in self-attention (`relative_position`).
    """
    if positional == "rope":
        return {"rotary_dim": 0, "rotary_interleave": True, "rotary_base": 10000}
    if positional == "relative":
        return {"relative_position": True}
    return {}


def build_spec(ctranslate2: Any, model: Transformer) -> Any:
    """The TransformerSpec of `model`, its weights set."""
    specs, cfg = ctranslate2.specs, model.cfg
    pre, options = cfg.norm == "pre", position_options(cfg.positional)
    try:
        encoder = specs.TransformerEncoderSpec(cfg.enc_layers, cfg.heads, pre_norm=pre, **options)
        decoder = specs.TransformerDecoderSpec(cfg.dec_layers, cfg.heads, pre_norm=pre, **options)
    except TypeError:  # an older CTranslate2 whose specs lack the option
        if not options:
            raise
        raise TfxError(
            f"model.positional {cfg.positional}: CTranslate2 {ctranslate2.__version__} cannot "
            "represent it in an encoder-decoder model; upgrade ctranslate2 (4.8.5 can)"
        ) from None
    _set_inputs(encoder, model.src_embed, model.src_pos, cfg.max_positions)
    _set_inputs(decoder, model.tgt_embed, model.tgt_pos, cfg.max_positions)
    enc_layers = cast("list[EncoderLayer]", list(model.encoder.layers))
    dec_layers = cast("list[DecoderLayer]", list(model.decoder.layers))
    for layer_spec, layer in zip(encoder.layer, enc_layers, strict=True):
        _set_attention(layer_spec.self_attention, [layer.self_attn.in_proj], layer.self_attn)
        _set_norm(layer_spec.self_attention.layer_norm, layer.norm1)
        _set_ffn(layer_spec.ffn, layer.ff, layer.norm2)
    for layer_spec, dec in zip(decoder.layer, dec_layers, strict=True):
        _set_attention(layer_spec.self_attention, [dec.self_attn.in_proj], dec.self_attn)
        _set_norm(layer_spec.self_attention.layer_norm, dec.norm1)
        cross = dec.cross_attn
        _set_attention(layer_spec.attention, [cross.q_proj, cross.kv_proj], cross)
        _set_norm(layer_spec.attention.layer_norm, dec.norm2)
        _set_ffn(layer_spec.ffn, dec.ff, dec.norm3)
    if pre:
        _set_norm(encoder.layer_norm, model.encoder.norm)
        _set_norm(decoder.layer_norm, model.decoder.norm)
    decoder.projection.weight = _array(model.out_proj.weight)
    return specs.TransformerSpec(encoder, decoder)


def _array(t: torch.Tensor) -> Any:
    return t.detach().float().cpu().numpy().copy()


def _set_inputs(spec: Any, embed: torch.nn.Embedding, positions: Any, max_positions: int) -> None:
    """Token embeddings (scaled by sqrt(d_model) inside CTranslate2) and tfx's positions.

    Where tfx adds no table (rope, relative) but the spec still has one to fill (the
    encoder's under rotary), it gets zeros: adding them changes nothing.
    """
    embeddings = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings
    embeddings.weight = _array(embed.weight)
    spec.scale_embeddings = True
    if getattr(spec, "position_encodings", None) is not None:
        table = positions.table if positions is not None else None
        if table is None:
            table = torch.zeros(max_positions, embed.weight.size(1))
        spec.position_encodings.encodings = _array(table)


def _set_attention(spec: Any, inputs: list[torch.nn.Linear], attention: Any) -> None:
    """The input projections in CTranslate2's order, then the output projection; and
    Shaw's vectors, rows by offset -k .. k as CTranslate2 reads them, where present."""
    for linear_spec, linear in zip(spec.linear, [*inputs, attention.out_proj], strict=True):
        _set_linear(linear_spec, linear)
    relative = getattr(attention, "relative", None)
    if relative is not None:
        spec.relative_position_keys = _array(relative.keys)
        spec.relative_position_values = _array(relative.values)


def _set_linear(spec: Any, linear: torch.nn.Linear) -> None:
    spec.weight = _array(linear.weight)
    if linear.bias is not None:
        spec.bias = _array(linear.bias)


def _set_norm(spec: Any, norm: torch.nn.LayerNorm | None) -> None:
    assert norm is not None  # pre-norm stacks have their final norm
    spec.gamma = _array(norm.weight)
    spec.beta = _array(norm.bias)


def _set_ffn(spec: Any, ff: Any, norm: torch.nn.LayerNorm) -> None:
    _set_linear(spec.linear_0, ff[0])  # d_model -> d_ff, then ReLU (CTranslate2's default)
    _set_linear(spec.linear_1, ff[3])  # d_ff -> d_model
    _set_norm(spec.layer_norm, norm)


def usage(out: Path, joint: bool, max_len_b: int) -> str:
    """OUT_DIR/README.md: how to translate with the export in a few lines of Python."""
    src = "spm.model" if joint else "spm.src.model"
    tgt = "spm.model" if joint else "spm.tgt.model"
    return f"""# A tfx model for CTranslate2

Exported by tfx {__version__} (`{EXPORT_FILE}` names the checkpoint and holds its config).
Sources are SentencePiece pieces without BOS or EOS; the decoder starts from `<s>`.

```python
import ctranslate2, sentencepiece as spm

translator = ctranslate2.Translator("{out}", device="cpu")
src = spm.SentencePieceProcessor(model_file="{out}/{src}")
tgt = spm.SentencePieceProcessor(model_file="{out}/{tgt}")
lines = ["A sentence to translate."]
pieces = [src.encode(line, out_type=str) for line in lines]
results = translator.translate_batch(
    pieces, beam_size=5, max_decoding_length=max(len(p) for p in pieces) * 2 + {max_len_b},
    suppress_sequences=[["<pad>"], ["<s>"]],
)
print([tgt.decode(r.hypotheses[0]) for r in results])
```

`tfx translate {out} "..."` and `tfx evaluate {out} --split test` take this directory too.
"""
