"""`tfx export CHECKPOINT --to huggingface OUT_DIR`: the model as a `transformers` model.

A post-norm model becomes a MarianMTModel, a pre-norm one a PegasusForConditionalGeneration
(Pegasus is the stock encoder-decoder with pre-norm layers and a final LayerNorm on each
stack). Both compute the same function as tfx, exactly, once the residual stream's basis is
permuted:

- both classes compute their sinusoidal positions themselves (they are never loaded), with
  the sines in the first half of the dimensions and the cosines in the second, where tfx
  interleaves them (sin at 2i, cos at 2i + 1, model/transformer.py). `PERM` maps one
  layout onto the other: dimension k of theirs is dimension PERM[k] of tfx's;
- a permutation of the residual basis commutes with the residual additions and with
  LayerNorm (its mean and variance are over all dimensions), so permuting the embeddings'
  and the tied output's columns, the input columns of every linear layer that reads the
  residual stream, the output rows and bias of every one that writes it, and the gamma
  and beta of every LayerNorm gives the same logits;
- `scale_embedding` (sqrt(d_model)), ReLU, tfx's special ids (<pad> 0, <unk> 1, <s> 2 as
  `decoder_start_token_id`, </s> 3), a zero `final_logits_bias`, no forced EOS; PAD and
  BOS are never generated (`bad_words_ids`), as in tfx's search.

OUT_DIR is written beside and swapped in whole (core/outdir.py); its `tfx_export.json`
gives the tfx version and the step and lists every file (no local path: it is uploaded too).

The tokenizer is a `tokenizer.json` converted from the checkpoint's SentencePiece model by
transformers' own converter, with no special tokens added: tfx's sources carry no EOS,
where MarianTokenizer would append one. What cannot be exported exactly is refused with a
one-line error: learned positions (both classes compute theirs), separate source and target
vocabularies (one tokenizer encodes the source and decodes the output), separate source
and target embeddings.
"""

from __future__ import annotations

import importlib
import json
import types
from pathlib import Path
from typing import Any, cast

import torch

from transformer_cli import __version__
from transformer_cli.core.checkpoint import load_state, state_step
from transformer_cli.core.errors import TfxError
from transformer_cli.core.fileio import atomic_write_text
from transformer_cli.core.outdir import write_dir
from transformer_cli.core.specials import BOS, BOS_ID, EOS, EOS_ID, PAD, PAD_ID, UNK
from transformer_cli.data.tokenizer import JOINT_FILE, Tokenizer
from transformer_cli.decoding.ct2_backend import EXPORT_FILE
from transformer_cli.decoding.loading import model_from_state
from transformer_cli.export.ctranslate2 import LEGACY_FILES
from transformer_cli.model.transformer import DecoderLayer, EncoderLayer, Transformer

EXTRA = "pip install 'tfx[export]' (or: pip install transformers protobuf)"


def require_transformers() -> Any:
    """The transformers module, or a one-line error naming the extra to install."""
    try:
        importlib.import_module("google.protobuf")  # the SentencePiece converter reads protos
        import transformers
    except ImportError:
        raise TfxError(f"Hugging Face transformers is not installed: {EXTRA}") from None
    return transformers


