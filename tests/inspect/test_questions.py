"""`tfx inspect norm`, `residual`, `positions --checkpoint`, `decoding`, `reference`.

Each view's numbers are checked against the same quantity computed another way: by
hand with an explicit mask, by autograd's backward(), by a constructed matrix.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers import assert_one_line_error, assert_png, cli, make_tiny_run, tiny_model_config

from transformer_cli.core.config import to_dict
from transformer_cli.core.config_file import load_config
from transformer_cli.core.specials import PAD_ID
from transformer_cli.inspect import reference as ref_view
from transformer_cli.inspect.batch import the_batch
from transformer_cli.inspect.norm import first_layer_input, norm_statistics
from transformer_cli.inspect.relative import (
    TOEPLITZ_TOLERANCE,
    diagonal_spread,
    format_trained_positions,
    projected_dots,
    trained_positions_view,
)
from transformer_cli.inspect.residual import (
    layer_input_gradients,
    residuals_removed,
    with_and_without,
)
from transformer_cli.inspect.subject import fresh_model
from transformer_cli.model.positions import sinusoidal_table
from transformer_cli.model.transformer import Transformer
from transformer_cli.training.loss import masked_cross_entropy


@pytest.fixture(scope="module")
def run(tmp_path_factory, toy_pairs) -> tuple[Path, Path]:
    """(a YAML config of a prepared tiny run, a checkpoint of it)."""
    root = tmp_path_factory.mktemp("questions")
    cfg = make_tiny_run(root, toy_pairs)
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)), encoding="utf-8")
    return path, Path(cfg.run_dir) / "checkpoints" / "ckpt_00000010.pt"


def ok_json(*args) -> dict:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ----------------------------------------------------------------------------- norm


def masked_stats(x: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and biased variance over the slots where `real`, by hand."""
    m = real[..., None].double()  # (B, S, 1)
    n = m.sum()
    mean = (x.double() * m).sum((0, 1)) / n
    var = (((x.double() - mean) ** 2) * m).sum((0, 1)) / n
    return mean, var


def test_norm_statistics_are_the_masked_ones_computed_by_hand():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 8, generator=gen) + 0.5
    real = torch.ones(4, 6, dtype=torch.bool)
    real[1, 4:], real[3, 2:] = False, False
    x[~real] = torch.randn(int((~real).sum()), 8, generator=gen) * 3  # padding unlike tokens
    stats = norm_statistics(x, real)
    everything = torch.ones_like(real)
    for key, expected in zip(
        ("batchnorm_mean", "batchnorm_var"), masked_stats(x, everything), strict=True
    ):
        torch.testing.assert_close(torch.tensor(stats[key]).double(), expected)
    for key, expected in zip(("real_mean", "real_var"), masked_stats(x, real), strict=True):
        torch.testing.assert_close(torch.tensor(stats[key]).double(), expected)
    assert stats["batchnorm_mean"] != pytest.approx(stats["real_mean"], abs=1e-3)
    tokens = x[real].double()
    assert stats["layernorm_mean"] == pytest.approx(tokens.mean(-1).tolist())
    assert stats["layernorm_var"] == pytest.approx(tokens.var(-1, unbiased=False).tolist())


def test_norm_statistics_agree_when_the_batch_has_no_padding():
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1))
    stats = norm_statistics(x, torch.ones(3, 5, dtype=torch.bool))
    assert stats["batchnorm_mean"] == pytest.approx(stats["real_mean"], abs=1e-12)
    assert stats["batchnorm_var"] == pytest.approx(stats["real_var"], abs=1e-12)


def test_norm_command_shows_the_first_layer_input_of_the_real_batch(run, tmp_path):
    config, _ = run
    view = ok_json("inspect", "norm", "--config", config, "--split", "valid")
    cfg = load_config(config)
    batch, _ = the_batch(cfg, "valid", 0, 0)
    real = batch.src != PAD_ID
    assert not bool(real.all()), "the valid batch should hold padding"
    x = first_layer_input(fresh_model(cfg), batch.src)
    mean, var = masked_stats(x, real)
    assert view["real_slots"] == int(real.sum())
    assert view["real_mean"] == pytest.approx(mean.tolist(), abs=1e-6)
    assert view["real_var"] == pytest.approx(var.tolist(), abs=1e-6)
    assert view["batchnorm_mean_shift"] > 1e-4  # padding moves BatchNorm's statistics
    assert view["layernorm_alone_gap"] < 1e-6  # and cannot move LayerNorm's
    result = cli("inspect", "norm", "--config", config, "--plot", tmp_path / "n.png")
    assert result.exit_code == 0, result.output
    assert "BatchNorm" in result.stdout
    assert "LayerNorm" in result.stdout
    assert_png(tmp_path / "n.png")


