"""telly calls only the public API of other libraries: a private `_name` can change in any release
(transformers 5.25 changed BertModel._create_attention_masks under the prefix cache)."""
import ast
from pathlib import Path

import telly

ROOT = Path(telly.__file__).parent

# (file relative to telly/, private name): why it cannot be avoided. Empty: nothing is excused.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _telly_classes() -> set[str]:
    names = set()
    for path in ROOT.rglob("*.py"):
        names |= {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)}
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str, own: set[str]) -> list[tuple[int, str]]:
    """(line, name) of every private name of an object telly does not own in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and (owner.id in {"self", "cls"} | own)):
                found.append((node.lineno, node.attr))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in {"getattr", "hasattr", "setattr", "delattr"} and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value)):
            found.append((node.lineno, node.args[1].value))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and not (node.module or "").startswith("telly"):
            parts = (node.module or "").split(".")
            found += [(node.lineno, part) for part in parts if _private(part)]
            found += [(node.lineno, alias.name) for alias in node.names if _private(alias.name)]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names
                      if not alias.name.startswith("telly") and any(_private(p) for p in alias.name.split("."))]
    return found


def test_the_checker_finds_each_kind_of_private_access():
    source = (
        "import torch._dynamo\nfrom transformers.modeling_utils import _init_weights\n"
        "from transformers._x import y\nmodel._create_attention_masks(mask)\nhasattr(model, '_create_attention_masks')\n"
        "self._own = 1\ncls._own\nPrefixCache._tmp\nx.__class__\ngetattr(m, '__name__')\nfrom telly.x import _ours\n"
    )
    names = [name for _, name in private_uses(source, own={"PrefixCache"})]
    assert names == ["torch._dynamo", "_init_weights", "_x", "_create_attention_masks", "_create_attention_masks"]


def test_telly_uses_no_private_name_of_another_library():
    own = _telly_classes()
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        for line, name in private_uses(path.read_text(), own):
            if (relative, name) not in EXCEPTIONS:
                offenders.append(f"telly/{relative}:{line} uses {name}")
    assert not offenders, "private names of other libraries (use their public API):\n" + "\n".join(offenders)
