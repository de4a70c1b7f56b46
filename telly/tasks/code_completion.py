"""Line-level code completion: given the lines of a function before the cursor, generate the next line.

Offline data: for each corpus function (code without docstring) one non-blank line after the `def`
line, picked by a seeded hash of the function, whose length fits the profile's target length in
code tokens: the lines above it are the context, the line (without indentation) the target.
Real data: CodeXGLUE's line-completion set (`telly.loaders.load_line_completion`, the Java corpus
by default); only its test file is published, so without train/dev files it is split 80/10/10 by a
seeded shuffle. Its <s>/<EOL> markers become text and newlines. Sources are cut from the left:
the lines right before the cursor matter most.
Metrics as CodeXGLUE's line-completion evaluator scores them (`telly.metrics`): exact match of the
whitespace tokens (x100) and edit similarity (fuzzywuzzy's fuzz.ratio of the raw strings, 0..100),
both after its literal post-processing. The headline is edit similarity: exact match of a whole line
is near zero for small CPU runs, which would leave early stopping and the freeze-depth comparison blind.
Trivial baseline: the last non-blank line before the cursor, repeated.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import partial

import numpy as np

from telly.corpus import load_corpus, split
from telly.loaders import load_line_completion
from telly.metrics import code_tokens, codexglue_post_process, edit_similarity, exact_match
from telly.profiles import Profile
from telly.tasks import TaskConfig, TaskData, sample_examples, task_data
from telly.tasks.generation import DEGENERATE_METRICS, GenerationExample, GenerationTask

PUBLISHED_SPLIT = (0.8, 0.1)  # train and valid shares when only the published test file exists


@dataclass(frozen=True)
class CodeCompletionConfig(TaskConfig):
    language: str = "java"  # CodeXGLUE completion corpus when data_path is given (java or python)


def completion_example(code: str, id: str, max_target_tokens: int, seed: int = 0) -> GenerationExample | None:
    """One (lines before, next line) example from a function's source, or None if no line fits."""
    lines = code.splitlines()
    candidates = [i for i in range(1, len(lines))
                  if lines[i].strip() and len(code_tokens(lines[i])) <= max_target_tokens]
    if not candidates:
        return None
    digest = int(hashlib.sha256(f"{seed}:{id}".encode()).hexdigest()[:8], 16)
    line = candidates[digest % len(candidates)]
    return GenerationExample(source="\n".join(lines[:line]), target=lines[line].strip(), id=f"{id}:{line + 1}")


def corpus_completion_example(fn, max_target_tokens: int, seed: int = 0) -> GenerationExample | None:
    return completion_example(fn.code_without_doc, f"{fn.path}:{fn.qualname}", max_target_tokens, seed)


def _marked_text(context: str) -> str:
    """CodeXGLUE's `<s> a ; <EOL> b` -> text with newlines."""
    return context.replace("<s>", "").replace("</s>", "").replace("<EOL>", "\n").strip()


class CodeCompletionTask(GenerationTask):
    name = "code-completion"
    metric = "edit_similarity"
    metrics = ("edit_similarity", "exact_match", *DEGENERATE_METRICS)
    config_class = CodeCompletionConfig
    truncate_source = "left"

    def load_data(self, profile: Profile, seed: int = 0) -> TaskData:
        sizes = profile.split_sizes(self.name, profile.generation.generation_examples)
        if self.config.data_path:
            return self._published(sizes, seed)

        corpus = load_corpus("stdlib")
        parts = split(corpus)
        build = partial(corpus_completion_example, max_target_tokens=profile.generation.max_target_tokens, seed=seed)
        splits = {name: sample_examples(parts[name], size, build, seed) for name, size in sizes.items()}
        return task_data(self.name, splits, f"{corpus.source} corpus {corpus.fingerprint}, lines of at most "
                                            f"{profile.generation.max_target_tokens} code tokens")

    def _published(self, sizes: dict[str, int | None], seed: int) -> TaskData:
        path, language = self.config.data_path, self.config.language
        try:
            loaded = {name: load_line_completion(path, name, language, limit=size) for name, size in sizes.items()}
            note = "train/dev/test files"
        except FileNotFoundError:
            records = list(load_line_completion(path, "test", language))
            random.Random(seed).shuffle(records)
            n_train, n_valid = (int(share * len(records)) for share in PUBLISHED_SPLIT)
            parts = {"train": records[:n_train], "valid": records[n_train:n_train + n_valid],
                     "test": records[n_train + n_valid:]}
            loaded = {name: parts[name][:size] for name, size in sizes.items()}
            note = f"the published test file split {PUBLISHED_SPLIT[0]:.0%}/{PUBLISHED_SPLIT[1]:.0%}/rest, seed {seed}"
        splits = {name: [GenerationExample(source=_marked_text(r.context), target=r.next_line.strip(),
                                           id=f"{name}:{i}") for i, r in enumerate(records)]
                  for name, records in loaded.items()}
        return task_data(self.name, splits, f"line completion ({language}) at {path} ({note})")

    def per_example_scores(self, references: list[str], predictions: list[str]) -> dict[str, np.ndarray]:
        # The evaluator post-processes literals (and strips the prediction) before both metrics.
        exact = [100.0 * exact_match(codexglue_post_process(r), codexglue_post_process(p))
                 for r, p in zip(references, predictions)]
        return {"exact_match": np.array(exact),
                "edit_similarity": np.array([edit_similarity(r, p) for r, p in zip(references, predictions)])}

    trivial_answer = ("previous line", "the last non-blank line before the cursor, repeated (stripped)")

    def trivial_prediction(self, example: GenerationExample) -> str:
        lines = [line.strip() for line in example.source.splitlines() if line.strip()]
        return lines[-1] if lines else ""
