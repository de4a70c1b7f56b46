"""Compare two results stores (e.g. the smoke book's runs/smoke before and after a refactor): every
JSON record or document found in both, by its path, on what a refactor must not change.

Kept: data fingerprints and every number a page shows (metrics, CIs, per-example columns, layer
scores, probe scores, verdicts). Left out: what differs between any two runs of the same code, such
as wall times, dates, machines, versions, commits and absolute paths. Prints one line per
difference and a count; exits 1 when anything differs or a file is in one store only.

    python tools/compare_records.py runs-before/smoke runs-after/smoke
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

# Keys whose values change from run to run of the same code: time, place, versions and paths.
VOLATILE = {"date", "device", "versions", "provenance", "machine", "commit", "dirty", "sessions", "started",
            "updated", "wall_seconds", "time_split", "epoch_seconds", "cache_seconds", "time_to_best_seconds",
            "train_seconds", "eval_seconds", "decode_seconds", "seconds", "section_seconds", "load_average",
            "process_cpu_seconds", "weights", "path", "root", "cache", "peak_tensor_memory_mb", "cache_megabytes",
            "run_seconds", "runs", "epoch_seconds_ratio", "time_to_best_seconds_ratio", "origin", "inputs",
            "one_pass_seconds",
            # the bench's ratios of times and what is judged on them: measured, never reproduced
            "ratio_to_full", "ratio_to_limit", "speedup", "step_ratio", "forward_ratio", "acceptance",
            "payback_epochs", "payback_epochs_vs_full"}
TOLERANCE = 1e-9


def differences(before: object, after: object, where: str = "") -> list[str]:
    """Where `before` and `after` differ, key by key, ignoring VOLATILE keys."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after)):
            if key in VOLATILE or key.endswith(("_seconds", "_seconds_runs")):
                continue
            if key not in before or key not in after:
                found.append(f"{where}/{key}: only {'after' if key in after else 'before'}")
            else:
                found += differences(before[key], after[key], f"{where}/{key}")
        return found
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return [f"{where}: {len(before)} items before, {len(after)} after"]
        return [d for i, (b, a) in enumerate(zip(before, after)) for d in differences(b, a, f"{where}[{i}]")]
    if isinstance(before, float) or isinstance(after, float):
        if isinstance(before, (int, float)) and isinstance(after, (int, float)) and (
                math.isclose(before, after, rel_tol=TOLERANCE, abs_tol=TOLERANCE)
                or (math.isnan(before) and math.isnan(after))):
            return []
    elif before == after:
        return []
    return [f"{where}: {before!r} before, {after!r} after"]


def compare(before_root: Path, after_root: Path) -> tuple[int, list[str]]:
    """(files compared, difference lines) over every *.json below either root."""
    files = {p.relative_to(before_root) for p in before_root.rglob("*.json")} | \
            {p.relative_to(after_root) for p in after_root.rglob("*.json")}
    lines, compared = [], 0
    for name in sorted(files):
        b, a = before_root / name, after_root / name
        if not (b.exists() and a.exists()):
            lines.append(f"{name}: only in {'after' if a.exists() else 'before'}")
            continue
        compared += 1
        lines += [f"{name}{d}" for d in differences(json.loads(b.read_text()), json.loads(a.read_text()))]
    return compared, lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    before, after = (Path(arg) for arg in argv)
    for root in (before, after):
        if not root.is_dir():
            print(f"{root}: not a folder (expected a results store such as runs/smoke)", file=sys.stderr)
            return 2
    compared, lines = compare(before, after)
    print("\n".join(lines))
    print(f"{compared} files in both stores, {len(lines)} differences")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