def residual_permutation(d_model: int) -> torch.Tensor:
    """PERM: their dimension k is tfx's dimension PERM[k] (sines first, then cosines)."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def refusal(model: Transformer, tokenizer: Tokenizer) -> str:
    """Why this model cannot be exported exactly ("" if it can)."""
    cfg = model.cfg
    if cfg.positional != "sinusoidal":
        return (
            f"model.positional is {cfg.positional}: MarianMT and Pegasus add sinusoidal "
            "positions at the input, and have no other kind"
        )
    if not tokenizer.joint:
        return "separate vocabularies: one Hugging Face tokenizer encodes and decodes both sides"
    if not cfg.share_embeddings:
        return "separate source and target embeddings: MarianMT and Pegasus share one here"
    if cfg.d_model % 2:
        return f"model.d_model {cfg.d_model} is odd: the sine/cosine halves would not match"
    return ""


def export(
    checkpoint: str | Path, out_dir: str | Path, repo: str | None = None, force: bool = False
) -> Path:
    """Write `checkpoint` as a transformers model and tokenizer, the directory `out_dir`.

    `out_dir` is replaced whole, and only if it is missing, empty or an earlier tfx export;
    `force` moves any other directory aside first (core/outdir.py). `repo`: the Hub repo
    it will be pushed to, which its README then loads it from.
    """
    transformers = require_transformers()
    out = Path(out_dir)

    def build(tmp: Path) -> dict:
        return write_model(transformers, checkpoint, tmp, repo or str(out))

    write_dir(out, build, marker=EXPORT_FILE, force=force, legacy=LEGACY_FILES)
    return out


def write_model(transformers: Any, checkpoint: str | Path, tmp: Path, loaded_from: str) -> dict:
    """Write the export's files into `tmp`; the fields of its marker (no local paths: it
    is uploaded with the rest by --push-to-hub)."""
    state = load_state(checkpoint)
    model, tokenizer, cfg = model_from_state(state, checkpoint, torch.device("cpu"))
    why = refusal(model, tokenizer)
    if why:
        raise TfxError(f"{checkpoint}: cannot export to huggingface exactly: {why}")
    hf = build_model(transformers, model)
    hf.save_pretrained(tmp)
    fast = build_tokenizer(transformers, tokenizer, model.cfg.max_positions)
    fast.save_pretrained(tmp)
    portable_tokenizer_config(tmp / "tokenizer_config.json")
    tokenizer.save(tmp)  # spm.model too, for SentencePiece users
    name = "MarianMTModel" if model.cfg.norm == "post" else "PegasusForConditionalGeneration"
    readme = usage(loaded_from, name, state.get("tfx_version", "?"))
    atomic_write_text(tmp / "README.md", readme)
    step = state_step(state)
    return {
        "tfx_version": __version__,
        "format": "huggingface",
        "step": step if step >= 0 else None,
    }


def hf_config(transformers: Any, model: Transformer) -> Any:
    """MarianConfig (post-norm) or PegasusConfig (pre-norm) of `model`'s shape."""
    c = model.cfg
    shape = dict(
        vocab_size=c.tgt_vocab,
        d_model=c.d_model,
        encoder_layers=c.enc_layers,
        decoder_layers=c.dec_layers,
        encoder_attention_heads=c.heads,
        decoder_attention_heads=c.heads,
        encoder_ffn_dim=c.d_ff,
        decoder_ffn_dim=c.d_ff,
        max_position_embeddings=c.max_positions,
        activation_function="relu",
        scale_embedding=True,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        decoder_start_token_id=BOS_ID,
        forced_eos_token_id=None,
        tie_word_embeddings=c.tie_output,
    )
    if c.norm == "post":
        return transformers.MarianConfig(**shape, share_encoder_decoder_embeddings=True)
    return transformers.PegasusConfig(**shape)


def build_model(transformers: Any, model: Transformer) -> Any:
    """The transformers model with `model`'s weights in the permuted basis."""
    config = hf_config(transformers, model)
    cls = (
        transformers.MarianMTModel
        if model.cfg.norm == "post"
        else transformers.PegasusForConditionalGeneration
    )
    hf = cls(config).eval()
    weights = permuted_weights(model)
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    left = [k for k in missing if "embed_positions" not in k and k != "final_logits_bias"]
    if left or unexpected:
        raise TfxError(f"internal: the weight map missed {left} and had extra {unexpected}")
    if hasattr(hf, "final_logits_bias"):
        hf.final_logits_bias.zero_()
    gen = hf.generation_config
    gen.decoder_start_token_id, gen.bos_token_id = BOS_ID, BOS_ID
    gen.eos_token_id, gen.pad_token_id, gen.forced_eos_token_id = EOS_ID, PAD_ID, None
    gen.bad_words_ids = [[PAD_ID], [BOS_ID]]  # inputs, never predictions (tfx's search)
    gen.max_length = model.cfg.max_positions
    return hf


