"""`tfx translate`: line-count preservation, input/output paths, nbest, and one-line errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_only_error, cli, make_tiny_run

from transformer_cli import __version__
from transformer_cli.core import checkpoint, runtime
from transformer_cli.core.checkpoint import load_checkpoint, save_checkpoint
from transformer_cli.core.config import DecodeOverrides
from transformer_cli.decoding import loading, translate
from transformer_cli.decoding.runner import decode_all
from transformer_cli.fast.packing import fully_packed, packing_available

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, toy_pairs):
    return make_tiny_run(tmp_path_factory.mktemp("translate"), toy_pairs)


@pytest.fixture(scope="module")
def ckpt(tiny) -> str:
    return str(Path(tiny.run_dir) / "checkpoints" / "ckpt_00000010.pt")


# ----------------------------------------------------------------------------- lines


def test_arguments_give_one_line_each_and_empty_stays_empty(ckpt):
    result = cli("translate", ckpt, "the old man sees the dog .", "", "  ", "a cat")
    assert result.exit_code == 0, result.output
    lines = result.stdout.split("\n")
    assert len(lines) == 5  # four lines, each ended by a newline
    assert lines[-1] == ""
    assert lines[1] == ""
    assert lines[2] == ""
    assert lines[0]  # a random model still says something for real input
    assert lines[3]


def test_stdin_line_count_survives_empty_overlong_and_invalid_lines(ckpt):
    overlong = " ".join(["the old man sees the small dog"] * 6)
    lines = [
        b"the dog sleeps .",
        b"",
        b"   \t ",
        overlong.encode(),
        b"the \xff\xfe cat",
        "der Hund \u2028 schl\u00e4ft".encode(),
        b"a cat",
    ]
    result = cli("translate", ckpt, input=b"\n".join(lines))
    assert result.exit_code == 0, result.output
    out = result.stdout.split("\n")
    assert out[-1] == ""
    assert len(out) - 1 == len(lines)
    assert out[1] == ""
    assert out[2] == ""
    assert all(out[i] for i in (0, 3, 4, 5, 6))
    warnings = [w for w in result.stderr.splitlines() if w.startswith("warning: ")]
    assert any(w.startswith("warning: line 4:") and "pieces" in w for w in warnings), warnings
    assert any(w.startswith("warning: line 5:") and "UTF-8" in w for w in warnings), warnings
    assert len(warnings) == 2


def test_crlf_input_gives_the_same_translations(ckpt):
    unix = cli("translate", ckpt, input=b"the dog .\na cat\n")
    dos = cli("translate", ckpt, input=b"the dog .\r\na cat\r\n")
    assert unix.exit_code == dos.exit_code == 0
    assert unix.stdout == dos.stdout


def test_stdin_as_bytes_in_a_real_process(ckpt):
    # the real sys.stdin.buffer path, with bytes that are not UTF-8
    proc = subprocess.run(
        [sys.executable, "-m", "transformer_cli", "translate", ckpt],
        input=b"a \xc3( b\n\nthe \xff cat\n",
        capture_output=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode("utf-8").split("\n")
    assert len(out) == 4
    assert out[1] == ""
    assert out[0]
    assert out[2]
    assert b"warning: line 1:" in proc.stderr
    assert b"warning: line 3:" in proc.stderr


def test_input_and_output_files(ckpt, tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(b"the dog .\n\na cat sleeps .\n")
    target = tmp_path / "out" / "hyp.txt"
    result = cli("translate", ckpt, "--input", str(source), "--output", str(target))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    piped = cli("translate", ckpt, input=source.read_bytes())
    assert target.read_text("utf-8") == piped.stdout
    assert sorted(os.listdir(target.parent)) == ["hyp.txt"]  # no temp file left behind


def test_streaming_in_chunks_gives_the_same_output(ckpt, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("".join(f"the dog sees {n} cats .\n" for n in range(7)), "utf-8")
    whole, chunked = tmp_path / "whole.txt", tmp_path / "chunked.txt"
    translate.run(ckpt, input_path=source, output_path=whole, device="cpu")
    translate.run(ckpt, input_path=source, output_path=chunked, device="cpu", chunk_lines=2)
    assert whole.read_text("utf-8") == chunked.read_text("utf-8")
    assert len(whole.read_text("utf-8").splitlines()) == 7


def test_a_failed_run_leaves_no_output_file(ckpt, tmp_path, monkeypatch):
    source = tmp_path / "in.txt"
    source.write_text("a\nb\nc\n", "utf-8")
    target = tmp_path / "out.txt"
    calls = []

    def fail_on_second_chunk(_self, lines):
        calls.append(lines)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return list(lines)

    monkeypatch.setattr(translate.Translator, "translate", fail_on_second_chunk)
    with pytest.raises(RuntimeError):
        translate.run(ckpt, input_path=source, output_path=target, device="cpu", chunk_lines=1)
    assert not target.exists()
    assert os.listdir(tmp_path) == ["in.txt"]


def test_nbest_gives_k_scored_lines_per_input_best_first(ckpt):
    result = cli("translate", ckpt, "--beam", "3", "--nbest", "3", "the dog .", "", "a cat")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 9
    groups = [lines[i : i + 3] for i in range(0, 9, 3)]
    for group in groups:
        fields = [line.split("\t") for line in group]
        assert all(len(f) == 2 for f in fields)
        scores = [float(score) for _, score in fields]
        assert scores == sorted(scores, reverse=True)
    assert groups[1] == ["\t0.0000"] * 3  # an empty line: K empty hypotheses
    assert all(score < 0 for line in groups[0] for score in [float(line.split("\t")[1])])
    best_of_beam = cli("translate", ckpt, "--beam", "3", "the dog .", "", "a cat")
    assert best_of_beam.stdout.splitlines() == [g[0].split("\t")[0] for g in groups]


@pytest.mark.parametrize(
    ("flag", "expected"), [([], False), (["--early-stop"], True), (["--no-early-stop"], False)]
)
def test_early_stop_flag_reaches_the_beam_search(ckpt, monkeypatch, flag, expected):
    from transformer_cli.decoding import runner

    seen = []
    real = runner.beam_search

    def spy(*args, **kwargs):
        seen.append(args[7] if len(args) > 7 else kwargs.get("early_stop", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "beam_search", spy)
    result = cli("translate", ckpt, "--beam", "3", *flag, "the dog .")
    assert result.exit_code == 0, result.output
    assert seen == [expected]


@pytest.mark.parametrize(
    ("flag", "expected"),
    [([], "auto"), (["--precision", "bf16"], "bf16"), (["--precision", "fp32"], "fp32")],
)
def test_precision_flag_reaches_the_decoder(ckpt, monkeypatch, flag, expected):
    from transformer_cli.decoding import runner

    if expected == "auto":  # what the CPU's rule picks here: bf16 only with bf16 units
        expected = runtime.cpu_auto_precision(runtime.cpu_math())[0]

    seen = []
    real = runner.decode_all

    def spy(model, sources, decode_cfg, device, precision="fp32", **kwargs):
        packed = getattr(model.out_proj, "packed_dtype", None)
        seen.append((precision, torch.is_autocast_enabled("cpu"), packed))
        return real(model, sources, decode_cfg, device, precision, **kwargs)

    monkeypatch.setattr(runner, "decode_all", spy)
    lines = "".join(["the dog .\n", "a cat sleeps .\n"] * (translate.PACK_MIN_LINES // 2))
    result = cli("translate", ckpt, "--device", "cpu", *flag, input=lines.encode())
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == translate.PACK_MIN_LINES
    # the linear layers are packed in the precision's type
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[expected]
    assert seen == [(expected, False, dtype if packing_available("cpu", expected) else None)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_few_lines_are_decoded_unpacked_and_many_packed_with_the_same_output(ckpt, precision):
    """Packing pays only on many lines; the outputs do not depend on it."""
    few = ["the dog .", "a cat sleeps .", "the old man sees the small dog ."]
    decode = DecodeOverrides(precision=precision)
    translator = translate.Translator(ckpt, device="cpu", decode=decode)
    alone = translator.translate(few)
    assert not translator.packed
    assert not fully_packed(translator.model)
    many = translator.translate(few * (translate.PACK_MIN_LINES // len(few) + 1))
    assert translator.packed
    assert fully_packed(translator.model) == packing_available("cpu", precision)
    assert many[: len(few)] == alone


def test_bf16_decoding_runs_the_matrix_products_in_bf16(ckpt):
    """The flag changes the arithmetic: the model's logits come out in bf16 under it."""
    from transformer_cli.core import runtime

    model, _, _ = loading.load_model(ckpt, "cpu")
    src = torch.tensor([[5, 6, 7]])
    with torch.inference_mode(), runtime.autocast(torch.device("cpu"), "bf16"):
        assert model.decode(src, model.encode(src), src).dtype == torch.bfloat16
    with torch.inference_mode(), runtime.autocast(torch.device("cpu"), "fp32"):
        assert model.decode(src, model.encode(src), src).dtype == torch.float32


