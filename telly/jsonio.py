"""JSON on disk: written atomically, read with errors that name the file and line, and values as
they read back (`as_stored`), so that wanted inputs compare equal to stored ones."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


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


def as_stored(value: object) -> object:
    """`value` as it reads back from JSON (tuples become lists, numpy values plain numbers), so
    wanted inputs compare equal to stored ones."""
    return json.loads(json.dumps(value, default=_jsonable))


def _jsonable(value: object) -> object:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
