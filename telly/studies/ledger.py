"""study.json, the ledger of a study (`telly.studies.study`): each part's status and measured wall
time, the machine and commit that measured it, written after every change so that the committed
file always says how far the study got.
"""
from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from telly.jsonio import as_stored
from telly.layout import CHECKS, EXTENSIONS, QUESTIONS, STUDY
from telly.store import RunStore, cpu_description, device_description


def git_state(root: str | Path | None = None) -> dict:
    """{"commit", "dirty"} of the checkout holding the telly package (None, None outside git).
    dirty: tracked files differ from the commit (records written since are untracked, not counted)."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  check=True, timeout=30).stdout.strip()
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine() -> str:
    """The device and its CPU (model, generation, bf16 units): what a part's time was measured on."""

    return f"{device_description()} ({cpu_description()})"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Ledger:
    """study.json: each part's status and measured wall time, written after every change so that
    the committed file always says how far the study got."""

    def __init__(self, store: RunStore, header: dict, parts: Sequence[str]) -> None:
        """header: the study's description, with the `inputs` that decide whether a stored ledger
        is this study's (else it starts afresh); parts: all of them, listed as pending until reached."""
        self.store = store
        stored = store.find_document(STUDY, header["inputs"])
        self.document = stored or {**header, "parts": {}, "sessions": []}
        self.document.update({key: value for key, value in header.items() if key != "inputs"})
        # A part the study no longer has is dropped while nothing was measured on it (a session killed before its
        # first tick measured nothing either).
        self.document["parts"] = {part: entry for part, entry in self.document["parts"].items()
                                  if part in parts or entry["status"] == "finished" or entry["wall_seconds"] is not None}
        for part in parts:
            self.entry(part)
        self.session = {"started": _now(), "updated": _now(), "machine": machine(), **git_state(), "ran": []}
        self.document["sessions"].append(self.session)
        self._part: str | None = None
        self._mark = 0.0
        self.save()

    def entry(self, part: str) -> dict:
        return self.document["parts"].setdefault(part, {"status": "pending", "wall_seconds": None})

    def finished_with(self, part: str, inputs: Mapping) -> bool:
        """Whether `part` finished, in this or an earlier session, from exactly `inputs`."""
        entry = self.document["parts"].get(part, {})
        return entry.get("status") == "finished" and entry.get("inputs") == as_stored(dict(inputs))

    def start(self, part: str, *, afresh: bool = False) -> None:
        """`part` begins work: its time counts from now. afresh: none of its records is current. If
        the part had finished, its records were removed as stale and the time that made them no
        longer counts; an unfinished part (a session killed before its first run ended) keeps the
        time its sessions measured."""
        self._part, self._mark = part, time.perf_counter()
        entry = self.entry(part)
        if afresh and entry["status"] == "finished":
            entry["wall_seconds"] = None
        entry["status"] = "running"
        self.save()

    def tick(self, *_ignored) -> None:
        """Add the time since the last tick to the running part (the trainer calls it after every
        epoch, so a killed session keeps what it measured up to its last epoch)."""
        if self._part is None:
            return
        now = time.perf_counter()
        entry = self.entry(self._part)
        entry["wall_seconds"] = (entry["wall_seconds"] or 0.0) + now - self._mark
        self._mark = now
        self.save()

    @property
    def running(self) -> str | None:
        return self._part

    def finish(self, part: str, *, ran: bool, status: str = "finished", **facts) -> None:
        """`part` is done. ran: whether this session worked on it; only then does its time count
        and do date, machine and commit name this session (a part whose records were found
        current keeps what the session that made them wrote)."""
        entry = self.entry(part)
        if ran:
            if self._part == part:
                self.tick()
            entry.update({"date": _now(), "machine": self.session["machine"],
                          "commit": self.session["commit"], "dirty": self.session["dirty"]})
            self.session["ran"].append(part)
        entry.pop("error", None)  # an earlier session's failure, if any, is history now
        entry.update(as_stored({"status": status, **facts}))
        self._part = None
        self.save()

    def save(self) -> None:
        totals = {kind: 0.0 for kind in QUESTIONS + CHECKS + EXTENSIONS}
        for part, entry in self.document["parts"].items():
            totals[part.split("/")[0]] += entry.get("wall_seconds") or 0.0
        self.document["wall_seconds"] = {**totals, "total": sum(totals.values())}
        self.session["updated"] = _now()
        self.store.write_document(STUDY, self.document)
