"""The package's shape, held by tests so it cannot rot.

- Dependencies point one way: core <- model <- data <- decoding <- training <- evaluation
  <- inspect, export <- cli, and fast/ (speed only) imports core alone. Within that order
  there are no cycles, between packages or between modules.
- `import transformer_cli.model` loads none of the CLI's or data pipeline's libraries.
- Every fast/ module names its plain twin and the test that proves them equal.
- Modules stay under ~400 lines and functions under ~60.
- tests/ follows the package, and no test module imports another one or conftest
  (what several need is in tests/helpers.py).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "transformer_cli"
TESTS = Path(__file__).resolve().parent

# each package and what it may import (besides itself); the root holds only __version__
LAYERS = {
    "core": set(),
    "fast": {"core"},
    "model": {"core", "fast"},
    "data": {"core"},
    "decoding": {"core", "fast", "model", "data"},
    "training": {"core", "fast", "model", "data", "decoding"},
    "evaluation": {"core", "fast", "model", "data", "decoding", "training"},
    "inspect": {"core", "fast", "model", "data", "decoding", "training", "evaluation"},
    "export": {"core", "fast", "model", "data", "decoding", "training", "evaluation"},
    "cli": {
        "core",
        "fast",
        "model",
        "data",
        "decoding",
        "training",
        "evaluation",
        "inspect",
        "export",
    },
}

# fast/ module -> (its plain twin, the test file and test that prove them equal)
FAST_TWINS = {
    "allocator": (
        "the system malloc",
        "fast/test_allocator.py",
        "test_the_malloc_changes_no_number",
    ),
    "dropout": (
        "torch.nn.Dropout, in distribution",
        "fast/test_dropout.py",
        "test_keep_rate_is_one_minus_p_in_every_lane",
    ),
    "fused_loss": (
        "training.loss.masked_cross_entropy",
        "training/test_loss.py",
        "test_fused_loss_equals_the_plain_one_for_any_chunking",
    ),
    "prefetch": (
        "collating each update's batches in train_step",
        "training/test_prefetch.py",
        "test_training_with_prefetch_gives_the_same_weights",
    ),
    "packing": (
        "F.linear",
        "fast/test_packing.py",
        "test_packing_keeps_the_parameters_and_the_numbers",
    ),
    "nucleus": (
        "decoding.sampling.ordered_by_sorting",
        "decoding/test_sampling.py",
        "test_the_nucleus_window_equals_sorting_the_whole_vocabulary",
    ),
    "sdpa": (
        "model.attention.attend_math",
        "model/test_model.py",
        "test_math_attention_equals_sdpa",
    ),
}

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# drawing code and data tables read best whole (the house style's stated exception)
LONG_FUNCTIONS_ALLOWED = {"inspect/plots.py", "data/toy.py"}


def modules() -> dict[str, Path]:
    """Dotted name below transformer_cli -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(path: Path) -> set[str]:
    """The transformer_cli modules `path` imports, anywhere in it (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "transformer_cli":
                names.update(f"transformer_cli.{a.name}" for a in node.names)
            elif node.module.startswith("transformer_cli."):
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("transformer_cli."))
    known = modules()
    return {n.removeprefix("transformer_cli.") for n in names} & set(known)


def graph() -> dict[str, set[str]]:
    return {name: imports_of(path) - {name} for name, path in modules().items()}


def package_of(module: str) -> str:
    return module.split(".")[0] if module else ""


def test_every_subpackage_has_a_place_in_the_layers():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS)


def test_dependencies_point_one_way():
    wrong = []
    for module, deps in graph().items():
        own = package_of(module)
        if own not in LAYERS:
            continue  # the root: __init__ and __main__
        for dep in deps:
            other = package_of(dep)
            if other != own and other in LAYERS and other not in LAYERS[own]:
                wrong.append(f"{module} imports {dep}")
    assert not wrong, "; ".join(sorted(wrong))


def test_no_module_imports_form_a_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_the_checker_sees_a_wrong_import(tmp_path, monkeypatch):
    """The layer test would catch model/ importing data/: the checker itself works."""
    fake = tmp_path / "transformer_cli"
    (fake / "model").mkdir(parents=True)
    (fake / "data").mkdir()
    for init in (
        fake / "__init__.py",
        fake / "model" / "__init__.py",
        fake / "data" / "__init__.py",
    ):
        init.write_text("")
    (fake / "data" / "corpus.py").write_text("")
    (fake / "model" / "bad.py").write_text("from transformer_cli.data import corpus\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert graph()["model.bad"] == {"data.corpus", "data"}
    with pytest.raises(AssertionError, match="model.bad imports data"):
        test_dependencies_point_one_way()


HEAVY = ["sentencepiece", "yaml", "typer", "datasets", "matplotlib", "tqdm", "sacrebleu"]


def loaded_by(statement: str) -> set[str]:
    """Which of HEAVY a fresh interpreter holds after `statement`."""
    code = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_importing_the_model_loads_no_cli_or_data_libraries():
    # torch itself may bring some in (it imports tqdm where installed): those are not ours
    ours = loaded_by("import transformer_cli.model.transformer") - loaded_by("import torch")
    assert ours == set()


def test_every_fast_module_names_its_twin_and_the_test_proving_them_equal():
    fast = {p.stem for p in (PACKAGE / "fast").glob("*.py") if p.stem != "__init__"}
    assert fast == set(FAST_TWINS), "register each fast/ module's plain twin in FAST_TWINS"
    for module, (_twin, test_file, test_name) in FAST_TWINS.items():
        tree = ast.parse((TESTS / test_file).read_text("utf-8"))
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert test_name in names, f"fast/{module}.py: {test_file}::{test_name} is missing"


def test_modules_stay_short():
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text("utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_functions_stay_short():
    long = []
    for name, path in modules().items():
        if str(path.relative_to(PACKAGE)) in LONG_FUNCTIONS_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} ({length})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_tests_follow_the_package():
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and list(p.glob("test_*.py"))}
    # faults/: crash, corruption and lock tests across every command
    assert folders - {"faults"} <= set(LAYERS) - {"cli"}, folders


def test_no_test_module_imports_another_or_conftest():
    wrong = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            wrong += [
                f"{path.relative_to(TESTS)}: {n}"
                for n in names
                if n == "conftest" or n.split(".")[-1].startswith("test_")
            ]
    assert not wrong, wrong