# ----------------------------------------------------------------------------- residual


def deep_model(norm: str, layers: int = 8) -> Transformer:
    torch.manual_seed(0)
    cfg = tiny_model_config(norm=norm, enc_layers=layers, dec_layers=layers, d_model=32, heads=4)
    return Transformer(cfg).eval()


def random_batch(vocab: int):
    from transformer_cli.data.batching import Batch

    gen = torch.Generator().manual_seed(3)
    src = torch.randint(4, vocab, (6, 9), generator=gen)
    tgt = torch.randint(4, vocab, (6, 8), generator=gen)
    src[:3, 6:], tgt[:3, 5:] = PAD_ID, PAD_ID
    tgt_in = torch.cat([torch.full((6, 1), 2), tgt[:, :-1]], 1)
    return Batch(src, tgt_in, tgt, int((tgt != PAD_ID).sum()), torch.arange(6))


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_residual_gradients_are_autograds(norm):
    model = deep_model(norm, layers=2)
    batch = random_batch(model.cfg.src_vocab)
    view = layer_input_gradients(model, batch, 0.1)
    layers = [*model.encoder.layers, *model.decoder.layers]
    inputs = []

    def keep(_module, args) -> None:  # a pre-hook that returns something replaces the args
        args[0].retain_grad()
        inputs.append(args[0])

    hooks = [m.register_forward_pre_hook(keep) for m in layers]
    parts = masked_cross_entropy(model(batch.src, batch.tgt_in), batch.tgt_out, 0.1)
    (parts.loss / parts.n_tokens).backward()
    for h in hooks:
        h.remove()
    assert view == pytest.approx([x.grad.norm().item() for x in inputs], rel=1e-4)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_without_residuals_the_deep_decoder_loses_its_gradient(norm):
    model = deep_model(norm)
    run = with_and_without(model, random_batch(model.cfg.src_vocab), 0.1)
    first_decoder = model.cfg.enc_layers
    assert run["without"][first_decoder] < 1e-3 * run["with"][first_decoder]
    assert run["spread_without"] < 0.1 * run["spread_with"]  # the tokens collapse
    assert not any("forward" in vars(m) for m in model.modules())  # the layers' own again


@pytest.mark.parametrize("positional", ["sinusoidal", "rope", "relative"])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_removing_the_residuals_removes_exactly_the_x_term(norm, positional):
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(norm=norm, positional=positional)).eval()
    layer = model.encoder.layers[0]
    x = torch.randn(2, 5, layer.norm1.normalized_shape[0])
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    with torch.no_grad():
        if norm == "pre":
            h = layer.self_attn(layer.norm1(x), mask) + x
            expected_with = h + layer.ff(layer.norm2(h))
            expected_without = layer.ff(layer.norm2(layer.self_attn(layer.norm1(x), mask)))
        else:
            h = layer.norm1(x + layer.self_attn(x, mask))
            expected_with = layer.norm2(h + layer.ff(h))
            expected_without = layer.norm2(layer.ff(layer.norm1(layer.self_attn(x, mask))))
        torch.testing.assert_close(layer(x, mask), expected_with)
        with residuals_removed(model):
            torch.testing.assert_close(layer(x, mask), expected_without)
        torch.testing.assert_close(layer(x, mask), expected_with)


@pytest.mark.parametrize("positional", ["sinusoidal", "rope", "relative"])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_removing_the_residuals_removes_exactly_the_decoders_x_terms(norm, positional):
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(norm=norm, positional=positional)).eval()
    layer = model.decoder.layers[0]
    x, memory = torch.randn(2, 4, model.cfg.d_model), torch.randn(2, 5, model.cfg.d_model)
    self_mask = torch.ones(4, 4, dtype=torch.bool).tril()
    cross_mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)

    def written_out(x, r: float):
        """The layer by hand, with r times the x of every x + Sublayer(x)."""
        attend_self = functools.partial(layer.self_attn, mask=self_mask)
        attend_source = functools.partial(layer.cross_attn, memory=memory, mask=cross_mask)
        if norm == "pre":
            x = r * x + attend_self(layer.norm1(x))
            x = r * x + attend_source(layer.norm2(x))
            return r * x + layer.ff(layer.norm3(x))
        x = layer.norm1(r * x + attend_self(x))
        x = layer.norm2(r * x + attend_source(x))
        return layer.norm3(r * x + layer.ff(x))

    with torch.no_grad():
        torch.testing.assert_close(layer(x, memory, self_mask, cross_mask), written_out(x, 1.0))
        with residuals_removed(model):
            got = layer(x, memory, self_mask, cross_mask)
        torch.testing.assert_close(got, written_out(x, 0.0))


