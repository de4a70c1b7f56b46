"""RQ2 end to end: how far each layer moved between a pre-trained backbone and fine-tuned copies.

`run_similarity` embeds held-out corpus functions with the pre-trained model and with each
fine-tuned checkpoint (every layer, one forward pass each, features cached on disk), scores every
layer with RSA (the paper's measure), linear CKA and debiased CKA, and writes one JSON document:

    DIR/similarity.json            (no task given)
    DIR/similarity-<task>.json     (task given: one file per task, so tasks never overwrite)

    {"task", "model", "profile", "inputs": {"source", "split", "n", "max_length", "corpus_fingerprint"},
     "comparisons": [{"label", "epoch", "checkpoint", "layers": [{"layer", "n", "rsa", "cka",
                      "cka_debiased"}, ...]}, ...],
     "provenance": {...}}

One comparison per checkpoint, in the order given. A fine-tuning run directory written with
`telly finetune --save-epoch-checkpoints` (`<run>/epoch-<i>/backbone.safetensors` beside the best
`<run>/backbone.safetensors`) expands, with `per_epoch=True`, to one comparison per epoch
(label "epoch-<i>", epoch i) followed by the best weights (label "best", epoch None): the
per-epoch view of *when* each layer moved.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from telly.profiles import Profile, get_profile

SPLIT = "test"  # held-out functions: no fine-tuning run has trained on them
EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
WEIGHTS = "backbone.safetensors"


def similarity_texts(profile: Profile, corpus: str = "stdlib", progress: bool = True
                     ) -> tuple[list[str], dict]:
    """The inputs both models embed: `profile.similarity_functions` held-out corpus functions.

    Whole function sources (docstring included, as the paper's CodeSearchNet `code` field), from
    the test split so that the fine-tuned model has not seen them. Returns the texts and a
    description of where they came from.
    """
    from telly.corpus import load_corpus, sample, split

    functions = load_corpus(corpus, progress=progress)
    held_out = split(functions)[SPLIT]
    if not held_out:
        raise ValueError(f"corpus {functions.source!r} has no functions in its {SPLIT} split")
    chosen = sample(held_out, profile.similarity_functions, seed=0)
    described = {"source": functions.source, "split": SPLIT, "n": len(chosen),
                 "max_length": profile.max_code_tokens, "corpus_fingerprint": functions.fingerprint}
    return [fn.code for fn in chosen], described


def epoch_checkpoints(run_dir: str | Path) -> list[tuple[str, int | None, Path]]:
    """(label, epoch, path) for each per-epoch checkpoint of a run directory, then its best weights.

    A directory without epoch checkpoints yields just its best weights; a file yields itself.
    """
    path = Path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist (expected a .safetensors file or "
                                f"a fine-tuning run directory holding {WEIGHTS})")
    if path.is_file():
        return [("best", None, path)]
    epochs = sorted((int(m.group(1)), child) for child in path.iterdir()
                    if (m := EPOCH_DIR.match(child.name)) and (child / WEIGHTS).exists())
    found = [(f"epoch-{epoch}", epoch, child / WEIGHTS) for epoch, child in epochs]
    if (path / WEIGHTS).exists():
        found.append(("best", None, path / WEIGHTS))
    if not found:
        raise FileNotFoundError(f"run directory {path} holds neither {WEIGHTS} nor "
                                f"epoch-<i>/{WEIGHTS} checkpoints")
    return found


def _weights_digest(checkpoint: str | Path) -> str:
    path = Path(checkpoint)
    path = path / WEIGHTS if path.is_dir() else path
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def output_path(out: str | Path, task: str | None) -> Path:
    return Path(out) / ("similarity.json" if task is None else f"similarity-{task}.json")


def run_similarity(model: str, checkpoint: str | Path | Sequence[str | Path], profile: str | Profile,
                   out: str | Path, task: str | None = None, corpus: str = "stdlib", *,
                   per_epoch: bool = False, device: str | None = None, progress: bool = True) -> dict:
    """Per-layer RSA, CKA and debiased CKA of `model` against each fine-tuned `checkpoint`.

    checkpoint: one path or a list (a .safetensors file or a run directory); with `per_epoch`,
    run directories expand to their per-epoch checkpoints (see the module docstring). device:
    where the forward passes run (default: CUDA when available). Writes and returns the document
    described in the module docstring.
    """
    import torch

    from telly import backbones
    from telly.features import layer_features
    from telly.results import provenance, write_json
    from telly.similarity import layer_similarity

    profile = get_profile(profile)
    given = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    if not given:
        raise ValueError("run_similarity needs at least one checkpoint")
    targets: list[tuple[str, int | None, Path]] = []
    for path in given:
        expanded = epoch_checkpoints(path)
        targets.extend(expanded if per_epoch else [("best", None, Path(path))])
    texts, inputs = similarity_texts(profile, corpus, progress)

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def pooled(backbone) -> np.ndarray:
        backbone.model.to(device)
        return layer_features(backbone, texts, max_length=profile.max_code_tokens,
                              batch_size=profile.feature_batch_size, progress=progress).pooled

    pretrained = backbones.load(model)
    reference = pooled(pretrained)
    description = pretrained.describe()
    del pretrained
    comparisons, seen = [], {}
    for label, epoch, path in targets:
        digest = _weights_digest(path)
        if digest in seen:  # the best weights are one epoch's weights: no second forward pass
            layers = seen[digest]["layers"]
        else:
            layers = layer_similarity(reference, pooled(backbones.load(model, checkpoint=path)),
                                      progress=progress)
        comparisons.append({"label": label, "epoch": epoch, "checkpoint": str(path), "layers": layers})
        seen.setdefault(digest, comparisons[-1])
    document = {
        "task": task, "model": model, "profile": profile.name, "inputs": inputs,
        "comparisons": comparisons,
        "provenance": provenance(model=model, profile=profile.name,
                                 corpus_fingerprint=inputs["corpus_fingerprint"], device=device)
        | {"backbone": description},
    }
    write_json(output_path(out, task), document)
    return document


def layer_rows(document: dict) -> list[dict]:
    """Flatten a similarity document to one row per (comparison, layer, measure) for tables/charts."""
    rows = []
    for comparison in document["comparisons"]:
        for layer in comparison["layers"]:
            for measure in ("rsa", "cka", "cka_debiased"):
                if measure in layer:
                    rows.append({"task": document.get("task"), "model": document["model"],
                                 "label": comparison["label"], "epoch": comparison["epoch"],
                                 "layer": layer["layer"], "measure": measure, "value": layer[measure],
                                 "n": layer["n"]})
    return rows


def add_cli(subparsers) -> None:
    from telly.cli import add_common

    parser = subparsers.add_parser(
        "similarity", help="RQ2: per-layer RSA / CKA between a pre-trained and fine-tuned backbone",
        description=run_similarity.__doc__)
    add_common(parser, out="runs/similarity")
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="fine-tuned backbone: .safetensors file or run directory (repeatable)")
    parser.add_argument("--task", default=None,
                        help="task the checkpoints were fine-tuned on; names the output "
                             "similarity-<task>.json instead of similarity.json")
    parser.add_argument("--per-epoch", action="store_true",
                        help="expand run directories to their epoch-<i> checkpoints")
    parser.add_argument("--corpus", default="stdlib", help="'stdlib' or a directory of Python files")
    parser.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    from telly.backbones import BackboneUnavailable

    try:
        document = run_similarity(args.model, args.checkpoint, args.profile, args.out, task=args.task,
                                  corpus=args.corpus, per_epoch=args.per_epoch)
    except (ValueError, FileNotFoundError, BackboneUnavailable) as exc:
        print(f"telly similarity: error: {exc}", file=sys.stderr)
        return 2
    for comparison in document["comparisons"]:
        cells = "  ".join(f"L{r['layer']} {r['rsa']:.3f}/{r['cka']:.3f}" for r in comparison["layers"])
        print(f"{comparison['label']} ({comparison['checkpoint']}): rsa/cka per layer  {cells}")
    print(f"wrote {output_path(args.out, args.task)}")
    return 0


# ----------------------------------------------------------------------------- chapter 2 helpers
# Where, under the results store root, the chapters keep what RQ2 reads and writes.
EPOCH_RUNS_DIR = "similarity/epoch-runs"  # re-runs that keep per-epoch checkpoints, when needed
SIMILARITY_DIR = "similarity"
TOP_TWO_SHARE = 0.5  # "only the top two layers change much": they carry most of the total drop
NEGLIGIBLE_DROP = 1e-3  # below this no layer is said to have moved


def _finished_runs(out: Path, task: str, model: str, profile: Profile, seed: int) -> list[Path]:
    """Run directories of finished full fine-tunings of `task` under the store, preferred first."""
    from telly.results import read_json
    from telly.trainer import record_path

    runs = []
    for root in (out, out / EPOCH_RUNS_DIR):  # the store root is where the freezing sweep's runs live
        record = record_path(root, task, model, "full", -1, seed, profile.name)
        if record.exists() and read_json(record).get("status") == "finished" \
                and (record.with_suffix("") / WEIGHTS).exists():
            runs.append(record.with_suffix(""))
    return runs


def _has_epochs(run_dir: Path) -> bool:
    return any(label.startswith("epoch-") for label, _, _ in epoch_checkpoints(run_dir))


def ensure_finetuned(task: str, model: str, profile: str | Profile, out: str | Path, *,
                     per_epoch: bool = False, seed: int = 0, progress: bool = True) -> Path:
    """The run directory of a full fine-tuning of `model` on `task`, running one if none exists.

    Looks in `out/` itself (where `telly sweep` and the freezing chapter keep their runs, as
    `out/<run>.json` + `out/<run>/`), then in `out/similarity/epoch-runs/`. New runs go to `out/`
    and keep per-epoch checkpoints. With `per_epoch`, a run without them is re-run into
    `out/similarity/epoch-runs/` (so the shared run is never overwritten).
    """
    from telly.trainer import finetune, run_name

    profile, out = get_profile(profile), Path(out)
    runs = _finished_runs(out, task, model, profile, seed)
    usable = [run for run in runs if _has_epochs(run)] if per_epoch else runs
    if usable:
        return usable[0]
    root = out / EPOCH_RUNS_DIR if runs else out
    finetune(task, model, -1, profile=profile, seed=seed, out=root, save_epoch_checkpoints=True,
             progress=progress)
    return root / run_name(task, model, "full", -1, seed, profile.name)


def task_similarity(task: str, model: str, profile: str | Profile, out: str | Path, *,
                    per_epoch: bool = False, corpus: str = "stdlib", progress: bool = True) -> dict:
    """RQ2 for one task: fine-tune if needed, then the similarity document (reused when current).

    A stored `out/similarity/similarity-<task>.json` is reused when it compares the same model,
    profile and checkpoints and is newer than every checkpoint file.
    """
    from telly.results import read_json

    profile, out = get_profile(profile), Path(out)
    run = ensure_finetuned(task, model, profile, out, per_epoch=per_epoch, progress=progress)
    wanted = [str(path) for _, _, path in epoch_checkpoints(run)] if per_epoch else [str(run)]
    stored = output_path(out / SIMILARITY_DIR, task)
    if stored.exists():
        document = read_json(stored)
        newest = max(Path(path if path.endswith(".safetensors") else Path(path) / WEIGHTS).stat().st_mtime
                     for path in wanted)
        if (document.get("model") == model and document.get("profile") == profile.name
                and document["inputs"].get("source") == ("stdlib" if corpus == "stdlib" else str(Path(corpus)))
                and [c["checkpoint"] for c in document["comparisons"]] == wanted
                and stored.stat().st_mtime >= newest):
            return document
    return run_similarity(model, run, profile, out / SIMILARITY_DIR, task=task, corpus=corpus,
                          per_epoch=per_epoch, progress=progress)


def similarity_study(model: str, profile: str | Profile, out: str | Path, tasks: Sequence[str], *,
                     epoch_task: str | None = "code-search", corpus: str = "stdlib",
                     progress: bool = True) -> dict:
    """Chapter 2's data: {"documents": {task: document}, "skipped": {task: why}}.

    `epoch_task` also gets the per-epoch view. A task whose module is not in this checkout is
    skipped with the reason, so a partial checkout still builds the chapter for the rest.
    """
    from telly.tasks import get_task

    documents, skipped = {}, {}
    for task in tasks:
        try:
            get_task(task)
        except ValueError as exc:
            skipped[task] = str(exc)
            continue
        documents[task] = task_similarity(task, model, profile, out, per_epoch=task == epoch_task,
                                          corpus=corpus, progress=progress)
    if not documents:
        raise ValueError(f"none of the tasks {list(tasks)} could run: {skipped}")
    return {"documents": documents, "skipped": skipped}


def final_comparison(document: dict) -> dict:
    """The comparison of the best (final) fine-tuned weights: label "best", else the last one."""
    best = [c for c in document["comparisons"] if c["label"] == "best"]
    return best[0] if best else document["comparisons"][-1]


def study_rows(documents: dict[str, dict]) -> list[dict]:
    """One row per (task, layer, measure) of the final weights, with depth = layer / L."""
    rows = []
    for task, document in documents.items():
        layers = final_comparison(document)["layers"]
        top = len(layers) - 1
        for layer in layers:
            for measure in ("rsa", "cka", "cka_debiased"):
                rows.append({"task": task, "layer": layer["layer"], "depth": layer["layer"] / top,
                             "measure": measure, "value": layer[measure],
                             "source": f"ours ({document['model']})"})
    return rows


def epoch_rows(document: dict) -> list[dict]:
    """One row per (epoch, layer, measure) of the per-epoch comparisons (best weights left out).

    Epoch 0 is the pre-trained model compared with itself: similarity 1 by definition (rsa(X, X)
    = CKA(X, X) = 1), drawn so that a single-epoch run still shows a trajectory.
    """
    rows = [row for row in layer_rows(document) if row["epoch"] is not None]
    start = [dict(row, label="pre-trained", epoch=0, value=1.0) for row in rows
             if row["epoch"] == min(r["epoch"] for r in rows)]
    return start + rows


def movement(layers: dict[int, float]) -> dict:
    """How a {layer: similarity} curve says the model moved, judged against "top two layers".

    drop = 1 - similarity. `most_moved`: the two layers with the largest drop; `top_two_share`:
    the top two layers' share of the total drop; `agrees`: the two most-moved layers are the top
    two and carry at least TOP_TWO_SHARE of the drop. None when nothing moved measurably.
    """
    if len(layers) < 3:
        raise ValueError(f"need at least 3 layers to judge the top two, got {sorted(layers)}")
    drops = {layer: 1.0 - value for layer, value in layers.items()}
    top = max(layers)
    ranked = sorted(drops, key=lambda layer: (-drops[layer], -layer))
    total = sum(max(d, 0.0) for d in drops.values())
    moved = drops[ranked[0]] >= NEGLIGIBLE_DROP
    share = (max(drops[top], 0.0) + max(drops[top - 1], 0.0)) / total if moved else None
    return {"num_layers": top, "most_moved": ranked[:2], "drops": drops, "moved": moved,
            "top_two_share": share,
            "agrees": (set(ranked[:2]) == {top, top - 1} and share >= TOP_TWO_SHARE) if moved else None}


def movement_prose(documents: dict[str, dict], measure: str = "rsa") -> str:
    """Markdown naming, per task, the layers that moved most and whether that is "top two layers"."""
    from telly.paper import PAPER_RSA

    lines, agreeing, judged = [], 0, 0
    for task, document in documents.items():
        layers = {r["layer"]: r[measure] for r in final_comparison(document)["layers"]}
        verdict = movement(layers)
        top = verdict["num_layers"]
        if not verdict["moved"]:
            lines.append(f"- **{task}**: no layer moved measurably ({measure} drop below "
                         f"{NEGLIGIBLE_DROP} everywhere), so this run cannot test the claim.")
            continue
        judged += 1
        agreeing += bool(verdict["agrees"])
        named = " and ".join(f"layer {layer} ({measure} {layers[layer]:.3f})"
                             for layer in verdict["most_moved"])
        lines.append(
            f"- **{task}**: {named} moved most; the top two blocks ({top - 1}, {top}) carry "
            f"{verdict['top_two_share']:.0%} of the total drop in {measure} over the {top + 1} "
            f"states: {'agrees with' if verdict['agrees'] else 'does not match'} the paper's "
            f"\"top two layers\"{_paper_top(task)}.")
    paper_agree = [t for t in documents if t in PAPER_RSA and movement(PAPER_RSA[t])["agrees"]]
    model = next(iter(documents.values()))["model"]
    if not judged:
        return "\n".join([f"No layer of {model} moved measurably on any task, so these runs cannot "
                          f"test the paper's \"top two layers\".", "", *lines])
    summary = (f"On **{agreeing} of {judged}** tasks where {model} moved measurably, the two layers "
               f"that moved most are its top two and carry at least {TOP_TWO_SHARE:.0%} of the drop. "
               f"By the same test on the paper's reported layers, UniXcoder agrees on "
               f"{len(paper_agree)} of {sum(t in PAPER_RSA for t in documents)} of these tasks.")
    return "\n".join([summary, "", *lines])


def _paper_top(task: str) -> str:
    from telly.paper import PAPER_MODEL, PAPER_RSA

    if task not in PAPER_RSA:
        return ""
    top = max(PAPER_RSA[task])
    return f" ({PAPER_MODEL} in the paper: RSA {PAPER_RSA[task][top]:.3f} at its top layer, {top})"


def epoch_prose(document: dict, measure: str = "rsa") -> str:
    """Markdown on *when* layers moved: each layer's drop after the first epoch vs. the last."""
    rows = [c for c in document["comparisons"] if c["epoch"] is not None]
    if len(rows) < 1:
        return f"The {document.get('task')} run kept no per-epoch checkpoints."
    first, last = rows[0], rows[-1]
    drops_first = {r["layer"]: 1.0 - r[measure] for r in first["layers"]}
    drops_last = {r["layer"]: 1.0 - r[measure] for r in last["layers"]}
    top = max(drops_last)
    if len(rows) == 1:
        return (f"The {document['task']} run stopped after one epoch, so the per-epoch view shows only "
                f"the pre-trained start and epoch {first['epoch']}, where the top layer's {measure} is "
                f"{1 - drops_last[top]:.3f}. A profile with more epochs shows the trajectory.")
    if drops_last[top] < NEGLIGIBLE_DROP:
        return f"By epoch {last['epoch']} the top layer had not moved measurably ({measure} drop < {NEGLIGIBLE_DROP})."
    share = drops_first[top] / drops_last[top]
    biggest = max(drops_last, key=drops_last.get)
    return (f"After epoch {first['epoch']} the top layer ({top}) had already moved "
            f"{share:.0%} of the way to its {measure} after epoch {last['epoch']} "
            f"({1 - drops_first[top]:.3f} vs {1 - drops_last[top]:.3f}); the layer that moved most by "
            f"the last epoch is layer {biggest} ({1 - drops_last[biggest]:.3f}).")