def test_beam_one_equals_the_greedy_default(ckpt):
    text = ["the small dog sees a cat .", "today the women read a book ."]
    assert (
        cli("translate", ckpt, *text).stdout == cli("translate", ckpt, "--beam", "1", *text).stdout
    )


def test_interactive_prompt_when_stdin_is_a_terminal(ckpt, monkeypatch, capsys):
    class Terminal(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal(io.BytesIO(b"the dog .\n\n")))
    assert translate.run(ckpt, device="cpu") == 2
    captured = capsys.readouterr()
    out = captured.out.split("\n")
    assert len(out) == 3
    assert out[0]
    assert out[1] == ""
    assert captured.err.count("> ") == 3  # two lines, then the prompt that met EOF


def test_load_model_gives_the_saved_weights(ckpt):
    model, tokenizer, cfg = loading.load_model(ckpt, "cpu")
    saved = load_checkpoint(ckpt)["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert not model.training
    assert cfg.model.src_vocab == tokenizer.src_vocab_size


@pytest.mark.parametrize(
    ("version", "ok"),
    [(__version__, True), ("0.1.7", True), ("0.2.0", False), ("1.1.0", False), ("unknown", False)],
)
def test_version_compatibility(version, ok):
    assert checkpoint.compatible_version(version) is ok


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "directory",
        "text",
        "plain_torch",
        "cut_short",
        "missing_keys",
        "old_version",
        "wrong_weights",
    ],
)
def test_bad_checkpoints_are_one_line_errors(ckpt, tmp_path, case):
    path = tmp_path / "bad.pt"
    expected = {
        "missing": "no such checkpoint",
        "directory": "is a directory",
        "text": "not a tfx checkpoint",
        "plain_torch": "not a tfx checkpoint",
        "cut_short": "corrupt",
        "missing_keys": "missing config, tokenizer",
        "old_version": "written by tfx 0.0.1",
        "wrong_weights": "weights do not fit",
    }[case]
    state = load_checkpoint(ckpt)
    if case == "directory":
        path = tmp_path
    elif case == "text":
        path.write_text("hello\n", "utf-8")
    elif case == "plain_torch":
        torch.save(state, path)
    elif case == "cut_short":
        path.write_bytes(Path(ckpt).read_bytes()[:2000])
    elif case == "missing_keys":
        save_checkpoint(path, {"tfx_version": __version__, "model": state["model"]})
    elif case == "old_version":
        save_checkpoint(path, {**state, "tfx_version": "0.0.1"})
    elif case == "wrong_weights":
        save_checkpoint(path, {**state, "model": {"encoder.nothing": torch.zeros(1)}})
    assert_only_error(cli("translate", str(path), "a dog ."), expected)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--beam", "2", "--nbest", "3"], "--nbest must be between 1 and --beam (2)"),
        (["--beam", "0"], "--beam must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--max-len-a", "0", "--max-len-b", "0"], "cannot both be 0"),
        (["--device", "tpu"], "--device must be one of auto, cpu, cuda, mps"),
        (["--device", "cpu", "--precision", "fp16"], "--precision: fp16 needs CUDA"),
        (["--precision", "int8"], "--precision: must be one of auto|fp32|bf16|fp16"),
        (["--input", "/nonexistent/in.txt"], "no such input file"),
    ],
)
def test_bad_options_are_one_line_errors(ckpt, args, expected):
    extra = [] if "--input" in args else ["a dog ."]
    assert_only_error(cli("translate", ckpt, *extra, *args), expected)