def test_residual_command_on_a_config_shows_both_norm_orders(run, tmp_path):
    config, checkpoint = run
    view = ok_json("inspect", "residual", "--config", config)
    assert set(view["runs"]) == {"post", "pre"}
    depth = view["enc_layers"] + view["dec_layers"]
    assert all(len(r["with"]) == len(r["without"]) == depth for r in view["runs"].values())
    trained = ok_json("inspect", "residual", "--checkpoint", checkpoint)
    assert list(trained["runs"]) == ["post"]
    result = cli("inspect", "residual", "-c", config, "--plot", tmp_path / "r.png")
    assert result.exit_code == 0, result.output
    assert_png(tmp_path / "r.png")


# ----------------------------------------------------------------------------- positions


def test_raw_encodings_are_toeplitz_and_projected_ones_are_not():
    pe = sinusoidal_table(40, 16).double()
    assert diagonal_spread(pe @ pe.T) < TOEPLITZ_TOLERANCE
    w = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    projected = projected_dots(pe, w[0], w[1], heads=2)
    assert all(diagonal_spread(m) > 0.05 for m in projected)
    eye = torch.eye(16, dtype=torch.float64)
    assert all(diagonal_spread(m) < TOEPLITZ_TOLERANCE for m in projected_dots(pe, eye, eye, 2))


def test_the_toeplitz_check_can_fail():
    toeplitz = torch.tensor([[float(abs(i - j) + 1) for j in range(6)] for i in range(6)])
    assert diagonal_spread(toeplitz) == 0
    toeplitz[2, 3] += 0.5
    assert diagonal_spread(toeplitz) == pytest.approx(0.5 / 6)
    with pytest.raises(ValueError, match="square"):
        diagonal_spread(torch.zeros(2, 3))


def test_positions_with_a_checkpoint(run, tmp_path):
    _, checkpoint = run
    view = ok_json("inspect", "positions", "--checkpoint", checkpoint, "--length", 20)
    assert view["raw_spread"] < TOEPLITZ_TOLERANCE
    assert len(view["head_spreads"]) == 2
    assert min(view["head_spreads"]) > 1e-3
    assert view["position_norm"] == pytest.approx(math.sqrt(view["d_model"] / 2), rel=1e-6)
    assert view["embed_scale"] == pytest.approx(math.sqrt(view["d_model"]))
    assert all(c["max_error"] < 1e-5 for c in view["checks"])
    plot = tmp_path / "p.png"
    result = cli("inspect", "positions", "--checkpoint", checkpoint, "--plot", plot)
    assert result.exit_code == 0, result.output
    assert "spread" in result.stdout
    assert_png(plot)


@pytest.mark.parametrize(
    ("positional", "toeplitz"),
    [("sinusoidal", False), ("learned", False), ("rope", True), ("relative", True)],
)
def test_positions_view_shows_which_kinds_keep_the_offset_after_the_projections(
    positional, toeplitz
):
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(positional=positional, max_relative_distance=3))
    view = trained_positions_view(model, 12, "m.pt")
    assert len(view["head_spreads"]) == model.cfg.heads
    if toeplitz:
        assert max(view["head_spreads"]) < TOEPLITZ_TOLERANCE
    else:
        assert min(view["head_spreads"]) > 1e-3
    assert min(view["sinusoid_head_spreads"]) > 1e-3  # the same W_q, W_k mix sinusoids
    assert (view["position_norm"] is None) == toeplitz  # nothing added to the input
    assert positional in format_trained_positions(view)


@pytest.mark.parametrize("positional", ["learned", "rope", "relative"])
def test_the_positions_plot_draws_every_kind(positional, tmp_path):
    from transformer_cli.inspect.question_plots import plot_relative

    torch.manual_seed(0)
    model = Transformer(tiny_model_config(positional=positional))
    assert_png(plot_relative(trained_positions_view(model, 12, "m.pt"), tmp_path / "p.png"))


