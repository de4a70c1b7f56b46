"""The bench's harness (`telly.studies.bench`): interleaved repeats with a stopwatch, medians, ratios
to a reference, the payback of a one-time cost, and the device it ran on (synchronisation, autocast);
the CPU's model and bf16 units are `telly.store`'s, which every record's provenance names.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from telly.progress import progress_bar


class Stopwatch:
    """Named wall-clock durations of one variant run (synchronising the device around each)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter,
                 sync: Callable[[], None] | None = None) -> None:
        self.clock = clock
        self.sync = sync or (lambda: None)
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
        self.sync()
        start = self.clock()
        yield
        self.sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + self.clock() - start


@dataclass
class Runs:
    """Every repeat's durations of one variant, and what the variant reported about itself."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def median(self, name: str) -> float:
        return float(statistics.median(self.seconds[name]))


Measured = Callable[[Stopwatch, int], "dict | None"]


def interleave(variants: Mapping[str, Measured], repeats: int, *,
               clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] | None = None,
               desc: str = "bench", progress: bool = True) -> dict[str, Runs]:
    """Run every variant `repeats` times, interleaved: repeat r runs all of them once, the order
    rotated by r so that no variant always runs first. A variant is called as fn(stopwatch, repeat),
    times what it wants with `stopwatch.measure(name)` and may return a dict of facts (kept in
    Runs.info; later repeats update earlier ones)."""

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if not variants:
        raise ValueError("no variants to measure")
    names = list(variants)
    runs = {name: Runs() for name in names}
    bar = progress_bar(total=repeats * len(names), desc=desc, disable=not progress, leave=False)
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            bar.set_postfix_str(name)
            watch = Stopwatch(clock, sync)
            info = variants[name](watch, repeat)
            if not watch.seconds:
                raise RuntimeError(f"variant {name!r} measured nothing (use stopwatch.measure)")
            for measure, seconds in watch.seconds.items():
                runs[name].seconds.setdefault(measure, []).append(seconds)
            runs[name].info.update(info or {})
            bar.update()
    bar.close()
    return runs


def ratio_to(values: Mapping[str, float], reference: str) -> dict[str, float]:
    """Every value divided by the reference variant's value."""
    if reference not in values:
        raise ValueError(f"reference variant {reference!r} is not among {sorted(values)}")
    base = values[reference]
    if not base > 0:
        raise ValueError(f"reference variant {reference!r} has value {base!r}; ratios need a positive one")
    return {name: value / base for name, value in values.items()}


def payback_epochs(build_seconds: float, cached_epoch: float, other_epoch: float) -> float | None:
    """Epochs after which building the cache once has paid for itself against `other_epoch`
    (C + E*cached < E*other  <=>  E > C / (other - cached)); None when it never does."""
    saving = other_epoch - cached_epoch
    return build_seconds / saving if saving > 0 else None


# ----------------------------------------------------------------------------- the device

def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device) -> torch.autocast | None:
    """bf16 autocast on CUDA; None (float32) on a CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None


def sync_for(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None