def permuted_weights(model: Transformer) -> dict[str, torch.Tensor]:
    """The state dict of the transformers model, from tfx's weights."""
    p = residual_permutation(model.cfg.d_model)

    def reads(w: torch.Tensor) -> torch.Tensor:  # a matrix whose input is the residual
        return w[:, p]

    def writes(w: torch.Tensor) -> torch.Tensor:  # output rows, or a vector, in the residual
        return w[p]

    out: dict[str, torch.Tensor] = {}
    shared = reads(model.src_embed.weight)
    for name in ("model.shared", "model.encoder.embed_tokens", "model.decoder.embed_tokens"):
        out[f"{name}.weight"] = shared
    out["lm_head.weight"] = reads(model.out_proj.weight)
    for i, enc in enumerate(cast("list[EncoderLayer]", list(model.encoder.layers))):
        at = f"model.encoder.layers.{i}"
        out |= _self_attention(f"{at}.self_attn", enc.self_attn.in_proj, enc.self_attn.out_proj, p)
        out |= _norm(f"{at}.self_attn_layer_norm", enc.norm1, p)
        out |= _ffn(at, enc.ff, p) | _norm(f"{at}.final_layer_norm", enc.norm2, p)
    for i, dec in enumerate(cast("list[DecoderLayer]", list(model.decoder.layers))):
        at = f"model.decoder.layers.{i}"
        out |= _self_attention(f"{at}.self_attn", dec.self_attn.in_proj, dec.self_attn.out_proj, p)
        out |= _norm(f"{at}.self_attn_layer_norm", dec.norm1, p)
        out |= _cross_attention(f"{at}.encoder_attn", dec.cross_attn, p)
        out |= _norm(f"{at}.encoder_attn_layer_norm", dec.norm2, p)
        out |= _ffn(at, dec.ff, p) | _norm(f"{at}.final_layer_norm", dec.norm3, p)
    if model.cfg.norm == "pre":
        out |= _norm("model.encoder.layer_norm", model.encoder.norm, p)
        out |= _norm("model.decoder.layer_norm", model.decoder.norm, p)
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def _linear(name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> dict:
    return {f"{name}.weight": weight, **({f"{name}.bias": bias} if bias is not None else {})}


def _self_attention(name: str, in_proj: Any, out_proj: Any, p: torch.Tensor) -> dict:
    q, k, v = in_proj.weight.chunk(3)  # tfx's rows: Q, K, V
    bq, bk, bv = in_proj.bias.chunk(3)
    return (
        _linear(f"{name}.q_proj", q[:, p], bq)
        | _linear(f"{name}.k_proj", k[:, p], bk)
        | _linear(f"{name}.v_proj", v[:, p], bv)
        | _linear(f"{name}.out_proj", out_proj.weight[p], out_proj.bias[p])
    )


def _cross_attention(name: str, cross: Any, p: torch.Tensor) -> dict:
    k, v = cross.kv_proj.weight.chunk(2)  # tfx's rows: K, V
    bk, bv = cross.kv_proj.bias.chunk(2)
    return (
        _linear(f"{name}.q_proj", cross.q_proj.weight[:, p], cross.q_proj.bias)
        | _linear(f"{name}.k_proj", k[:, p], bk)
        | _linear(f"{name}.v_proj", v[:, p], bv)
        | _linear(f"{name}.out_proj", cross.out_proj.weight[p], cross.out_proj.bias[p])
    )


def _ffn(layer: str, ff: Any, p: torch.Tensor) -> dict:
    return _linear(f"{layer}.fc1", ff[0].weight[:, p], ff[0].bias) | _linear(
        f"{layer}.fc2", ff[3].weight[p], ff[3].bias[p]
    )


def _norm(name: str, norm: torch.nn.LayerNorm | None, p: torch.Tensor) -> dict:
    assert norm is not None  # pre-norm stacks have their final norm
    return {f"{name}.weight": norm.weight[p], f"{name}.bias": norm.bias[p]}


def build_tokenizer(transformers: Any, tokenizer: Tokenizer, max_positions: int) -> Any:
    """A fast tokenizer that encodes exactly as the SentencePiece model, adding nothing."""
    import tempfile

    from transformers.convert_slow_tokenizer import SpmConverter

    with tempfile.TemporaryDirectory() as tmp:
        path = tokenizer.save(tmp)[0]  # the joint model, spm.model
        assert path.name == JOINT_FILE
        shim = types.SimpleNamespace(vocab_file=str(path), legacy=True, add_prefix_space=True)
        converted = SpmConverter(shim).converted()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=converted,
        unk_token=UNK,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=max_positions,
    )


def portable_tokenizer_config(path: Path) -> None:
    """Make the saved tokenizer load under transformers 4 and 5 alike, with no token type ids.

    transformers 5 names its fast tokenizer class TokenizersBackend, which 4.x does not know;
    both read PreTrainedTokenizerFast (5's alias of it) from tokenizer.json. And 4.x's
    tokenizer returns token_type_ids unless told otherwise, which MarianMT and Pegasus refuse.
    """
    config = json.loads(path.read_text("utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_input_names"] = ["input_ids", "attention_mask"]
    atomic_write_text(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def usage(out: str, name: str, version: str) -> str:
    """OUT_DIR/README.md: how to translate with the export (loaded from `out`); its header
    makes it a Hub model card that calls a Pegasus model a translator too."""
    return f"""---
library_name: transformers
pipeline_tag: translation
tags:
- tfx
---

# A tfx model for Hugging Face transformers

A `{name}` exported by tfx {__version__} from a checkpoint of tfx {version}.

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{out}")
model = AutoModelForSeq2SeqLM.from_pretrained("{out}")
batch = tokenizer(["A sentence to translate."], return_tensors="pt", padding=True)
print(tokenizer.batch_decode(model.generate(**batch, num_beams=1), skip_special_tokens=True))
```

With transformers 4.x (5.0 removed this pipeline task):

```python
from transformers import pipeline

translate = pipeline("translation", model="{out}")
print(translate("A sentence to translate.", num_beams=1))  # the pipeline's default is 4 beams
```

The tokenizer adds no special tokens to the source, as tfx frames it; generation starts
from `<s>`, stops at `</s>` and never emits `<pad>` or `<s>`.
"""
