"""`tfx evaluate` and checkpoint averaging: reports, files, selection, and one-line errors."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from helpers import assert_only_error, cli, make_tiny_run

from transformer_cli.core import runtime
from transformer_cli.core.checkpoint import load_checkpoint, save_checkpoint
from transformer_cli.data import store
from transformer_cli.decoding.loading import load_model
from transformer_cli.evaluation import average

STEPS = (10, 20, 30)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, toy_pairs):
    """A run with three (identical) step checkpoints and last.pt hard-linked to the newest."""
    cfg = make_tiny_run(tmp_path_factory.mktemp("evaluate"), toy_pairs, steps=STEPS)
    directory = Path(cfg.run_dir) / "checkpoints"
    os.link(directory / "ckpt_00000030.pt", directory / "last.pt")
    return cfg


@pytest.fixture
def ckpt_dir(tiny) -> Path:
    return Path(tiny.run_dir) / "checkpoints"


def evaluate_json(*args: str) -> dict:
    result = cli("evaluate", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_directory_is_scored_with_sane_fields_and_files(tiny, ckpt_dir, tmp_path):
    report = evaluate_json(str(ckpt_dir), "--output-dir", str(tmp_path))
    references = store.load_text(tiny.run_dir, "test", "tgt")
    results = report["results"]
    # last.pt is the same file as ckpt_00000030.pt: scored once
    assert sorted(Path(r["checkpoint"]).name for r in results) == [
        "ckpt_00000010.pt",
        "ckpt_00000020.pt",
        "ckpt_00000030.pt",
    ]
    assert sorted(r["step"] for r in results) == list(STEPS)
    assert [r["bleu"] for r in results] == sorted((r["bleu"] for r in results), reverse=True)
    for r in results:
        assert 0 <= r["bleu"] <= 100
        assert 0 <= r["chrf"] <= 100
        assert r["loss"] > 0
        assert r["ppl"] >= 1
        assert r["sentences"] == len(references) == report["sentences"]
        assert r["decode_seconds"] > 0
        assert r["sentences_per_s"] > 0
        hyps = Path(r["hyp"]).read_text("utf-8").split("\n")
        assert len(hyps) == len(references) + 1
        assert hyps[-1] == ""
        assert Path(r["hyp"]).parent == tmp_path
    assert report["bleu_signature"].startswith("nrefs:1|case:mixed")
    saved = json.loads((tmp_path / "report.test.json").read_text("utf-8"))
    assert saved == report
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temp files


def test_hypotheses_are_what_translate_gives(tiny, ckpt_dir, tmp_path):
    ckpt = str(ckpt_dir / "ckpt_00000010.pt")
    report = evaluate_json(ckpt, "--split", "valid", "--output-dir", str(tmp_path))
    sources = store.load_text(tiny.run_dir, "valid", "src")
    translated = cli("translate", ckpt, input="".join(s + "\n" for s in sources).encode())
    assert Path(report["results"][0]["hyp"]).read_text("utf-8") == translated.stdout


def test_the_table_names_each_checkpoint_and_the_signatures(ckpt_dir, tmp_path):
    result = cli("evaluate", str(ckpt_dir / "ckpt_*.pt"), "--output-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["checkpoint", "step", "BLEU", "chrF"]
    assert sum(1 for line in lines if "ckpt_000000" in line) == 3
    assert any(line.startswith("BLEU: nrefs:1") for line in lines)
    assert any(line.startswith("chrF: nrefs:1") for line in lines)


def test_the_default_output_dir_is_the_run_dirs_eval(tiny, ckpt_dir):
    evaluate_json(str(ckpt_dir / "ckpt_00000020.pt"), "--split", "valid")
    eval_dir = Path(tiny.run_dir) / "eval"
    assert (eval_dir / "report.valid.json").is_file()
    assert (eval_dir / "ckpt_00000020.valid.hyp").is_file()


def test_raw_files_with_beam_search(ckpt_dir, tmp_path):
    src, ref = tmp_path / "in.en", tmp_path / "ref.de"
    src.write_text("the dog sleeps .\n\na cat sees the man .\n", "utf-8")
    ref.write_text("der Hund schläft .\n\neine Katze sieht den Mann .\n", "utf-8")
    ckpt = str(ckpt_dir / "ckpt_00000010.pt")
    out = str(tmp_path / "eval")
    report = evaluate_json(
        ckpt, "--src", str(src), "--ref", str(ref), "--beam", "3", "--early-stop",
        "--output-dir", out, "--device", "cpu",
    )  # fmt: skip
    (result,) = report["results"]
    assert result["sentences"] == 3
    assert report["decode"]["beam"] == 3
    assert report["decode"]["early_stop"] is True
    # auto, on the CPU: bf16 where it has bf16 units
    assert report["precision"] == runtime.cpu_auto_precision(runtime.cpu_math())[0]
    assert Path(result["hyp"]).name == "ckpt_00000010.in.en.hyp"
    assert len(Path(result["hyp"]).read_text("utf-8").splitlines()) == 3


def test_average_option_adds_the_averaged_checkpoint(ckpt_dir, tmp_path):
    report = evaluate_json(str(ckpt_dir), "--average", "2", "--output-dir", str(tmp_path))
    averaged = tmp_path / "avg_last2.pt"
    assert averaged.is_file()
    assert str(averaged) in [r["checkpoint"] for r in report["results"]]
    state = load_checkpoint(averaged)
    assert [a["step"] for a in state["averaged_from"]] == [20, 30]
    # the three checkpoints are identical, so everything scored must agree exactly
    assert len({(r["bleu"], r["chrf"], r["loss"]) for r in report["results"]}) == 1


def test_the_report_names_the_first_checkpoints_data(tiny, toy_pairs, tmp_path):
    """Checkpoints of two runs are scored on each run's own split; the report's summary
    (data, sentences) is the first checkpoint's, whichever run comes last."""
    other = make_tiny_run(tmp_path / "other", toy_pairs[:290])  # a 20-line test split
    ckpt = {
        cfg.run_dir: str(Path(cfg.run_dir) / "checkpoints" / "ckpt_00000010.pt")
        for cfg in (tiny, other)
    }
    sizes = {tiny.run_dir: 30, other.run_dir: 20}
    for order in ((tiny.run_dir, other.run_dir), (other.run_dir, tiny.run_dir)):
        report = evaluate_json(*(ckpt[r] for r in order), "--output-dir", str(tmp_path / "eval"))
        assert report["data"] == f"{store.cache_dir(order[0])} (test)"
        assert report["sentences"] == sizes[order[0]]
        results = {r["checkpoint"]: r for r in report["results"]}
        for run_dir in order:  # each result names its own data
            assert results[ckpt[run_dir]]["data"] == f"{store.cache_dir(run_dir)} (test)"
            assert results[ckpt[run_dir]]["sentences"] == sizes[run_dir]


