"""Progress bars: the one place telly makes them.

In a live notebook a bar is a widget (tqdm.auto). In a book build (`telly book` sets
TELLY_PROGRESS=text for the chapter kernels) it is plain text on standard error, updated at most
every few seconds: the page leaves stderr out (`execute.stderr_output: remove`), so a reader sees no
bar and the saved widget state holds only the widgets a reader uses. TELLY_PROGRESS=off hides them.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable

ENV = "TELLY_PROGRESS"
MODES = ("auto", "text", "off")


def mode() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV}={value!r}: expected one of {', '.join(MODES)}")
    return value


def progress_bar(iterable: Iterable | None = None, *, desc: str, disable: bool = False, **options):
    """A tqdm bar over `iterable` (or of `total=`), as this process should show it (see the module)."""
    current = mode()
    if current == "text":
        from tqdm.std import tqdm

        return tqdm(iterable, desc=desc, disable=disable, file=sys.stderr, mininterval=5.0, **options)
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=disable or current == "off", **options)
