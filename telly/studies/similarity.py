"""RQ2: how far each layer moved between a pre-trained backbone and fine-tuned copies of it.

`run_similarity` embeds held-out corpus functions with the pre-trained model and with each
fine-tuned checkpoint (every layer, one forward pass each, features cached on disk), scores every
layer with RSA (the paper's measure), linear CKA and debiased CKA, each with a bootstrap interval
over the compared functions, and writes one document:

    DIR/similarity.json            (no task given)
    DIR/similarity-<task>.json     (task given: one file per task, so tasks never overwrite)

    {"task", "model", "profile", "num_layers",
     "inputs": {"model", "profile_settings",
                "texts": {"source", "split", "field", "n", "max_length", "corpus_fingerprint"},
                "pooling", "features_format", "bootstrap": {"unit", "samples", "confidence", "seed"},
                "checkpoints": [{"label", "epoch", "fingerprint"}, ...]},
     "comparisons": [{"label", "epoch", "checkpoint",
                      "layers": [{"layer", "n", "rsa", "rsa_low", "rsa_high", "cka", "cka_low",
                                  "cka_high", "cka_debiased", "cka_debiased_low",
                                  "cka_debiased_high"}, ...],
                      "top_blocks": [k, ...],
                      "top_share": {measure: {"value", "low", "high"} or None},
                      "seconds": {"embed", "similarity"}}, ...],
     "provenance": {...}}

Layer 0 is the embeddings, layer k block k's output. Each value is the statistic on all n
functions, low/high its percentile interval over `bootstrap.samples` resamples of the functions
(one set of resamples shared by every layer: telly.similarity.bootstrap_layer_similarity).
`top_blocks` are the blocks the paper's "top two layers" are in relative depth (k / L > 5/6,
telly.similarity.top_blocks) and `top_share` their share of the summed drop (1 - similarity)
over all layers, with its interval from the same resamples (None when no layer dropped).
`seconds` is the wall time of that comparison's forward pass and of its similarity bootstrap.
`features_format` is telly.features.FEATURES_FORMAT: a change in how states are extracted makes a
stored document stale. The forward passes run under the profile's `mixed_precision`.

The functions are embedded without their docstrings (the corpus's `code_without_doc`, as the
paper embeds CodeSearchNet's `code_tokens`), and each layer's state is the mean over the
function's real tokens: padding is left out of the mean (the paper's script averaged the
padding positions in as well, which pulls a short function's pooled state towards the state of
the padding token).

One comparison per checkpoint, in the order given. A fine-tuning run directory that kept epoch
checkpoints (`<run>/epoch-<i>/backbone.safetensors` beside the best `<run>/backbone.safetensors`)
expands, with `per_epoch=True`, to one comparison per epoch (label "epoch-<i>", epoch i) followed
by the best weights (label "best", epoch None): the per-epoch view of *when* each layer moved.

`similarity_study` is what chapter 2 runs: per task, the full fine-tuning run from the results
store (trained when missing), then its similarity document, reused while its `inputs` are current.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from telly import backbones
from telly.corpus import load_corpus, sample, split
from telly.features import FEATURES_FORMAT, layer_features  # a FEATURES_FORMAT change re-scores
from telly.jsonio import as_stored
from telly.layout import SIMILARITY_DIR
from telly.profiles import Profile
from telly.similarity import BOOTSTRAP_SAMPLES, CONFIDENCE, MEASURES, bootstrap_layer_similarity, top_blocks
from telly.store import RunStore, Variant, as_store, checkpoint_fingerprint, epoch_checkpoints, provenance
from telly.tasks import get_task
from telly.trainer import finetune, finished_run

SPLIT = "test"  # held-out functions: no fine-tuning run has trained on them
EPOCH_RUNS_DIR = f"{SIMILARITY_DIR}/epoch-runs"  # re-runs that keep per-epoch checkpoints, when needed

Checkpoint = tuple[str, int | None, Path]  # (label, epoch, path)
TEXT_FIELD = "code_without_doc"  # the function without its docstring: the paper's `code_tokens`
POOLING = "mean over each function's real tokens (padding left out)"
BOOTSTRAP_SEED = 0


def similarity_texts(profile: Profile, corpus: str = "stdlib", progress: bool = True
                     ) -> tuple[list[str], dict]:
    """The inputs both models embed: `profile.probing.similarity_functions` held-out corpus functions.

    Each function without its docstring (`code_without_doc`: the paper embeds CodeSearchNet's
    `code_tokens`, the function without its docstring), from the test split so that the
    fine-tuned model has not seen them. Returns the texts and a description of where they came from.
    """
    functions = load_corpus(corpus, progress=progress)
    held_out = split(functions)[SPLIT]
    if not held_out:
        raise ValueError(f"corpus {functions.source!r} has no functions in its {SPLIT} split")
    chosen = sample(held_out, profile.probing.similarity_functions, seed=0)
    described = {"source": functions.source, "split": SPLIT, "field": TEXT_FIELD, "n": len(chosen),
                 "max_length": profile.inputs.max_code_tokens, "corpus_fingerprint": functions.fingerprint}
    return [getattr(fn, TEXT_FIELD) for fn in chosen], described


def output_path(out: str | Path, task: str | None) -> Path:
    return Path(out) / f"{_document_name(task)}.json"


def _document_name(task: str | None) -> str:
    return "similarity" if task is None else f"similarity-{task}"


def _targets(checkpoints: Sequence[str | Path], per_epoch: bool) -> list[Checkpoint]:
    """What to compare: each checkpoint as given, or with `per_epoch` its epochs, then its best."""
    targets: list[Checkpoint] = []
    for path in checkpoints:
        expanded = epoch_checkpoints(path)  # also fails early, naming a missing checkpoint
        targets.extend(expanded if per_epoch else [("best", None, Path(path))])
    return targets


def _inputs(model: str, profile: Profile, texts: dict, fingerprints: list[str],
            targets: list[Checkpoint], samples: int) -> dict:
    """Everything a similarity document depends on: equal inputs, equal document."""
    if samples < 1:
        raise ValueError(f"bootstrap samples must be a positive number of resamples; got {samples}")
    bootstrap = {"unit": "function", "samples": samples, "confidence": CONFIDENCE, "seed": BOOTSTRAP_SEED}
    return as_stored({"model": model, "profile_settings": profile.to_dict(), "texts": texts,
                      "pooling": POOLING, "features_format": FEATURES_FORMAT, "bootstrap": bootstrap,
                      "checkpoints": [{"label": label, "epoch": epoch, "fingerprint": fingerprint}
                                      for (label, epoch, _), fingerprint in zip(targets, fingerprints)]})


def run_similarity(model: str, checkpoint: str | Path | Sequence[str | Path], profile: Profile,
                   out: str | Path, task: str | None = None, corpus: str = "stdlib", *,
                   per_epoch: bool = False, device: str | None = None, samples: int = BOOTSTRAP_SAMPLES,
                   progress: bool = True) -> dict:
    """Per-layer RSA, CKA and debiased CKA of `model` against each fine-tuned `checkpoint`.

    checkpoint: one path or a list (a .safetensors file or a run directory); with `per_epoch`,
    run directories expand to their per-epoch checkpoints (see the module docstring). device:
    where the forward passes run (default: CUDA when available). samples: bootstrap resamples
    per interval. Writes the document described in the module docstring to
    `output_path(out, task)` and returns it.
    """
    given = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    if not given:
        raise ValueError("run_similarity needs at least one checkpoint")
    targets = _targets(given, per_epoch)
    fingerprints = [checkpoint_fingerprint(path) for _, _, path in targets]
    texts, described = similarity_texts(profile, corpus, progress)
    inputs = _inputs(model, profile, described, fingerprints, targets, samples)
    return _compare(model, profile, texts, inputs, targets, fingerprints, RunStore(out), task,
                    device=device, progress=progress)


def _compare(model: str, profile: Profile, texts: list[str], inputs: dict, targets: list[Checkpoint],
             fingerprints: list[str], store: RunStore, task: str | None, *, device: str | None,
             progress: bool) -> dict:
    """Embed `texts` with the pre-trained model and each target, score every layer, store the document."""
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def pooled(backbone) -> np.ndarray:
        backbone.model.to(device)
        return layer_features(backbone, texts, max_length=profile.inputs.max_code_tokens,
                              batch_size=profile.probing.feature_batch_size, progress=progress,
                              mixed_precision=profile.training.mixed_precision).pooled

    pretrained = backbones.load(model)
    reference = pooled(pretrained)
    description = pretrained.describe()
    del pretrained
    comparisons, seen = [], {}
    for (label, epoch, path), fingerprint in zip(targets, fingerprints):
        if fingerprint in seen:  # the best weights are one epoch's weights: no second forward pass
            scores = {key: seen[fingerprint][key] for key in ("layers", "top_blocks", "top_share", "seconds")}
        else:
            started = time.perf_counter()
            finetuned = pooled(backbones.load(model, checkpoint=path))
            embedded = time.perf_counter()
            scores = compare_layers(reference, finetuned, inputs["bootstrap"], progress=progress)
            scores["seconds"] = {"embed": embedded - started, "similarity": time.perf_counter() - embedded}
        comparisons.append({"label": label, "epoch": epoch, "checkpoint": str(path), **scores})
        seen.setdefault(fingerprint, comparisons[-1])
    document = as_stored({
        "task": task, "model": model, "profile": profile.name, "num_layers": len(reference) - 1,
        "inputs": inputs,
        "comparisons": comparisons,
        "provenance": provenance(model=model, profile=profile.name,
                                 corpus_fingerprint=inputs["texts"]["corpus_fingerprint"], device=device)
        | {"backbone": description},
    })
    store.write_document(_document_name(task), document)
    return document


def compare_layers(reference: np.ndarray, finetuned: np.ndarray, bootstrap: dict, *,
                   progress: bool = False) -> dict:
    """One comparison's scores: {"layers", "top_blocks", "top_share"} (the module docstring's
    fields) from (L+1, n, d) pooled states of the same n inputs and the `bootstrap` settings
    ({"samples", "confidence", "seed"})."""
    resampled = bootstrap_layer_similarity(reference, finetuned, samples=bootstrap["samples"],
                                           seed=bootstrap["seed"], progress=progress)
    blocks = top_blocks(len(resampled.points) - 1)
    return {"layers": resampled.records(bootstrap["confidence"]), "top_blocks": blocks,
            "top_share": {m: resampled.drop_share(blocks, m, bootstrap["confidence"]) for m in MEASURES}}


# ----------------------------------------------------------------------------- chapter 2

def ensure_finetuned(task: str, model: str, profile: Profile, store: RunStore | str | Path, *,
                     per_epoch: bool = False, seed: int = 0, progress: bool = True) -> Path:
    """The run directory of a full fine-tuning of `model` on `task`, running one if none exists.

    Looks in `store` itself (where the freezing study keeps its runs), then in its
    `similarity/epoch-runs/`. New runs go to `store` and keep per-epoch checkpoints. With
    `per_epoch`, a run without them is re-run into `similarity/epoch-runs/`, so the shared run is
    never overwritten.
    """
    store = as_store(store)
    variant = Variant.of(task, model, -1, profile=profile, seed=seed)
    epoch_store = RunStore(store.root / EPOCH_RUNS_DIR, store.weights_root / EPOCH_RUNS_DIR)
    runs = [candidate.run_dir(variant) for candidate in (store, epoch_store)
            if finished_run(variant, candidate) is not None and candidate.weights(variant).exists()]
    usable = [run for run in runs if _has_epochs(run)] if per_epoch else runs
    if usable:
        return usable[0]
    target = epoch_store if runs else store
    finetune(variant, target, save_epoch_checkpoints=True, progress=progress)
    return target.run_dir(variant)


def _has_epochs(run_dir: Path) -> bool:
    return any(epoch is not None for _, epoch, _ in epoch_checkpoints(run_dir))


def task_similarity(task: str, model: str, profile: Profile, store: RunStore | str | Path, *,
                    per_epoch: bool = False, corpus: str = "stdlib", samples: int = BOOTSTRAP_SAMPLES,
                    progress: bool = True) -> dict:
    """RQ2 for one task: fine-tune if needed, then its similarity document, stored under
    `similarity/similarity-<task>.json` and reused while model, profile settings, texts, pooling,
    bootstrap settings and checkpoint fingerprints are unchanged."""
    store = as_store(store)
    run = ensure_finetuned(task, model, profile, store, per_epoch=per_epoch, progress=progress)
    targets = _targets([run], per_epoch)
    fingerprints = [checkpoint_fingerprint(path) for _, _, path in targets]
    texts, described = similarity_texts(profile, corpus, progress)
    inputs = _inputs(model, profile, described, fingerprints, targets, samples)
    documents = RunStore(store.root / SIMILARITY_DIR)
    stored = documents.find_document(_document_name(task), inputs)
    if stored is not None:
        return stored
    return _compare(model, profile, texts, inputs, targets, fingerprints, documents, task,
                    device=None, progress=progress)


def similarity_study(model: str, profile: Profile, store: RunStore | str | Path, tasks: Sequence[str], *,
                     epoch_task: str | None = "code-search", corpus: str = "stdlib",
                     samples: int = BOOTSTRAP_SAMPLES, progress: bool = True) -> dict:
    """Chapter 2's data: {"documents": {task: document}, "skipped": {task: why}}.

    `epoch_task` also gets the per-epoch view. A task whose module is not in this checkout is
    skipped with the reason, so a partial checkout still builds the chapter for the rest.
    """
    documents, skipped = {}, {}
    for task in tasks:
        try:
            get_task(task)
        except ValueError as exc:
            skipped[task] = str(exc)
            continue
        documents[task] = task_similarity(task, model, profile, store, per_epoch=task == epoch_task,
                                          corpus=corpus, samples=samples, progress=progress)
    if not documents:
        raise ValueError(f"none of the tasks {list(tasks)} could run: {skipped}")
    return {"documents": documents, "skipped": skipped}
