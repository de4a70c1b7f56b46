"""Loaders for the real datasets of the Telly study, in their published (CodeXGLUE) formats.

Each loader takes a local file or directory laid out as the dataset is published, or a Hugging Face
hub dataset id (read through `datasets`, only when the hub is allowed), and returns `Records`: a list
of frozen, typed records in file order that also carries the dataset name, split, source and a sha256
fingerprint of the content read (store it in run records as the corpus fingerprint).
A malformed record raises ValueError naming the file, line and field.
"""
from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from telly.progress import progress_bar


class Digest(Protocol):
    """What the loaders need of a hashlib object (hashlib names no public type for it)."""

    def update(self, data: bytes, /) -> None: ...


class DatasetUnavailable(RuntimeError):
    """A dataset that cannot be had here: the message names it and says how to provide it."""


@dataclass(frozen=True)
class CodeDocRecord:
    """A function with its documentation (CodeSearchNet): code search and code summarization."""

    code: str
    docstring: str
    name: str
    path: str
    code_tokens: tuple[str, ...]
    docstring_tokens: tuple[str, ...]
    language: str


@dataclass(frozen=True)
class LabelledProgram:
    """A POJ-104 program; programs with the same label solve the same problem."""

    code: str
    label: int
    index: int


@dataclass(frozen=True)
class ClonePair:
    """A BigCloneBench pair of Java functions; label 1 when they are semantic clones."""

    code_a: str
    code_b: str
    label: int
    idx_a: str
    idx_b: str


@dataclass(frozen=True)
class NlCodePair:
    """A CONCODE example: a natural-language description (with class context) and its Java method."""

    nl: str
    code: str


@dataclass(frozen=True)
class CompletionRecord:
    """A line-completion example: the code before the cursor and the rest of the line."""

    context: str
    next_line: str


R = TypeVar("R")


class Records(list, Generic[R]):
    """Loaded records in a deterministic order, with where they came from and a content fingerprint."""

    def __init__(self, records: list[R], *, dataset: str, split: str, source: str, fingerprint: str):
        super().__init__(records)
        self.dataset, self.split, self.source, self.fingerprint = dataset, split, source, fingerprint

    def describe(self) -> dict:
        return {"dataset": self.dataset, "split": self.split, "source": self.source,
                "fingerprint": self.fingerprint, "size": len(self)}


HUB_IDS = {  # the CodeXGLUE copies on the Hugging Face hub, for users who have hub access
    "codesearchnet": "google/code_x_glue_ct_code_to_text",
    "poj104": "google/code_x_glue_cc_clone_detection_poj104",
    "bigclonebench": "google/code_x_glue_cc_clone_detection_big_clone_bench",
    "concode": "google/code_x_glue_tc_text_to_code",
    "line-completion": "google/code_x_glue_cc_code_completion_line",
}
CODESEARCHNET_LANGUAGES = ("python", "ruby", "java", "javascript", "go", "php")
COMPLETION_CORPORA = {"java": "javaCorpus", "python": "py150"}  # CodeXGLUE directory per language
SPLITS = {"train": ("train",), "valid": ("valid", "dev", "validation"), "test": ("test",)}


# Field converters: return the typed value or raise TypeError(what was expected).
def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


def _tokens(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(token, str) for token in value):
        raise TypeError("a list of strings")
    return tuple(value)


def _integer(value: Any) -> int:
    if isinstance(value, int):  # bool included: the hub stores BigCloneBench labels as bool
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise TypeError("an integer or a string of digits")


def _binary(value: Any) -> int:
    value = _integer(value)
    if value not in (0, 1):
        raise TypeError("0 or 1")
    return value


def _identifier(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise TypeError("a non-empty string or an integer")
    return str(value)


class _Field(NamedTuple):
    attr: str  # record attribute
    keys: tuple[str, ...]  # JSON keys, first present wins (local format first, then hub aliases)
    convert: Callable[[Any], Any]


@dataclass(frozen=True)
class _Spec:
    name: str
    record: type
    fields: tuple[_Field, ...]
    patterns: tuple[str, ...]  # globs under a local directory; {split}, {language}, {corpus} filled in
    layout: str  # the published layout, for error messages
    hub_splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "valid": "validation", "test": "test"})
    hub_fields: tuple[_Field, ...] | None = None  # when the hub schema differs from the files
    read_local: Callable | None = None  # for layouts that are not one jsonl stream per split


