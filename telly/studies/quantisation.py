"""The quantisation check: does storing a backbone as the study's SmolLM2 is stored (a GGUF of Q4_1
matrices, read back to float32) move what freezing costs in quality?

The study's backbone is itself a dequantised Q4_1 model, with no float original to compare against.
MiniLM-L6 has one: `minilm-l6-q4_1` is MiniLM-L6 passed through the same GGUF formats
(`telly.backbones.gguf_round_trip`). Full fine-tuning and Telly-K run on both at the profile's sizes,
depths and seeds (`telly.studies.freezing.sweep`), and `telly.analysis.quantisation_shift` tests
whether Telly-K - full moves by more than the margin between them.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from telly.analysis import quantisation_shift
from telly.profiles import Profile
from telly.store import RunStore, as_store
from telly.studies.freezing import sweep

MODELS = ("minilm-l6", "minilm-l6-q4_1")  # the original and its GGUF round trip
TASKS = ("code-search", "clone-detection")
DOCUMENT = "quantisation"


def quantisation_check(profile: Profile, store: RunStore | str | Path, *, tasks: Sequence[str] = TASKS,
                       progress: bool = True) -> dict:
    """Sweep both models over `tasks` (the profile's sweep_freeze and seeds; finished runs are read
    back), then write and return the store's quantisation.json: `quantisation_shift` of their records,
    with the runs it read."""
    store = as_store(store)
    depths = profile.training.sweep_freeze
    failed = []
    for model in MODELS:
        for task in tasks:
            result = sweep([task], depths, profile.seeds_for(task), model=model, profile=profile, store=store,
                           progress=progress)
            failed += result["failed"]
    if failed:
        raise RuntimeError(f"the quantisation check's runs failed: {failed}")
    original, quantised = (store.records(model=model, profile=profile.name, tasks=list(tasks)) for model in MODELS)
    inputs = {"profile": profile.name, "tasks": list(tasks), "depths": depths,
              "runs": sorted(r["run"] for r in [*original, *quantised])}
    stored = store.find_document(DOCUMENT, inputs)
    if stored is not None:  # made from these very runs: read back, not recomputed
        return stored
    document = {"inputs": inputs, "models": list(MODELS), "profile": profile.name,
                **quantisation_shift(original, quantised, profile)}
    store.write_document(DOCUMENT, document)
    return document
