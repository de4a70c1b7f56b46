"""The results store: what a run is (`Variant`), where its record and weights live (`RunStore`),
and JSON written atomically with the provenance every record carries.

A store is a folder. A fine-tuning run keeps `<root>/<run_id>.json` (its record, written last, so
its presence means the run finished) beside `<root>/<run_id>/` (backbone.safetensors,
head.safetensors, and epoch-<i>/ checkpoints when asked for). Every other result (probing,
similarity, zero-shot scores, the bench) is a *document*: `<root>/<name>.json` holding an `inputs`
field, and a stored document is current exactly when its inputs equal the wanted ones. That is the
only "is the stored result still current?" rule: records compare their inputs the same way.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from telly.jsonio import as_stored, read_json, write_json
from telly.methods import Full, Method, make_method
from telly.profiles import Profile

WEIGHTS = "backbone.safetensors"
HEAD_WEIGHTS = "head.safetensors"
EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
# CPU feature flags of bf16 arithmetic (x86 AMX and AVX-512 BF16, Arm BF16): without one, bf16
# autocast may run no faster than float32.
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
VERSIONED = ("telly", "torch", "transformers", "accelerate", "peft", "datasets", "numpy",
             "scikit-learn", "rapidfuzz", "radon")


# ----------------------------------------------------------------------------- provenance

def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def _cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def _cpuinfo_field(cpuinfo: str, *keys: str) -> str | None:
    """The first value of one of `keys` in /proc/cpuinfo's text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform module says."""
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    return (cpuinfo and _cpuinfo_field(cpuinfo, "model name")) or platform.processor() or platform.machine()


def bf16_units(cpuinfo: str | None = None) -> list[str] | None:
    """The BF16_FLAGS this machine's CPU reports (Linux /proc/cpuinfo "flags" or "Features");
    None where there is no /proc/cpuinfo to ask."""
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    if cpuinfo is None:
        return None
    flags = set((_cpuinfo_field(cpuinfo, "flags", "Features") or "").split())
    return [flag for flag in BF16_FLAGS if flag in flags]


def cpu_description(cpuinfo: str | None = None) -> str | None:
    """The CPU a run ran on, precisely enough to tell two machines apart: two CPUs of one model name
    ("AMD EPYC") can differ in generation and bf16 units, and so in speed. None without /proc/cpuinfo."""
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    if cpuinfo is None:
        return None
    family, number = _cpuinfo_field(cpuinfo, "cpu family"), _cpuinfo_field(cpuinfo, "model")
    generation = f", family {family} model {number}" if family and number else ""
    units = bf16_units(cpuinfo)
    return f"{cpu_model(cpuinfo)}{generation}, " + (f"bf16 units: {' '.join(units)}" if units else "no bf16 units")


def device_description(device=None) -> str:
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def this_machine(device=None) -> tuple[str, str | None]:
    """(device, CPU) as a record made here would name them (`telly.analysis.machine_of`)."""
    return device_description(device), cpu_description()


def provenance(*, model: str, profile: str, corpus_fingerprint: str | None, seed: int | None = None,
               device=None) -> dict:
    """The fields every record carries: what ran, on what data, where, when, with which versions."""
    return {
        "model": model,
        "profile": profile,
        "corpus_fingerprint": corpus_fingerprint,
        "seed": seed,
        "device": device_description(device),
        "cpu": cpu_description(),  # device names no CPU generation; timings compare only within one
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }


# ----------------------------------------------------------------------------- identities

def slug(text: str) -> str:
    """A file-name-safe form of a model name or path."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_.") or "model"


def data_location(data_path: str | Path | None) -> str | None:
    """The absolute form of a real dataset path, as records keep it (None: the offline corpus)."""
    return str(Path(data_path).expanduser().resolve()) if data_path else None


def data_tag(data_path: str | Path) -> str:
    """Names a real dataset in run ids: its file or folder name and a hash of its absolute path."""
    location = data_location(data_path)
    return f"{slug(Path(location).name)}-{hashlib.sha256(location.encode()).hexdigest()[:8]}"


def checkpoint_fingerprint(path: str | Path) -> str:
    """The one fingerprint of saved weights: sha256 of the .safetensors file (a run or epoch
    directory means its backbone.safetensors)."""
    path = Path(path)
    target = path / WEIGHTS if path.is_dir() else path
    if not target.exists():
        raise FileNotFoundError(f"checkpoint {target} does not exist (expected a .safetensors file "
                                f"or a run directory holding {WEIGHTS})")
    digest = hashlib.sha256()
    with target.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class Variant:
    """One fine-tuning run: which task, model, method (with its freeze depth), seed, profile and data.

    `run_id` names its record and weights in a store (the same settings always give the same id; a
    run on a real dataset never shares its id with the offline-corpus run); `label` is what a page
    calls it. The profile is the object the run trains under: its name goes into the run id, its
    settings into the record."""

    task: str
    model: str
    profile: Profile
    method: Method = field(default_factory=Full)
    seed: int = 0
    data_path: str | None = None

    @classmethod
    def of(cls, task: str, model: str, freeze: int = -1, *, profile: Profile, method: str = "telly",
           cache: bool = True, seed: int = 0, data_path: str | None = None, **method_options) -> Variant:
        """A variant from the CLI's words: method name, freeze depth K (Telly with K = -1 is full)."""
        return cls(task, str(model), profile, make_method(method, freeze, cache, **method_options), int(seed),
                   data_location(data_path))

    @property
    def freeze(self) -> int:
        return self.method.freeze

    @property
    def run_id(self) -> str:
        name = f"{self.task}__{slug(self.model)}__{self.method.tag}__seed{self.seed}__{self.profile.name}"
        return f"{name}__data-{data_tag(self.data_path)}" if self.data_path else name

    @property
    def label(self) -> str:
        return self.method.label


