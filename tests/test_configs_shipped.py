"""The shipped configs/*.yaml: each loads cleanly and ends on its own, and so does every
`tfx train` command their header comments show."""

from __future__ import annotations

import itertools
import shlex
from pathlib import Path

import pytest

from transformer_cli.core.config import Config, TrainConfig
from transformer_cli.core.config_file import load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def ending(t: TrainConfig) -> list[str]:
    """The limits that stop a run; empty when it would train until it is killed."""
    limits = {"max_steps": t.max_steps, "max_epochs": t.max_epochs}
    limits |= {"max_minutes": t.max_minutes, "patience": t.patience}
    return [f"train.{name}" for name, value in limits.items() if value > 0]


def header_commands(path: Path) -> list[list[str]]:
    """The `tfx ...` commands in a config's header comment, continuation lines joined."""
    header = []
    for line in path.read_text("utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    commands, current = [], ""
    for line in header:
        if current or line.startswith("tfx "):
            current += line.removesuffix("\\") + " "
            if not line.endswith("\\"):
                commands.append(shlex.split(current))
                current = ""
    return commands


def overrides(command: list[str]) -> list[str]:
    return [value for flag, value in itertools.pairwise(command) if flag == "--set"]


def test_there_are_configs_to_check():
    names = {p.name for p in CONFIGS}
    assert {"toy.yaml", "multi30k_de_en.yaml", "multi30k_en_de.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_has_an_ending(path):
    cfg = load_config(path)
    assert ending(cfg.train), f"{path.name} trains until it is killed"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_commands_in_a_header_load_and_end(path):
    for command in header_commands(path):
        assert command[1] in {"prepare", "train", "evaluate", "translate"}, command
        assert command[command.index("--config") + 1] == f"configs/{path.name}", command
        cfg = load_config(path, overrides(command))
        assert ending(cfg.train), command


def test_the_header_parser_joins_continued_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "# title\n#   tfx train --config configs/c.yaml --set a=1 \\\n#     --set b=2\nrun_dir: r\n"
    )
    assert header_commands(path) == [
        ["tfx", "train", "--config", "configs/c.yaml", "--set", "a=1", "--set", "b=2"]
    ]


def without(cfg: Config, section: str, *names: str) -> dict:
    return {k: v for k, v in vars(getattr(cfg, section)).items() if k not in names}


def test_the_multi30k_cpu_recipe_is_the_full_config_but_for_its_recipe():
    full = load_config(CONFIG_DIR / "multi30k_de_en.yaml")
    cpu = load_config(CONFIG_DIR / "multi30k_de_en_cpu12.yaml")
    assert cpu.data == full.data
    assert cpu.tokenizer == full.tokenizer
    assert cpu.decode == full.decode
    assert without(cpu, "model", "norm", "dropout") == without(full, "model", "norm", "dropout")
    assert (cpu.model.norm, cpu.model.dropout) == ("pre", 0.0)
    assert cpu.train.max_minutes == 12
    # the recipe the other Multi30k configs' headers give as --set lines is this one
    en_de = CONFIG_DIR / "multi30k_en_de.yaml"
    (command,) = [c for c in header_commands(en_de) if c[1] == "train"]
    recipe = load_config(en_de, overrides(command))
    assert (recipe.model.norm, recipe.model.dropout) == (cpu.model.norm, cpu.model.dropout)
    fields = ("max_minutes", "warmup", "noam_factor", "eval_every", "batch_tokens")
    assert [getattr(recipe.train, f) for f in fields] == [getattr(cpu.train, f) for f in fields]


@pytest.mark.parametrize("name", ["multi30k_de_en_gpu.yaml", "multi30k_de_en_base_gpu.yaml"])
def test_the_gpu_configs_are_the_full_configs_data_with_gpu_sized_batches(name):
    full = load_config(CONFIG_DIR / "multi30k_de_en.yaml")
    gpu = load_config(CONFIG_DIR / name)
    assert gpu.data == full.data
    assert gpu.tokenizer == full.tokenizer
    assert gpu.decode == full.decode
    assert (gpu.train.device, gpu.train.precision) == ("cuda", "bf16")
    assert gpu.train.batch_tokens * gpu.train.accum_steps >= 16_000  # tens of thousands
    assert gpu.train.patience > 0  # ends on validation BLEU, not on a clock
    assert gpu.train.warmup < full.train.warmup  # fewer, bigger steps


def test_the_gpu_configs_sizes_are_the_small_model_and_the_papers_base():
    full = load_config(CONFIG_DIR / "multi30k_de_en.yaml")
    small = load_config(CONFIG_DIR / "multi30k_de_en_gpu.yaml")
    base = load_config(CONFIG_DIR / "multi30k_de_en_base_gpu.yaml")
    shape = ("d_model", "heads", "enc_layers", "dec_layers", "d_ff")
    assert [getattr(small.model, f) for f in shape] == [getattr(full.model, f) for f in shape]
    assert [getattr(base.model, f) for f in shape] == [512, 8, 6, 6, 2048]
