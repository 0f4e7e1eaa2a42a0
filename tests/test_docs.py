"""The README and docs/ stay true: generated pages match their sources, links resolve,
no path leaves the repository, and what the README names in the code exists.

- docs/results.md and the README's headline table are what `bench/readme_tables.py`
  renders from bench/results/*.json; docs/configuration.md is what
  `scripts/config_docs.py` renders from core/config.py and configs/*.yaml.
- Every relative link in README.md and docs/*.md points at a file of the repository,
  and a `#section` in it at a heading of that file.
- The sections of docs/performance.md that the code cites by name exist.
- The README's tour names functions and classes that exist, and its YAML examples are
  valid configs.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import yaml

from transformer_cli.core.config_file import config_from_dict

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def load_script(relative: str):
    """A script of the repository (bench/, scripts/) as a module."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for line in FENCE.sub("", page.read_text("utf-8")).splitlines():
        if line.startswith("#"):
            base = slug(line.lstrip("#"))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> list[str]:
    """The link targets of a markdown page, outside code blocks and inline code."""
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text("utf-8")))
    return LINK.findall(text)


def test_the_results_tables_are_generated_from_the_results():
    tables = load_script("bench/readme_tables.py")
    stale = [str(p.relative_to(ROOT)) for p in tables.stale()]
    assert not stale, f"out of date: {stale}; run python bench/readme_tables.py"


def test_the_configuration_page_is_generated_from_the_schema():
    config_docs = load_script("scripts/config_docs.py")
    assert config_docs.is_current(), "docs/configuration.md: run python scripts/config_docs.py"


def test_every_option_says_what_it_does():
    config_docs = load_script("scripts/config_docs.py")
    missing = config_docs.undocumented()
    assert not missing, f"options with no comment in core/config.py: {missing}"


def test_the_field_comments_are_read_beside_above_and_over_a_run():
    config_docs = load_script("scripts/config_docs.py")
    source = (
        "class C:\n"
        "    # over a run\n"
        "    a: int = 1\n"
        "    b: int = 2\n"
        "    c: int = 3  # beside\n"
        "    d: int = 4\n"
        "\n"
        "    e: int = 5\n"
    )
    comments = config_docs.field_comments(ast.parse(source), source)["C"]
    assert comments == {"a": "over a run", "b": "over a run", "c": "beside", "d": "", "e": ""}


def test_every_relative_link_points_at_a_file_and_section():
    broken = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, section = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: {target}"
            if not resolved.is_relative_to(ROOT):
                broken.append(f"{where} (outside the repository)")
            elif not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif section and resolved.suffix == ".md" and section not in anchors(resolved):
                broken.append(f"{where} (no such section)")
    assert not broken, broken


def test_no_page_names_a_path_outside_the_repository():
    found = [
        f"{page.relative_to(ROOT)}:{n}"
        for page in PAGES
        for n, line in enumerate(page.read_text("utf-8").splitlines(), start=1)
        if re.search(r"\.\./shared|(?<![\w.])/tmp/", line)
    ]
    assert not found, found


def test_the_performance_sections_the_code_cites_exist():
    headings = {
        line.lstrip("#").strip()
        for line in (ROOT / "docs" / "performance.md").read_text("utf-8").splitlines()
        if line.startswith("#")
    }
    missing = []
    for path in sorted((ROOT / "transformer_cli").rglob("*.py")):
        text = re.sub(r"\s*\n\s*#?\s*", " ", path.read_text("utf-8"))  # comments joined
        for name in re.findall(r'docs/performance\.md,? (?:section )?\(?"([^"]+)"', text):
            if name not in headings:
                missing.append(f"{path.relative_to(ROOT)}: {name!r}")
    assert not missing, missing


def defines(path: Path, dotted: str) -> bool:
    """Whether `path` defines a function, class or name `dotted` (Class.method too)."""
    body = ast.parse(path.read_text("utf-8")).body
    for part in dotted.split("."):
        for node in body:
            named = isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == part
            assigned = isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == part for t in node.targets
            )
            if named or assigned:
                body = getattr(node, "body", [])
                break
        else:
            return False
    return True


def test_the_tour_names_code_that_exists():
    text = (ROOT / "README.md").read_text("utf-8")
    refs = re.findall(r"`((?:\w+/)+\w+\.py): ([\w.]+)`", text)
    assert len(refs) > 10, "the tour's `file.py: name` references were not found"
    missing = [
        f"{file}: {name}"
        for file, name in refs
        if not defines(ROOT / "transformer_cli" / file, name)
    ]
    assert not missing, missing


def test_the_yaml_examples_are_valid_configs():
    for page in PAGES:
        for block in re.findall(r"^```yaml\n(.*?)^```", page.read_text("utf-8"), re.S | re.M):
            raw = yaml.safe_load(block)
            config_from_dict({"run_dir": "runs/example", **raw}, source=page.name)