def test_the_toeplitz_verdict_of_rope_can_fail():
    """The rope view's Toeplitz verdict can fail: rotate with a wrong table, and it does."""
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(positional="rope"))
    for layer in model.encoder.layers:
        layer.self_attn.rotary.cos[5:] = 1.0  # positions 5.. no longer rotate
        layer.self_attn.rotary.sin[5:] = 0.0
    assert min(trained_positions_view(model, 12, "m.pt")["head_spreads"]) > 1e-3


@pytest.mark.parametrize("init", ["xavier", "normal"])
def test_positions_view_measures_the_embedding_scale_at_initialisation(init):
    d = 64
    cfg = tiny_model_config(d_model=d, src_vocab=3000, tgt_vocab=3000, embedding_init=init)
    view = trained_positions_view(Transformer(cfg), 12, "m.pt")
    token, position = view["initial"]["embedding_norm"], view["initial"]["position_norm"]
    assert position == pytest.approx(math.sqrt(d / 2), rel=1e-6)
    if init == "normal":  # N(0, 1/d) * sqrt(d): entries of std 1, norm ~ sqrt(d)
        assert token == pytest.approx(math.sqrt(d), rel=0.05)
    else:  # Xavier at 3000 x 64: std sqrt(2 / 3064) * sqrt(d) ~ 0.2, below the sinusoid's
        assert token < 0.5 * position


# ----------------------------------------------------------------------------- decoding


def test_parallel_and_serial_decoding_give_the_same_distributions(run, tmp_path):
    _, checkpoint = run
    view = ok_json("inspect", "decoding", checkpoint, "the old man sees a dog")
    assert view["max_gap"] < 1e-5
    assert view["parallel_passes"] == 1
    assert view["serial_passes"] == len(view["outputs"]) == len(view["p_serial"]) > 1
    assert view["p_serial"] == pytest.approx(view["p_parallel"], abs=1e-5)
    plot = tmp_path / "d.png"
    result = cli("inspect", "decoding", checkpoint, "the old man", "--plot", plot)
    assert result.exit_code == 0, result.output
    assert_png(plot)


# ----------------------------------------------------------------------------- reference


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_reference_differences_are_rounding(run, norm):
    config, _ = run
    view = ok_json("inspect", "reference", "--config", config, "--set", f"model.norm={norm}")
    gaps = [*view["encoder_layers"], *view["decoder_layers"], view["stack"], view["layer_norm"]]
    assert view["norm"] == norm
    assert max(gaps) < 1e-5


@pytest.mark.parametrize("kind", ["rope", "relative"])
def test_the_reference_check_refuses_positions_inside_attention(run, kind):
    config, _ = run
    result = cli("inspect", "reference", "--config", config, "--set", f"model.positional={kind}")
    assert_one_line_error(result, f"model.positional is {kind}, which works inside attention")


def test_a_perturbed_weight_shows_in_the_reference_check(run, monkeypatch):
    config, _ = run
    copy = ref_view.copy_layer

    def perturbed(ours, theirs, into):
        copy(ours, theirs, into)
        with torch.no_grad():
            theirs.linear2.weight[0, 0] += 0.5  # one wrong weight in the reference

    monkeypatch.setattr(ref_view, "copy_layer", perturbed)
    result = cli("inspect", "reference", "--config", config)
    assert result.exit_code == 0, result.output
    assert "DIFFERENT" in result.stdout
    view = ok_json("inspect", "reference", "--config", config)
    assert min(view["encoder_layers"]) > 1e-3
    assert view["stack"] > 1e-3


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line(run, tmp_path):
    config, checkpoint = run
    missing = tmp_path / "nope.pt"
    unprepared = tmp_path / "unprepared.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["run_dir"] = str(tmp_path / "empty")
    unprepared.write_text(yaml.safe_dump(raw))
    cases = [
        (("inspect", "decoding", missing, "a dog"), "nope.pt"),
        (("inspect", "decoding", checkpoint, "   "), "empty"),
        (("inspect", "positions", "--checkpoint", missing), "nope.pt"),
        (("inspect", "positions", "--checkpoint", checkpoint, "--layer", 5), "--layer 5"),
        (("inspect", "norm", "--checkpoint", missing), "nope.pt"),
        (("inspect", "norm"), "--config"),
        (("inspect", "residual", "--config", unprepared), "tfx prepare"),
        (("inspect", "reference", "--config", unprepared), "tfx prepare"),
        (("inspect", "norm", "--config", config, "--split", "dev"), "--split dev"),
        (("inspect", "residual", "--config", config, "--index", 999), "--index 999"),
    ]
    for args, fragment in cases:
        assert_one_line_error(cli(*args), fragment)