# ----------------------------------------------------------------------------- the store

class RunStore:
    """A results folder: fine-tuning records and weights by Variant, documents by name.

    weights_root: keep run directories (weights, epoch checkpoints) there instead of beside the
    records, so a folder of records can be committed without weights (the study's book/records/)."""

    def __init__(self, root: str | Path, weights_root: str | Path | None = None) -> None:
        self.root = Path(root)
        self.weights_root = Path(weights_root) if weights_root is not None else self.root

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    # fine-tuning runs
    def record_path(self, variant: Variant) -> Path:
        return self.root / f"{variant.run_id}.json"

    def run_dir(self, variant: Variant) -> Path:
        return self.weights_root / variant.run_id

    def weights(self, variant: Variant) -> Path:
        return self.run_dir(variant) / WEIGHTS

    def find(self, variant: Variant, task_config: Mapping) -> dict | None:
        """The finished record of `variant` when it ran under its profile's current settings and
        `task_config` (the task's current config, as a dict); else None (missing, damaged,
        unfinished, or run under other settings)."""
        path = self.record_path(variant)
        if not path.exists():
            return None
        try:
            record = read_json(path)
        except ValueError:
            return None  # a damaged record counts as unfinished: run it again
        if not isinstance(record, dict) or record.get("status") != "finished":
            return None
        if record.get("profile_settings") != as_stored(variant.profile.to_dict()) \
                or record.get("task_config") != as_stored(dict(task_config)):
            return None
        return record

    def write_record(self, variant: Variant, record: Mapping) -> Path:
        return write_json(self.record_path(variant), record)

    def epoch_checkpoints(self, variant: Variant) -> list[tuple[str, int | None, Path]]:
        return epoch_checkpoints(self.run_dir(variant))

    def records(self, *, model: str | None = None, profile: str | None = None, tasks=None,
                data_paths: Mapping[str, str] | None = None) -> list[dict]:
        """Finished fine-tuning records at the top of the store, optionally filtered; for each task
        only the runs on its `data_paths` entry (default: the offline corpus), so real-data and
        offline runs never mix."""
        wanted_data = {task: data_location(path) for task, path in (data_paths or {}).items()}
        records = []
        for path in sorted(self.root.glob("*.json")):
            record = read_json(path)
            if not isinstance(record, dict) or record.get("status") != "finished" or "freeze" not in record:
                continue
            if (model and record["model"] != model) or (profile and record["profile"] != profile) \
                    or (tasks and record["task"] not in tasks) \
                    or record["data"].get("path") != wanted_data.get(record["task"]):
                continue
            records.append(record)
        return records

    # documents
    def document_path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def find_document(self, name: str, inputs: Mapping) -> dict | None:
        """The stored document `name` when it was made from exactly `inputs`, else None."""
        path = self.document_path(name)
        if not path.exists():
            return None
        try:
            document = read_json(path)
        except ValueError:
            return None
        if isinstance(document, dict) and document.get("inputs") == as_stored(dict(inputs)):
            return document
        return None

    def write_document(self, name: str, document: Mapping) -> Path:
        if "inputs" not in document:
            raise ValueError(f"document {name!r} has no `inputs`: the store could not tell when it is current")
        return write_json(self.document_path(name), document)


def as_store(store: RunStore | str | Path) -> RunStore:
    return store if isinstance(store, RunStore) else RunStore(store)


def epoch_checkpoints(run_dir: str | Path) -> list[tuple[str, int | None, Path]]:
    """(label, epoch, path) for each per-epoch checkpoint of a run directory, then its best weights.

    A directory without epoch checkpoints yields just its best weights; a file yields itself."""
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
