"""Tables as a page shows them: one cell per estimate with its interval, no index, no NaN, fitted to the page.

`readable(frame)` turns any table a report function builds into a pandas Styler: a `low` / `high`
pair of columns (or `<name> low` / `<name> high`) folds into the column before it as
"value [low, high]", missing values read as a dash, numbers are rounded for reading, the index is
dropped (a named index becomes ordinary columns first) and the table carries the `telly-table` class,
which the book's stylesheet lets scroll sideways inside the text column instead of running off it;
columns of long text (code, sentences) wrap inside their cells.
"""
from __future__ import annotations

import math
import numbers

import pandas as pd

DASH = "–"
CSS_CLASS = "telly-table"


def _bounds(columns: list[str], index: int) -> tuple[str, str] | None:
    """The (low, high) columns that belong to columns[index], if they follow it."""
    name = columns[index]
    for low, high in (("low", "high"), (f"{name} low", f"{name} high"), (f"{name}_low", f"{name}_high")):
        if columns[index + 1:index + 3] == [low, high]:
            return low, high
    return None


def number(value, digits: int = 3) -> str:
    """A value as a reader reads it: a dash when missing, whole numbers whole, others rounded."""
    if value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isnan(value)):
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{value:,}"
    if isinstance(value, numbers.Real):
        if float(value).is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, list | tuple):
        return ", ".join(number(v, digits) for v in value) or DASH
    return str(value)


def interval(value, low, high, digits: int = 3) -> str:
    """"value [low, high]", or the value alone when a bound is missing."""
    if DASH in (number(low), number(high)):
        return number(value, digits)
    return f"{number(value, digits)} [{number(low, digits)}, {number(high, digits)}]"


def readable_frame(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """`frame` as strings, intervals folded, index gone (see the module docstring)."""
    if frame.index.names != [None] or not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index(drop=frame.index.names == [None])
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    out, skip = {}, set()
    for i, name in enumerate(columns):
        if name in skip:
            continue
        bounds = _bounds(columns, i)
        if bounds:
            skip.update(bounds)
            out[name] = [interval(v, lo, hi, digits) for v, lo, hi in
                         zip(frame[name], frame[bounds[0]], frame[bounds[1]])]
        else:
            out[name] = [number(v, digits) for v in frame[name]]
    return pd.DataFrame(out, columns=list(out))


# Cells longer than this hold text or code (example outputs): they keep their line breaks and wrap
# anywhere, so one long identifier cannot push the table past the text column.
LONG_TEXT = 40
TEXT_CELL = {"white-space": "pre-wrap", "overflow-wrap": "anywhere", "min-width": "8em"}


def readable(frame: pd.DataFrame, digits: int = 3):
    """The Styler a chapter displays for `frame`."""
    shown = readable_frame(frame, digits)
    text = [c for c in shown.columns if shown[c].str.len().max() > LONG_TEXT]
    return (shown.style.hide(axis="index").set_properties(subset=text, **TEXT_CELL)
            .set_table_attributes(f'class="{CSS_CLASS}"'))
