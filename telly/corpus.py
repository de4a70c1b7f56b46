"""The embedded code corpus: Python functions with docstrings, and what the probes need of each.

By default the functions come from the running Python's standard library (tests excluded), so the
whole study runs offline; any directory of Python files can replace it. Per function: its Python
token kinds, its AST-only structure-based traversal (SBT), its cyclomatic complexity (radon's), and
semantics-preserving variants that stand in for POJ-104 / BigCloneBench offline.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import keyword
import random
import sysconfig
import textwrap
import tokenize
import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from radon.visitors import ComplexityVisitor

from telly.backbones import cache_dir
from telly.jsonio import write_json
from telly.progress import progress_bar

CORPUS_FORMAT = 3  # bump when extraction changes, so stale caches are not reused
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
                 "lib2to3", "turtledemo", "venv", "ensurepip"}


@dataclass(frozen=True)
class TokenKind:
    text: str
    kind: str  # KEYWORD, NAME, NUMBER, STRING or OPERATOR
    start: int  # character offsets into the code the tokens came from
    end: int


@dataclass(frozen=True)
class CodeFunction:
    qualname: str
    module: str
    path: str
    line: int
    code: str
    code_without_doc: str
    docstring: str

    @cached_property
    def token_kinds(self) -> list[TokenKind]:
        return token_kinds(self.code_without_doc)

    @cached_property
    def sbt(self) -> list[str]:
        return structure_sequence(self.code_without_doc)

    @cached_property
    def complexity(self) -> int:
        return cyclomatic_complexity(self.code_without_doc)

    @property
    def complexity_class(self) -> int:
        """The paper's six classes: complexity 1, 2, 3, 4, 5 and >5 -> 0..5."""
        return min(self.complexity, 6) - 1


class Corpus(list):
    """A list of CodeFunction that knows where it came from and a fingerprint of its content."""

    def __init__(self, functions, source: str, skipped_files: int = 0):
        super().__init__(functions)
        self.source = source
        self.skipped_files = skipped_files
        digest = hashlib.sha256()
        for fn in self:
            digest.update(f"{fn.path}:{fn.qualname}\0{fn.code}\0".encode())
        self.fingerprint = digest.hexdigest()[:16]


# ---------------------------------------------------------------- extraction


def summary(docstring: str) -> str:
    """First paragraph of a docstring on one line (what code search and summarization target)."""
    paragraph = docstring.strip().split("\n\n")[0]
    return " ".join(paragraph.split())


