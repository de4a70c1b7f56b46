import ast
import textwrap

import pytest

from telly.corpus import (
    CodeFunction,
    VariantError,
    cyclomatic_complexity,
    load_corpus,
    make_variant,
    sample,
    split,
    structure_sequence,
    token_kinds,
)

SAMPLE_MODULE = '''
import os

def add_all(values, start=0):
    """Add every value to a running total."""
    total = start
    for v in values:
        if v is None:
            continue
        total += v
    return total

class Box:
    def first_even(self, items):
        """Return the first even item, or None."""
        for item in items:
            if item % 2 == 0:
                break
        else:
            return None
        return item

def short(x):
    """Too short"""
    return x

def broken_doc():
    """Only a docstring in this body."""
'''


@pytest.fixture()
def source_dir(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(SAMPLE_MODULE)
    (tmp_path / "pkg" / "bad.py").write_text("def broken(:\n    pass\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "skip_me.py").write_text(SAMPLE_MODULE)
    return tmp_path


def test_directory_corpus_extracts_documented_functions(source_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("TELLY_CACHE", str(tmp_path / "cache"))
    functions = load_corpus(source_dir, progress=False)
    assert [f.qualname for f in functions] == ["add_all", "Box.first_even", "broken_doc"]
    assert functions.skipped_files == 1  # bad.py does not parse; tests/ is excluded
    add_all = functions[0]
    assert add_all.module == "pkg.mod" and add_all.path == "pkg/mod.py" and add_all.line == 4
    assert add_all.docstring == "Add every value to a running total."
    assert '"""' not in add_all.code_without_doc and '"""' in add_all.code
    ast.parse(functions[2].code_without_doc)  # a docstring-only body keeps a `pass`
    again = load_corpus(source_dir, progress=False)
    assert again.fingerprint == functions.fingerprint and again == functions


def test_bad_sources_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_corpus(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no Python files"):
        load_corpus(tmp_path / "empty")


def test_token_kinds_offsets_point_into_the_code():
    code = "def f(x):\n    return x + 1 if x else 'no'\n"
    kinds = token_kinds(code)
    assert {(k.text, k.kind) for k in kinds} >= {("def", "KEYWORD"), ("f", "NAME"), ("+", "OPERATOR"),
                                                   ("1", "NUMBER"), ("'no'", "STRING")}
    assert all(code[k.start:k.end] == k.text for k in kinds)


def test_structure_sequence_has_no_identifiers_and_is_balanced():
    sbt = structure_sequence("def secret_name(a):\n    return a.attr + 1\n")
    assert "secret_name" not in sbt and "attr" not in sbt
    assert sbt[:2] == ["(", "FunctionDef"] and sbt[-2:] == [")", "FunctionDef"]
    assert sbt.count("(") == sbt.count(")")


@pytest.mark.parametrize("code, expected", [
    ("def f(x):\n    return x\n", 1),
    ("def f(x):\n    if x and x > 1:\n        return 1\n    return 2\n", 3),
    ("def f(xs):\n    return [x for x in xs if x if x > 2]\n", 4),
    ("def f(x):\n    try:\n        pass\n    except ValueError:\n        pass\n    while x:\n        x -= 1\n", 3),
])
def test_cyclomatic_complexity(code, expected):
    assert cyclomatic_complexity(code) == expected


@pytest.mark.parametrize("code, expected", [
    # A nested function's branches are its own block, not its parent's.
    ("def f(x):\n    def g():\n        if x:\n            return 1\n    return g\n", 1),
    # The `else` of a loop or a `try` is a decision point of its own.
    ("def f(xs):\n    for x in xs:\n        pass\n    else:\n        return 0\n", 3),
    ("def f():\n    try:\n        pass\n    except OSError:\n        pass\n    else:\n        pass\n", 3),
    # `case _` is the match's fall-through, not a branch.
    ("def f(x):\n    match x:\n        case 1:\n            pass\n        case _:\n            pass\n", 2),
    # Decorators and default values are not the function's control flow.
    ("@cache(1 if a else 2)\ndef f(x=1 if a else 2):\n    return x\n", 1),
])
def test_cyclomatic_complexity_follows_radon_where_a_hand_count_differs(code, expected):
    from radon.complexity import cc_visit

    assert cyclomatic_complexity(code) == cc_visit(code)[0].complexity == expected


def test_cyclomatic_complexity_needs_one_function():
    with pytest.raises(ValueError, match="exactly one top-level function"):
        cyclomatic_complexity("def f():\n    pass\ndef g():\n    pass\n")
    with pytest.raises(ValueError, match="does not parse"):
        cyclomatic_complexity("def f(:\n")


@pytest.mark.integration
def test_complexity_equals_radon_on_the_whole_stdlib_corpus(tmp_path, monkeypatch):
    """Each function's complexity, from its extracted code without docstring, equals radon's on
    the function's own module file (radon run as the paper ran it)."""
    from collections import defaultdict

    from radon.complexity import cc_visit
    from radon.visitors import Class

    from telly.corpus import stdlib_root

    monkeypatch.setenv("TELLY_CACHE", str(tmp_path / "cache"))
    functions = load_corpus("stdlib", progress=False)

    def blocks(found):
        for block in found:
            yield block
            yield from blocks(block.methods + block.inner_classes if isinstance(block, Class)
                              else block.closures)

    by_file = defaultdict(list)
    for fn in functions:
        by_file[fn.path].append(fn)
    compared, unknown = 0, []
    for path, fns in by_file.items():
        radon = {(b.lineno, b.name): b.complexity
                 for b in blocks(cc_visit((stdlib_root() / path).read_text(encoding="utf-8")))
                 if not isinstance(b, Class)}
        for fn in fns:
            definition = ast.parse(fn.code).body[0]
            key = (fn.line + definition.lineno - 1, definition.name)
            if key not in radon:
                unknown.append(fn.qualname)
                continue
            assert fn.complexity == radon[key], f"{path}:{fn.qualname}"
            compared += 1
    # radon keeps no block for a method of a class defined inside a function.
    assert all(".<locals>." in name for name in unknown) and len(unknown) < 0.005 * len(functions)
    assert compared > 5000


def test_complexity_class_caps_at_six():
    many_ifs = "def f(x):\n" + "".join(f"    if x == {i}:\n        return {i}\n" for i in range(9))
    fn = CodeFunction("f", "m", "m.py", 1, many_ifs, many_ifs, "doc")
    assert fn.complexity == 10 and fn.complexity_class == 5


VARIANT_CASES = [
    (SAMPLE_MODULE.split("class Box")[0].split("import os\n")[1], "add_all", [([1, None, 2],), ([], 5)]),
    ('''def classify(n, labels=("neg", "zero", "pos")):
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(labels[0])
        else:
            out.append(labels[2])
        if i > 6:
            break
    try:
        value = 1 / (n - 4)
    except ZeroDivisionError as err:
        value = str(err)
    return out, value, [k * 2 for k in range(n) if k != 2]
''', "classify", [(4,), (9,), (0,)]),
    ('''def nested(xs):
    count = 0
    def bump(step):
        nonlocal count
        count += step
    for x in xs:
        bump(x)
    return count
''', "nested", [([1, 2, 3],)]),
]


@pytest.mark.parametrize("code, name, calls", VARIANT_CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_variants_behave_like_the_original(code, name, calls, seed):
    variant = make_variant(code, seed)
    assert variant != code
    scope_a, scope_b = {}, {}
    exec(textwrap.dedent(code), scope_a)
    exec(variant, scope_b)
    for args in calls:
        assert scope_a[name](*args) == scope_b[name](*args)


def test_variant_renames_locals_but_not_interfaces():
    code = "def f(a, b):\n    total = a + b\n    return g(key=total, b=b)\n"
    variant = make_variant(code, 0)
    assert "total" not in variant and "key=" in variant and "b=" in variant


def test_variant_errors():
    with pytest.raises(VariantError, match="does not parse"):
        make_variant("def f(:\n")
    with pytest.raises(VariantError, match="no rewrite applies"):
        make_variant("def f():\n    return 1\n")


def test_split_is_by_module_and_sample_is_deterministic():
    functions = [CodeFunction(f"f{i}", f"mod{i % 37}", f"mod{i % 37}.py", i, "", "", "") for i in range(400)]
    parts = split(functions, valid=0.2, test=0.2)
    modules = {name: {f.module for f in part} for name, part in parts.items()}
    assert not modules["train"] & modules["test"] and not modules["valid"] & modules["test"]
    assert sum(map(len, parts.values())) == 400
    assert sample(functions, 10, seed=3) == sample(functions, 10, seed=3)
    assert sample(functions, 10, seed=3) != sample(functions, 10, seed=4)
    with pytest.raises(ValueError, match="sum below 1"):
        split(functions, valid=0.6, test=0.5)


@pytest.mark.integration
def test_stdlib_corpus():
    functions = load_corpus("stdlib", progress=False)
    assert len(functions) >= 5000
    assert len({f.path for f in functions}) > 300
    parts = split(functions)
    assert len(parts["test"]) > 300
    made = 0
    for fn in sample(functions, 200, seed=0):
        try:
            compile(make_variant(fn.code, 0), "<v>", "exec")
            made += 1
        except VariantError:
            pass
    assert made > 120
    assert {c for f in functions[:500] for c in [f.complexity_class]} == set(range(6))


@pytest.mark.parametrize("seed", range(6))
def test_mutants_change_behaviour_but_keep_the_tokens(seed):
    from telly.corpus import make_mutant

    code = VARIANT_CASES[1][0]
    mutant = make_mutant(code, seed)
    original = ast.unparse(ast.parse(code))
    assert mutant != original
    names = {t.text for t in token_kinds(original) if t.kind == "NAME"}
    assert names == {t.text for t in token_kinds(mutant) if t.kind == "NAME"}
    scope_a, scope_b = {}, {}
    exec(code, scope_a)
    exec(mutant, scope_b)

    def outcome(fn, n):
        try:
            return fn(n)
        except Exception as exc:  # a mutant may now fail where the original did not
            return type(exc).__name__

    outputs = [(outcome(scope_a["classify"], n), outcome(scope_b["classify"], n)) for n in (0, 4, 9, 12)]
    assert any(a != b for a, b in outputs)


def test_mutant_needs_an_editable_site():
    from telly.corpus import make_mutant

    with pytest.raises(VariantError, match="no behaviour-changing edit"):
        make_mutant("def f(x):\n    return x\n")