def _describe(value: Any) -> str:
    shown = repr(value)
    return f"{type(value).__name__} {shown if len(shown) <= 60 else shown[:57] + '...'}"


def _convert(row: Any, fields: tuple[_Field, ...], where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {_describe(row)}")
    values = {}
    for spec in fields:
        key = next((key for key in spec.keys if key in row), None)
        if key is None:
            raise ValueError(f"{where}: missing field {spec.keys[0]!r} (fields present: {', '.join(sorted(row))})")
        try:
            values[spec.attr] = spec.convert(row[key])
        except TypeError as exc:
            raise ValueError(f"{where}: field {key!r}: expected {exc}, got {_describe(row[key])}") from None
    return values


def _lines(path: Path, digest: Digest, label: str) -> Iterator[tuple[str, str]]:
    """(where, text) for each non-blank line of a text or .gz file; hashes every byte it reads."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(progress_bar(handle, desc=f"{label} {path.name}", unit=" lines",
                                          leave=False, delay=2.0), start=1):
            digest.update(raw)
            where = f"{path}, line {number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
            if text.strip():
                yield where, text


def _json_rows(path: Path, digest: Digest, label: str) -> Iterator[tuple[str, Any]]:
    for where, text in _lines(path, digest, label):
        try:
            yield where, json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def _natural(path: Path) -> list:
    """Sort key that puts python_train_2 before python_train_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _find(spec: _Spec, root: Path, patterns: tuple[str, ...], split: str, variables: dict) -> list[Path]:
    tried = []
    for pattern in patterns:
        for name in SPLITS[split]:
            glob = pattern.format(split=name, **variables)
            if glob in tried:
                continue
            if found := sorted((path for path in root.glob(glob) if path.is_file()), key=_natural):
                return found
            tried.append(glob)
    raise FileNotFoundError(f"{spec.name} ({split} split): found none of {', '.join(tried)} under {root}. "
                            f"Expected layout: {spec.layout}")


def _offline() -> bool:
    return any(os.environ.get(name, "0").lower() not in ("0", "", "false", "no", "off")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_rows(spec: _Spec, dataset_id: str, config: str | None, split: str, streaming: bool,
              digest: Digest) -> Iterator[tuple[str, Any]]:
    how = (f"Provide a local copy ({spec.layout}) and pass its path, or allow hub access with "
           f"HF_HUB_OFFLINE=0 (the CodeXGLUE copy is {HUB_IDS[spec.name]!r}).")
    if split not in spec.hub_splits:
        raise ValueError(f"{spec.name}: the hub copy has no {split!r} split (it has: {', '.join(spec.hub_splits)})")
    if _offline():
        raise DatasetUnavailable(f"{dataset_id!r} is not a local file or directory, and loading it as a hub "
                                 f"dataset is disabled (HF_HUB_OFFLINE=1). {how}")
    import datasets

    hub_split = spec.hub_splits[split]
    try:
        table = datasets.load_dataset(dataset_id, config, split=hub_split, streaming=streaming)
    except Exception as exc:  # the hub and `datasets` raise many types; all mean "not available"
        raise DatasetUnavailable(f"cannot load hub dataset {dataset_id!r} (config {config}, split {hub_split}): "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. {how}") from exc
    for number, row in enumerate(table, start=1):
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode() + b"\n")
        yield f"{dataset_id} [{config or 'default'}/{hub_split}], row {number}", row


def _load(spec: _Spec, path_or_id: str | Path, split: str, limit: int | None, *, config: str | None = None,
          variables: dict | None = None, constants: dict | None = None) -> Records:
    canonical = next((name for name, aliases in SPLITS.items() if split in aliases), None)
    if canonical is None:
        raise ValueError(f"{spec.name}: unknown split {split!r} (use train, valid or test)")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"{spec.name}: limit must be a non-negative integer or None, got {limit!r}")
    variables, constants, digest = variables or {}, constants or {}, hashlib.sha256()
    path = Path(path_or_id).expanduser()
    if path.exists():
        source = str(path)
        if spec.read_local is not None:
            records = spec.read_local(spec, path, canonical, digest)
        else:
            files = [path] if path.is_file() else _find(spec, path, spec.patterns, canonical, variables)
            records = (spec.record(**_convert(row, spec.fields, where), **constants)
                       for file in files for where, row in _json_rows(file, digest, spec.name))
    elif str(path_or_id).startswith((".", "/", "~")) or path.suffix in (".json", ".jsonl", ".gz", ".txt"):
        raise FileNotFoundError(f"{spec.name}: no such file or directory: {path}. Expected layout: {spec.layout}")
    else:
        source = f"hf://{path_or_id}"
        rows = _hub_rows(spec, str(path_or_id), config, canonical, limit is not None, digest)
        records = (spec.record(**_convert(row, spec.hub_fields or spec.fields, where), **constants)
                   for where, row in rows)
    with closing(records):
        loaded = list(itertools.islice(records, limit))
    return Records(loaded, dataset=spec.name, split=canonical, source=source, fingerprint=digest.hexdigest())


def _read_bigclonebench(spec: _Spec, path: Path, split: str, digest: Digest) -> Iterator[ClonePair]:
    """data.jsonl holds every function once; {split}.txt lines pair two of them by idx."""
    root = path.parent if path.is_file() else path
    data_file = _find(spec, root, ("data.jsonl", "dataset/data.jsonl"), split, {})[0]
    pairs_file = _find(spec, root, ("{split}.txt", "dataset/{split}.txt"), split, {})[0]
    functions: dict[str, str] = {}
    for where, row in _json_rows(data_file, digest, spec.name):
        values = _convert(row, (_Field("idx", ("idx",), _identifier), _Field("func", ("func",), _text)), where)
        if values["idx"] in functions:
            raise ValueError(f"{where}: field 'idx': duplicate idx {values['idx']!r}")
        functions[values["idx"]] = values["func"]
    for where, text in _lines(pairs_file, digest, spec.name):
        columns = text.split()
        if len(columns) != 3:
            raise ValueError(f"{where}: expected 'idx1<TAB>idx2<TAB>label', got {text.rstrip()!r}")
        for name, idx in zip(("idx1", "idx2"), columns):
            if idx not in functions:
                raise ValueError(f"{where}: field {name!r}: unknown idx {idx!r} (not in {data_file})")
        try:
            label = _binary(columns[2])
        except TypeError:
            raise ValueError(f"{where}: field 'label': expected 0 or 1, got {columns[2]!r}") from None
        yield ClonePair(functions[columns[0]], functions[columns[1]], label, columns[0], columns[1])


_CODESEARCHNET = _Spec(
    "codesearchnet", CodeDocRecord,
    (_Field("code", ("code",), _text), _Field("docstring", ("docstring",), _text),
     _Field("name", ("func_name",), _text), _Field("path", ("path",), _text),
     _Field("code_tokens", ("code_tokens",), _tokens), _Field("docstring_tokens", ("docstring_tokens",), _tokens)),
    ("{split}.jsonl", "{split}.jsonl.gz", "{language}/{split}.jsonl", "{language}/{split}.jsonl.gz",
     "{language}/final/jsonl/{split}/*.jsonl.gz", "final/jsonl/{split}/*.jsonl.gz", "{split}/*.jsonl.gz"),
    "CodeXGLUE Code-Text/code-to-text dataset/<language>/{train,valid,test}.jsonl, or CodeSearchNet's "
    "<language>/final/jsonl/<split>/<language>_<split>_N.jsonl.gz")
_POJ104 = _Spec(
    "poj104", LabelledProgram,
    (_Field("code", ("code",), _text), _Field("label", ("label",), _integer), _Field("index", ("index", "id"), _integer)),
    ("{split}.jsonl", "dataset/{split}.jsonl"),
    "CodeXGLUE Code-Code/Clone-detection-POJ-104 dataset/{train,valid,test}.jsonl (written by its preprocess.py)")
_BIGCLONEBENCH = _Spec(
    "bigclonebench", ClonePair, (), (),
    "CodeXGLUE Code-Code/Clone-detection-BigCloneBench dataset/ with data.jsonl and {train,valid,test}.txt",
    hub_fields=(_Field("code_a", ("func1",), _text), _Field("code_b", ("func2",), _text),
                _Field("label", ("label",), _binary), _Field("idx_a", ("id1",), _identifier),
                _Field("idx_b", ("id2",), _identifier)),
    read_local=_read_bigclonebench)
_CONCODE = _Spec(
    "concode", NlCodePair, (_Field("nl", ("nl",), _text), _Field("code", ("code",), _text)),
    ("{split}.json", "{split}.jsonl", "concode/{split}.json", "dataset/concode/{split}.json"),
    "CodeXGLUE Text-Code/text-to-code dataset/concode/{train,dev,test}.json (one JSON object per line)")
_LINE_COMPLETION = _Spec(
    "line-completion", CompletionRecord,
    (_Field("context", ("input",), _text), _Field("next_line", ("gt",), _text)),
    ("{split}.json", "line_completion/{split}.json", "{corpus}/line_completion/{split}.json",
     "dataset/{corpus}/line_completion/{split}.json"),
    "CodeXGLUE Code-Code/CodeCompletion-line dataset/javaCorpus/line_completion/test.json",
    hub_splits={"test": "train"})  # the hub calls the published test set "train"


def load_codesearchnet(path_or_id: str | Path, split: str = "train", language: str = "python",
                       limit: int | None = None) -> Records[CodeDocRecord]:
    """CodeSearchNet functions with docstrings (CodeXGLUE code-to-text format, .jsonl or .jsonl.gz shards)."""
    if language not in CODESEARCHNET_LANGUAGES:
        raise ValueError(f"codesearchnet: unknown language {language!r} (one of {', '.join(CODESEARCHNET_LANGUAGES)})")
    return _load(_CODESEARCHNET, path_or_id, split, limit, config=language,
                 variables={"language": language}, constants={"language": language})


def load_poj104(path_or_id: str | Path, split: str = "train", limit: int | None = None) -> Records[LabelledProgram]:
    """POJ-104 C/C++ programs labelled by the problem they solve (CodeXGLUE Clone-detection-POJ-104)."""
    return _load(_POJ104, path_or_id, split, limit)


def load_bigclonebench(path_or_id: str | Path, split: str = "train",
                       limit: int | None = None) -> Records[ClonePair]:
    """BigCloneBench Java function pairs (CodeXGLUE Clone-detection-BigCloneBench): a directory, or its data.jsonl."""
    return _load(_BIGCLONEBENCH, path_or_id, split, limit)


def load_concode(path_or_id: str | Path, split: str = "train", limit: int | None = None) -> Records[NlCodePair]:
    """CONCODE text-to-code pairs (CodeXGLUE text-to-code); split 'valid' reads dev.json."""
    return _load(_CONCODE, path_or_id, split, limit)


def load_line_completion(path_or_id: str | Path, split: str = "test", language: str = "java",
                         limit: int | None = None) -> Records[CompletionRecord]:
    """Line-level completion (CodeXGLUE CodeCompletion-line); context keeps the corpus' <s>/<EOL> markers."""
    if language not in COMPLETION_CORPORA:
        raise ValueError(f"line-completion: unknown language {language!r} (one of {', '.join(COMPLETION_CORPORA)})")
    return _load(_LINE_COMPLETION, path_or_id, split, limit, config=language,
                 variables={"corpus": COMPLETION_CORPORA[language]})


LOADERS: dict[str, Callable[..., Records]] = {
    "codesearchnet": load_codesearchnet,
    "poj104": load_poj104,
    "bigclonebench": load_bigclonebench,
    "concode": load_concode,
    "line-completion": load_line_completion,
}
