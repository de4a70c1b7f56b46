"""Code generation: generate a function body from its docstring summary and signature.

Offline data: each corpus function's docstring summary and `def` line(s) -> its body without the
docstring, keeping functions whose body fits the profile's target length in code tokens and is more
than `pass` (`telly.corpus`, split by module). Real data: CONCODE (`telly.loaders.load_concode`):
description with class context -> Java method. CodeXGLUE scores CONCODE on its dev set (the test
answers are not published): without a test file, dev is the test split and the validation split
is held out from the end of train.
Metrics as CodeXGLUE's text-to-code evaluator scores CONCODE (`telly.metrics`): corpus BLEU-4 on
whitespace tokens, every n-gram order smoothed, and exact match of the whitespace tokens. A body's
newlines and indentation are whitespace like any other (that evaluator reads one line per example),
so `a+b` and `a + b` differ while re-indented code does not.
Trivial baseline: a body of `pass`.
"""
from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from functools import partial

import numpy as np

from telly.corpus import load_corpus, split
from telly.loaders import load_concode
from telly.metrics import bleu_statistics, code_tokens, exact_match
from telly.profiles import Profile
from telly.tasks import TaskConfig, TaskData, sample_examples, task_data
from telly.tasks.generation import DEGENERATE_METRICS, GenerationExample, GenerationTask

CONCODE_HELD_OUT = 2000  # validation examples held out of CONCODE train when the profile sets none


@dataclass(frozen=True)
class CodeGenerationConfig(TaskConfig):
    pass


def split_signature(code: str) -> tuple[str, str]:
    """(decorators and `def` header up to its colon, dedented body) of a function's source."""
    tree = ast.parse(code)
    function = next((node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if function is None:
        raise ValueError(f"no function definition in: {code[:60]!r}")
    first = function.body[0]
    lines = code.splitlines(keepends=True)
    header_lines, line = lines[:first.lineno - 1], lines[first.lineno - 1].encode()
    header_end = line[:first.col_offset].decode()  # col_offset counts UTF-8 bytes
    if header_end.strip():  # body on the def line itself: `def f(x): return x`
        return "".join(header_lines) + header_end.rstrip(), line[first.col_offset:].decode().strip()
    return "".join(header_lines).rstrip(), textwrap.dedent("".join(lines[first.lineno - 1:])).strip()


def generation_example(fn, max_target_tokens: int) -> GenerationExample | None:
    """Docstring summary + signature -> body of a corpus function, or None when the body is only
    `pass` (the docstring was all there was) or longer than max_target_tokens code tokens."""
    signature, body = split_signature(fn.code_without_doc)
    if body == "pass" or len(code_tokens(body)) > max_target_tokens:
        return None
    return GenerationExample(source=f"{fn.docstring}\n{signature}", target=body, id=f"{fn.path}:{fn.qualname}")


class CodeGenerationTask(GenerationTask):
    name = "code-generation"
    metric = "bleu"
    metrics = ("bleu", "exact_match", *DEGENERATE_METRICS)
    config_class = CodeGenerationConfig

    def load_data(self, profile: Profile, seed: int = 0) -> TaskData:
        sizes = profile.split_sizes(self.name, profile.generation.generation_examples)
        if self.config.data_path:
            return self._concode(sizes)

        corpus = load_corpus("stdlib")
        parts = split(corpus)
        splits = {name: sample_examples(parts[name], size, partial(generation_example,
                                                                   max_target_tokens=profile.generation.max_target_tokens), seed)
                  for name, size in sizes.items()}
        return task_data(self.name, splits, f"{corpus.source} corpus {corpus.fingerprint}, bodies of at most "
                                            f"{profile.generation.max_target_tokens} code tokens")

    def _concode(self, sizes: dict[str, int | None]) -> TaskData:
        path = self.config.data_path
        try:
            test = load_concode(path, "test", limit=sizes["test"])
            train = load_concode(path, "train", limit=sizes["train"])
            valid = load_concode(path, "valid", limit=sizes["valid"])
            note = "train/dev/test"
        except FileNotFoundError:
            test = load_concode(path, "valid", limit=sizes["test"])
            held_out = sizes["valid"] or CONCODE_HELD_OUT
            limit = None if sizes["train"] is None else sizes["train"] + held_out
            records = load_concode(path, "train", limit=limit)
            if len(records) <= held_out:
                raise ValueError(f"code-generation: CONCODE train at {path} has {len(records)} examples, "
                                 f"too few to hold out {held_out} for validation") from None
            train, valid = records[:-held_out], records[-held_out:]
            note = f"dev as test, last {held_out} of train as validation"
        splits = {name: [GenerationExample(source=r.nl, target=r.code, id=f"{name}:{i}")
                         for i, r in enumerate(records)]
                  for name, records in (("train", train), ("valid", valid), ("test", test))}
        return task_data(self.name, splits, f"CONCODE at {path} ({note})")

    def per_example_scores(self, references: list[str], predictions: list[str]) -> dict[str, np.ndarray]:
        return {"exact_match": np.array([100.0 * exact_match(r, p) for r, p in zip(references, predictions)]),
                **bleu_statistics(references, predictions)}

    trivial_answer = ("body `pass`", "every generated body is `pass`")

    def trivial_prediction(self, example: GenerationExample) -> str:
        return "pass"
