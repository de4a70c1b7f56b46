"""Code summarization: generate a function's docstring summary from its code.

Offline data: each corpus function's code without its docstring -> the docstring's first paragraph
(`telly.corpus`, split by module). Real data: CodeSearchNet in the CodeXGLUE code-to-text format
(`telly.loaders.load_codesearchnet`), code and docstring tokens joined by spaces as CodeXGLUE does.
Metric: CodeXGLUE's smoothed sentence BLEU-4, averaged, x100 (`telly.metrics`).
Trivial baseline: the function's name split into words (`get_file_name` -> "get file name").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from telly.loaders import load_codesearchnet
from telly.metrics import codexglue_sentence_bleu
from telly.profiles import Profile
from telly.tasks import TaskConfig, TaskData, corpus_examples, identifier_words, task_data
from telly.tasks.generation import DEGENERATE_METRICS, GenerationExample, GenerationTask


@dataclass(frozen=True)
class CodeSummarizationConfig(TaskConfig):
    language: str = "python"  # CodeSearchNet language when data_path is given


class CodeSummarizationTask(GenerationTask):
    name = "code-summarization"
    metric = "bleu"
    metrics = ("bleu", *DEGENERATE_METRICS)
    config_class = CodeSummarizationConfig

    def load_data(self, profile: Profile, seed: int = 0) -> TaskData:
        sizes = profile.split_sizes(self.name, profile.generation.generation_examples)
        if self.config.data_path:
            splits = {}
            for split, size in sizes.items():
                records = load_codesearchnet(self.config.data_path, split, self.config.language, limit=size)
                splits[split] = [GenerationExample(source=" ".join(r.code_tokens) or r.code,
                                                   target=" ".join(r.docstring_tokens) or r.docstring,
                                                   id=f"{r.path}:{r.name}") for r in records]
            source = f"CodeSearchNet {self.config.language} at {self.config.data_path}"
        else:
            splits, source = corpus_examples(sizes, seed, lambda fn: GenerationExample(
                source=fn.code_without_doc, target=fn.docstring, id=f"{fn.path}:{fn.qualname}"))
        return task_data(self.name, splits, source)

    def per_example_scores(self, references: list[str], predictions: list[str]) -> dict[str, np.ndarray]:
        return {"bleu": np.array([100.0 * codexglue_sentence_bleu(r, p) for r, p in zip(references, predictions)])}

    trivial_answer = ("function name as words", "the function's name split into lower-cased words "
                      "(snake_case and camelCase), e.g. get_file_name -> 'get file name'")

    def trivial_prediction(self, example: GenerationExample) -> str:
        return " ".join(identifier_words(function_name(example)))


def function_name(example: GenerationExample) -> str:
    """The summarised function's own name, from the example id both sources build as
    "<path>:<qualified name>" (Class.method -> method)."""
    name = example.id.rpartition(":")[2].rpartition(".")[2]
    if not name:
        raise ValueError(f"code-summarization: example {example.id!r} carries no function name "
                         "(expected an id '<path>:<function name>'): the name baseline needs it")
    return name