# ----------------------------------------------------------------------------- averaging


def test_averaging_identical_checkpoints_returns_the_same_weights(ckpt_dir, tmp_path):
    output = tmp_path / "avg.pt"
    result = cli("average", str(ckpt_dir / "ckpt_*.pt"), "--output", str(output))
    assert result.exit_code == 0, result.output
    original = load_checkpoint(ckpt_dir / "ckpt_00000010.pt")["model"]
    averaged = load_checkpoint(output)
    assert averaged["model"].keys() == original.keys()
    assert all(torch.equal(averaged["model"][k], v) for k, v in original.items())
    assert "optimizer" not in averaged
    assert averaged["progress"]["step"] == 30
    # self-contained: it loads and translates on its own
    model, _, _ = load_model(output, "cpu")
    assert cli("translate", str(output), "a dog .").exit_code == 0


def test_average_of_two_states_is_their_mean_and_keeps_ties():
    torch.manual_seed(0)
    shared_a, shared_b = torch.randn(4, 3), torch.randn(4, 3)
    a = {"model": {"emb": shared_a, "out": shared_a, "count": torch.tensor(1)}}
    b = {"model": {"emb": shared_b, "out": shared_b, "count": torch.tensor(2)}}
    mean = average.average_weights([a, b])
    assert torch.allclose(mean["emb"], (shared_a + shared_b) / 2)
    assert mean["emb"].data_ptr() == mean["out"].data_ptr()  # a tied weight stays tied
    assert int(mean["count"]) == 2  # integer buffers come from the newest
    with pytest.raises(ValueError, match="different sets of weights"):
        average.average_weights([a, {"model": {"emb": torch.zeros(2)}}])


def test_last_steps_counts_each_step_once(ckpt_dir):
    paths = average.expand([str(ckpt_dir)])
    assert len(paths) == 3  # last.pt is a link to ckpt_00000030.pt
    chosen = average.last_steps(paths, 2)
    assert [p.name for p in chosen] == ["ckpt_00000020.pt", "ckpt_00000030.pt"]


# ----------------------------------------------------------------------------- errors


def test_evaluate_errors_are_one_line(ckpt_dir, tmp_path):
    ckpt = str(ckpt_dir / "ckpt_00000010.pt")
    src, ref = tmp_path / "a.txt", tmp_path / "b.txt"
    src.write_text("one\ntwo\n", "utf-8")
    ref.write_text("eins\n", "utf-8")
    unprepared = tmp_path / "config.yaml"
    unprepared.write_text(f"run_dir: {tmp_path / 'empty_run'}\n", "utf-8")
    cases = [
        ([str(tmp_path / "nothing_*.pt")], "no checkpoint matches"),
        ([str(tmp_path / "missing.pt")], "no such checkpoint"),
        ([ckpt, "--src", str(src), "--ref", str(ref)], "has 2 lines but --ref"),
        ([ckpt, "--src", str(src)], "--src and --ref go together"),
        ([ckpt, "--split", "train"], "--split train"),
        ([ckpt, "--config", str(unprepared)], "no prepared data"),
        ([ckpt, "--average", "5"], "--average 5 needs 5 checkpoints"),
        ([ckpt, "--beam", "0"], "--beam must be >= 1"),
        ([str(tmp_path)], "no *.pt checkpoints"),
    ]
    for args, expected in cases:
        assert_only_error(cli("evaluate", *args), expected)
    assert_only_error(
        cli("average", str(tmp_path / "x*.pt"), "-o", str(tmp_path / "o.pt")),
        "no checkpoint matches",
    )


def test_precision_comes_from_the_flag_or_the_config(ckpt_dir, tmp_path):
    ckpt = str(ckpt_dir / "ckpt_00000010.pt")
    report = evaluate_json(ckpt, "--precision", "bf16", "--output-dir", str(tmp_path / "a"))
    assert report["precision"] == "bf16"
    (result,) = report["results"]
    assert math.isfinite(result["loss"])
    assert 0 <= result["bleu"] <= 100
    # a checkpoint whose config asks for bf16 decodes in bf16 without the flag
    state = load_checkpoint(ckpt)
    state["config"]["decode"]["precision"] = "bf16"
    bf16_ckpt = tmp_path / "bf16.pt"
    save_checkpoint(bf16_ckpt, state)
    report = evaluate_json(str(bf16_ckpt), "--output-dir", str(tmp_path / "b"))
    assert report["precision"] == "bf16"
    report = evaluate_json(
        str(bf16_ckpt), "--precision", "fp32", "--output-dir", str(tmp_path / "c")
    )
    assert report["precision"] == "fp32"
