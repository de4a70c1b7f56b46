"""The results store: JSON records written atomically, with the provenance every run carries."""
from __future__ import annotations

import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

VERSIONED = ("telly", "torch", "transformers", "accelerate", "peft", "datasets", "numpy",
             "scikit-learn", "sacrebleu", "rapidfuzz")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def device_description(device: torch.device | str | None = None) -> str:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def provenance(*, model: str, profile: str, corpus_fingerprint: str | None, seed: int | None = None,
               device: torch.device | str | None = None) -> dict:
    """The fields every record carries: what ran, on what data, where, when, with which versions."""
    return {
        "model": model,
        "profile": profile,
        "corpus_fingerprint": corpus_fingerprint,
        "seed": seed,
        "device": device_description(device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }


def write_json(path: str | Path, record: object) -> Path:
    """Write JSON atomically (temp file + rename): a killed run never leaves half a record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle, indent=2, default=_jsonable)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | Path) -> object:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON at line {exc.lineno} ({exc.msg})") from exc


def _jsonable(value: object) -> object:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