def _functions_in_file(path: Path, root: Path, min_doc_words: int) -> list[CodeFunction]:
    source = path.read_text(encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        tree = ast.parse(source, filename=str(path))
    lines = source.splitlines(keepends=True)
    relative = path.relative_to(root).as_posix()
    module = relative[:-3].replace("/", ".").removesuffix(".__init__")
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qualname = f"{prefix}{child.name}"
                function = _extract(child, lines, module, relative, qualname, min_doc_words)
                if function is not None:
                    found.append(function)
                visit(child, f"{qualname}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


def _dedent(lines: list[str], column: int) -> str:
    """Remove the def's own indentation; textwrap.dedent fails on under-indented string lines."""
    def strip(line: str) -> str:
        if not line.strip():
            return "\n"
        return line[column:] if not line[:column].strip() else line.lstrip(" \t")

    return "".join(strip(line) for line in lines)


def _extract(node, lines, module, path, qualname, min_doc_words) -> CodeFunction | None:
    doc = ast.get_docstring(node, clean=True)
    if not doc or len(summary(doc).split()) < min_doc_words:
        return None
    start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    code = _dedent(lines[start - 1:node.end_lineno], node.col_offset)
    doc_node = node.body[0]
    # Drop the docstring's source lines; keep a `pass` if the docstring was the whole body.
    first, last = doc_node.lineno - start, doc_node.end_lineno - start
    code_lines = code.splitlines(keepends=True)
    body = code_lines[:first] + code_lines[last + 1:]
    if len(node.body) == 1:
        indent = code_lines[first][: len(code_lines[first]) - len(code_lines[first].lstrip())]
        body.insert(first, f"{indent}pass\n")
    try:  # the rare def whose lines cannot stand alone (e.g. odd continuation lines) is skipped
        ast.parse(code)
        ast.parse("".join(body))
    except SyntaxError:
        return None
    return CodeFunction(qualname=qualname, module=module, path=path, line=start, code=code,
                        code_without_doc="".join(body), docstring=summary(doc))


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py")
                  if not EXCLUDED_DIRS.intersection(p.relative_to(root).parts[:-1])
                  and not p.name.startswith("test_"))


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


_STDLIB: dict[tuple[str, int], Corpus] = {}  # stdlib corpora loaded in this process, by cache folder


def load_corpus(source: str | Path = "stdlib", min_doc_words: int = 3, *,
                cache: bool = True, progress: bool = True) -> Corpus:
    """Every function with a docstring of `min_doc_words`+ words, in a deterministic order.

    `source` is "stdlib" (the running Python's standard library, tests excluded) or a directory of
    Python files. Files that do not parse are skipped and counted (`Corpus.skipped_files`).
    The result is cached on disk, keyed by the files' paths, sizes and modification times.
    """
    # The standard library does not change under a running process: listing its files once is enough.
    memo_key = (str(cache_dir()), min_doc_words)
    if cache and str(source) == "stdlib" and memo_key in _STDLIB:
        return _STDLIB[memo_key]
    root = stdlib_root() if str(source) == "stdlib" else Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus source {source!r} is not a directory (expected 'stdlib' "
                                "or a directory of Python files)")
    files = python_files(root)
    if not files:
        raise ValueError(f"corpus directory {root} holds no Python files")
    stamp = hashlib.sha256(f"{CORPUS_FORMAT}:{min_doc_words}:{root.resolve()}".encode())
    for path in files:
        stat = path.stat()
        stamp.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    cache_file = cache_dir() / "corpus" / f"{stamp.hexdigest()[:24]}.json"
    label = "stdlib" if str(source) == "stdlib" else str(root)
    if cache and cache_file.exists():
        data = json.loads(cache_file.read_text())
        corpus = Corpus([CodeFunction(**f) for f in data["functions"]], label, data["skipped"])
        if str(source) == "stdlib":
            _STDLIB[memo_key] = corpus
        return corpus
    functions, skipped = [], 0
    for path in progress_bar(files, desc=f"parsing {label}", disable=not progress, unit="file"):
        try:
            functions.extend(_functions_in_file(path, root, min_doc_words))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            skipped += 1
    if not functions:
        raise ValueError(f"corpus {root}: no function has a docstring of {min_doc_words}+ words "
                         f"({len(files)} files read, {skipped} skipped as unparseable)")
    corpus = Corpus(functions, label, skipped)
    if cache:
        write_json(cache_file, {"functions": [asdict(f) for f in corpus], "skipped": skipped})
        if str(source) == "stdlib":
            _STDLIB[memo_key] = corpus
    return corpus


def _bucket(module: str) -> float:
    return int(hashlib.sha256(module.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def split(functions: list[CodeFunction], valid: float = 0.1, test: float = 0.1
          ) -> dict[str, list[CodeFunction]]:
    """Train/valid/test by a hash of the module, so no module (file) straddles two splits."""
    if not (valid >= 0 and test >= 0 and valid + test < 1):
        raise ValueError(f"split fractions must be >= 0 and sum below 1, got valid={valid}, test={test}")
    parts: dict[str, list[CodeFunction]] = {"train": [], "valid": [], "test": []}
    for fn in functions:
        b = _bucket(fn.module)
        parts["test" if b < test else "valid" if b < test + valid else "train"].append(fn)
    return parts


def sample(functions: list[CodeFunction], n: int | None, seed: int = 0) -> list[CodeFunction]:
    """A deterministic subset of n functions (all of them when n is None or larger)."""
    if n is None or n >= len(functions):
        return list(functions)
    picked = sorted(random.Random(seed).sample(range(len(functions)), n))
    return [functions[i] for i in picked]


# ---------------------------------------------------------------- per-function properties


def token_kinds(code: str) -> list[TokenKind]:
    """Python `tokenize` kinds of each code token, with character offsets into `code`."""
    line_starts = [0]
    for line in code.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    kinds = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type == tokenize.NAME:
                kind = "KEYWORD" if keyword.iskeyword(tok.string) else "NAME"
            elif tok.type == tokenize.NUMBER:
                kind = "NUMBER"
            elif tok.type == tokenize.STRING:
                kind = "STRING"
            elif tok.type == tokenize.OP:
                kind = "OPERATOR"
            else:
                continue
            start = line_starts[tok.start[0] - 1] + tok.start[1]
            end = line_starts[tok.end[0] - 1] + tok.end[1]
            kinds.append(TokenKind(tok.string, kind, start, end))
    except (tokenize.TokenError, IndentationError, SyntaxError) as exc:
        raise ValueError(f"cannot tokenize code: {exc}") from exc
    return kinds


def structure_sequence(code: str) -> list[str]:
    """AST-only structure-based traversal: `( Type ... ) Type` per node, no identifiers or values."""
    out: list[str] = []

    def walk(node: ast.AST) -> None:
        name = type(node).__name__
        out.extend(("(", name))
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.expr_context, ast.boolop, ast.operator, ast.unaryop, ast.cmpop)):
                walk(child)
            else:
                out.append(type(child).__name__)
        out.extend((")", name))

    tree = ast.parse(code)
    walk(tree.body[0] if len(tree.body) == 1 else tree)
    return out


def cyclomatic_complexity(code: str) -> int:
    """The cyclomatic complexity radon reports for the one function defined in `code` (the paper's
    tool): 1 + its own decision points. Nested functions and classes are radon blocks of their own
    and add nothing; decorators and default values are not walked; a `for`/`while`/`try` with an
    `else` counts it, and a `match` does not count its `case _`."""

    try:
        visitor = ComplexityVisitor.from_code(code)
    except SyntaxError as exc:
        raise ValueError(f"code does not parse (line {exc.lineno}: {exc.msg})") from exc
    if len(visitor.functions) != 1 or visitor.classes:
        found = [b.name for b in visitor.functions + visitor.classes]
        raise ValueError(f"expected code defining exactly one top-level function, found {found}")
    return visitor.functions[0].complexity


# ---------------------------------------------------------------- semantics-preserving variants


class VariantError(ValueError):
    """No semantics-preserving rewrite applies to this code."""


@dataclass
class _Renamer(ast.NodeTransformer):
    mapping: dict[str, str] = field(default_factory=dict)

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self.mapping.get(node.id, node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg = self.mapping.get(node.arg, node.arg)
        self.generic_visit(node)
        return node

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.ExceptHandler:
        node.name = self.mapping.get(node.name, node.name) if node.name else None
        self.generic_visit(node)
        return node


def _local_names(func: ast.FunctionDef) -> list[str]:
    """Parameters and assigned names of the function (nested scopes included), minus those
    declared global/nonlocal and those that a nested scope might capture by another meaning."""
    declared = {n for node in ast.walk(func) if isinstance(node, (ast.Global, ast.Nonlocal))
                for n in node.names}
    names = {a.arg for a in ast.walk(func.args) if isinstance(a, ast.arg)}
    names |= {n.id for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    # Names bound in class bodies are attributes; keyword names in calls are part of an interface.
    for node in ast.walk(func):
        if isinstance(node, ast.ClassDef):
            declared |= {n.id for stmt in node.body for n in ast.walk(stmt)
                         if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        elif isinstance(node, ast.keyword) and node.arg:
            declared.add(node.arg)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            declared.add(node.name)
    uses_frame = any(isinstance(n, ast.Name) and n.id in {"locals", "vars", "eval", "exec", "super"}
                     for n in ast.walk(func))
    if uses_frame:  # locals()/eval() and zero-argument super() see the original names
        return []
    return sorted(names - declared - {"self", "cls"})


class _LoopRewriter(ast.NodeTransformer):
    """`for x in it: body` (no else) -> an explicit iterator driven by `while True` / next()."""

    def __init__(self, fresh):
        self.fresh = fresh
        self.changed = 0

    def visit_For(self, node: ast.For):
        self.generic_visit(node)
        if node.orelse:
            return node
        iterator = self.fresh()
        self.changed += 1
        fetch = ast.Try(
            body=[ast.Assign(targets=[node.target],
                             value=ast.Call(ast.Name("next", ast.Load()), [ast.Name(iterator, ast.Load())], []))],
            handlers=[ast.ExceptHandler(type=ast.Name("StopIteration", ast.Load()), name=None,
                                        body=[ast.Break()])],
            orelse=[], finalbody=[])
        return [ast.Assign(targets=[ast.Name(iterator, ast.Store())],
                           value=ast.Call(ast.Name("iter", ast.Load()), [node.iter], [])),
                ast.While(test=ast.Constant(True), body=[fetch, *node.body], orelse=[])]


class _BranchSwapper(ast.NodeTransformer):
    """`if c: A else: B` -> `if not c: B else: A` (elif chains left alone)."""

    def __init__(self):
        self.changed = 0

    def visit_If(self, node: ast.If):
        self.generic_visit(node)
        if node.orelse and not (len(node.orelse) == 1 and isinstance(node.orelse[0], ast.If)):
            self.changed += 1
            test = node.test.operand if isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not) \
                else ast.UnaryOp(ast.Not(), node.test)
            return ast.If(test=test, body=node.orelse, orelse=node.body)
        return node


def make_variant(code: str, seed: int = 0) -> str:
    """A semantics-preserving rewrite of one function: every local renamed to an opaque name,
    `for` loops turned into `while` loops over an explicit iterator, if/else branches swapped
    under a negated test, docstring and comments dropped. The result compiles."""
    try:
        tree = ast.parse(textwrap.dedent(code))
    except SyntaxError as exc:
        raise VariantError(f"code does not parse (line {exc.lineno}: {exc.msg})") from exc
    funcs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if len(funcs) != 1:
        raise VariantError("expected exactly one function definition")
    func = funcs[0]
    if ast.get_docstring(func) is not None:
        func.body = func.body[1:] or [ast.Pass()]
    rng = random.Random(seed)
    taken = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    counter = iter(range(10**6))
    stems = ["v", "t", "x", "tmp", "val", "item", "arg", "w"]
    stem = rng.choice(stems)

    def fresh() -> str:
        while (name := f"{stem}{next(counter)}") in taken:
            pass
        taken.add(name)
        return name

    locals_ = _local_names(func)
    rng.shuffle(locals_)
    _Renamer({name: fresh() for name in locals_}).visit(func)
    loops = _LoopRewriter(fresh) if rng.random() < 0.85 else None
    if loops:
        loops.visit(func)
    branches = _BranchSwapper()
    branches.visit(func)
    if not locals_ and not (loops and loops.changed) and not branches.changed:
        raise VariantError(f"no rewrite applies to function {func.name!r}")
    variant = ast.unparse(ast.fix_missing_locations(tree))
    try:  # e.g. a nested function's `nonlocal` has no binding once it stands alone
        compile(variant, "<variant>", "exec")
    except SyntaxError as exc:
        raise VariantError(f"function {func.name!r} does not compile on its own: {exc.msg}") from exc
    return variant


# ---------------------------------------------------------------- near misses (hard negatives)

_SWAPS: dict[type, type] = {
    ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult,
    ast.And: ast.Or, ast.Or: ast.And,
}


def _mutation_sites(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    sites: list[tuple[ast.AST, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sites += [(node, "compare")] * any(type(op) in _SWAPS for op in node.ops)
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _SWAPS:
            sites.append((node, "operator"))
        elif isinstance(node, ast.BoolOp):
            sites.append((node, "boolean"))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            sites.append((node, "number"))
        elif isinstance(node, ast.If) and node.orelse and not isinstance(node.orelse[0], ast.If):
            sites.append((node, "branches"))
    return sites


def make_mutant(code: str, seed: int = 0) -> str:
    """A near miss: the same function, unparsed like a variant, with ONE behaviour-changing edit
    (a flipped comparison, a swapped arithmetic or boolean operator, an integer off by one, or
    if/else bodies exchanged without negating the test). It shares almost every token with the
    original, so string matching ranks it above a true variant: a hard negative."""
    try:
        tree = ast.parse(textwrap.dedent(code))
    except SyntaxError as exc:
        raise VariantError(f"code does not parse (line {exc.lineno}: {exc.msg})") from exc
    func = next((n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if func is None:
        raise VariantError("expected a function definition")
    if ast.get_docstring(func) is not None:
        func.body = func.body[1:] or [ast.Pass()]
    sites = _mutation_sites(func)
    if not sites:
        raise VariantError(f"no behaviour-changing edit applies to function {func.name!r}")
    node, kind = random.Random(seed).choice(sites)
    if kind == "compare":
        i = next(i for i, op in enumerate(node.ops) if type(op) in _SWAPS)
        node.ops[i] = _SWAPS[type(node.ops[i])]()
    elif kind in ("operator", "boolean"):
        node.op = _SWAPS[type(node.op)]()
    elif kind == "number":
        node.value += 1
    else:
        node.body, node.orelse = node.orelse, node.body
    return ast.unparse(ast.fix_missing_locations(tree))