def test_text_and_input_together_is_an_error(ckpt, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("a\n", "utf-8")
    assert_only_error(cli("translate", ckpt, "a dog", "--input", str(source)), "not both")


# ----------------------------------------------------------------------------- --tag


def test_tag_goes_before_every_source_and_an_unknown_one_names_the_known(
    tmp_path_factory, toy_pairs, monkeypatch
):
    corpora = [{"name": "train"}, {"name": "valid", "tag": "<v>"}]
    run = make_tiny_run(tmp_path_factory.mktemp("tagged"), toy_pairs, train=corpora)
    tagged = str(Path(run.run_dir) / "checkpoints" / "ckpt_00000010.pt")
    model, tokenizer, cfg = loading.load_model(tagged, "cpu")
    lines = ["the old man sees the dog .", "a cat"]
    from transformer_cli.decoding import runner

    tag = tokenizer.src_piece_id("<v>")
    ids = [[tag, *s] for s in tokenizer.encode_src(lines)]
    wanted = tokenizer.decode_tgt(decode_all(model, ids, cfg.decode, "cpu"))
    seen = []
    real = runner.decode_all

    def spy(model, sources, *args, **kwargs):
        seen.append(sources)
        return real(model, sources, *args, **kwargs)

    monkeypatch.setattr(runner, "decode_all", spy)
    result = cli("translate", tagged, *lines, "--tag", "<v>", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [" ".join(w.split()) for w in wanted]
    assert seen == [ids]  # the model was given the tag first
    assert_only_error(
        cli("translate", tagged, "x", "--tag", "<w>"),
        "--tag <w>: not a tag of this model (its tags: <v>)",
    )


def test_tag_on_a_model_without_tags_says_so(ckpt):
    assert_only_error(
        cli("translate", ckpt, "x", "--tag", "<bt>"),
        "--tag <bt>: not a tag of this model (it was trained without corpus tags)",
    )
