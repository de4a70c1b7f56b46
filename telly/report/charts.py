"""The altair charts the book shows, and how they render offline.

How a chapter renders (the only way that works in the built, offline book):
- call `setup_offline_rendering()` once, in the imports cell; then a chart is a cell's last
  expression or goes through `display(chart)`. Each chart becomes an HTML fragment that loads
  nothing itself: every page of the book loads vega, vega-lite and vega-embed from its own
  `_static/vega/` (vendored by `telly book`), so no page reaches a CDN. Do not call
  `alt.renderers.enable(...)`, `chart.show()`, `JupyterChart` or `chart.save(...)` in a chapter.
- interactivity lives in the chart: altair params bound to inputs (`alt.binding_range` and friends)
  work in the static page; `freeze_slider_chart(...)` is the freeze-depth slider.
- ipywidgets' built-in widgets also show (their state is saved at execution and rendered by the
  local HTML manager), but they are static: no kernel runs behind the page.
- show where the numbers came from with `provenance_box(records)` as a cell's last expression.

Shared helpers live here; each chapter's own charts are separate functions below them. All chart
functions are pure: records (or a table) in, an altair chart out.
"""
from __future__ import annotations

import html
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import altair as alt
import pandas as pd

from telly.analysis import freeze_label
from telly.probing.catalog import PROBES

OFFLINE_RENDERER = "telly-offline"
# vega-embed options for every chart: SVG so marks are real DOM nodes (inspectable, crisp), and
# no menu links to the online Vega editor.
EMBED_OPTIONS = {"renderer": "svg", "actions": {"export": True, "source": False, "compiled": False,
                                                "editor": False}}

# The HTML of one chart: waits for the page's vegaEmbed (loaded in <head> by the book), never fetches it.
_CHART_HTML = """\
<div class="telly-chart" id="{div_id}"></div>
<script type="text/javascript">
(function (spec, embedOpt) {{
  var el = document.getElementById("{div_id}");
  function draw() {{
    if (typeof vegaEmbed === "undefined") {{
      el.innerHTML = '<p class="telly-chart-missing">This chart needs vega-embed, which the Telly ' +
        'book ships in its _static/vega/ folder: build the book with <code>telly book</code> to see it.</p>';
      return;
    }}
    vegaEmbed(el, spec, embedOpt).then(function (result) {{
      (window.tellyCharts = window.tellyCharts || []).push(result.view);
    }}).catch(function (err) {{
      el.innerHTML = '<p class="telly-chart-error" style="color:red;">Chart error: ' + err.message + '</p>';
      throw err;
    }});
  }}
  if (typeof vegaEmbed !== "undefined" || document.readyState === "complete") {{ draw(); }}
  else {{ window.addEventListener("load", draw); }}
}})({spec}, {embed_options});
</script>"""


def chart_html(spec: Mapping[str, Any], embed_options: Mapping[str, Any] | None = None) -> str:
    """The HTML fragment that draws a Vega-Lite spec with the page's own vega-embed."""
    options = {**EMBED_OPTIONS, **(embed_options or {})}
    # "</" inside a <script> would end it early: JSON allows the escaped form.
    return _CHART_HTML.format(
        div_id=f"telly-chart-{uuid.uuid4().hex[:12]}",
        spec=json.dumps(spec).replace("</", "<\\/"),
        embed_options=json.dumps(options).replace("</", "<\\/"),
    )


def offline_renderer(spec: dict, **metadata: Any) -> dict[str, Any]:
    """altair renderer: HTML that draws with the page's vega-embed (and text for plain front ends).

    No vega-lite mimetype beside it: myst-nb has no renderer for it and would warn on every chart.
    """
    return {
        "text/html": chart_html(spec, metadata.get("embed_options")),
        "text/plain": f"<altair chart: {spec.get('$schema', 'vega-lite')}>",
    }


def setup_offline_rendering() -> None:
    """Make every altair chart in this kernel render as offline HTML (call once per chapter)."""
    if OFFLINE_RENDERER not in alt.renderers.names():
        alt.renderers.register(OFFLINE_RENDERER, offline_renderer)
    alt.renderers.enable(OFFLINE_RENDERER)


# ---------------------------------------------------------------------------------------------
# Provenance box: what produced the numbers on a page.

PROVENANCE_FIELDS = ("model", "profile", "corpus_fingerprint", "device", "date", "versions")
_PROVENANCE_LABELS = {"model": "model", "dataset": "data", "corpus_fingerprint": "data fingerprint",
                      "profile": "profile", "seed": "seed", "device": "device", "date": "date",
                      "versions": "versions"}
# Library versions worth a reader's attention, in this order (records carry more).
_SHOWN_VERSIONS = ("telly", "python", "torch", "transformers", "datasets", "scikit-learn")


class ProvenanceBox:
    """An HTML admonition listing where a chapter's records came from; displays in Jupyter and the book."""

    def __init__(self, rows: list[tuple[str, str]], title: str):
        self.rows = rows
        self.title = title

    def _repr_html_(self) -> str:
        items = "".join(f"<tr><th>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"
                        for label, value in self.rows)
        return (f'<div class="admonition note telly-provenance">'
                f'<p class="admonition-title">{html.escape(self.title)}</p>'
                f'<table class="telly-provenance-table">{items}</table></div>')

    def _repr_markdown_(self) -> str:
        lines = [f"**{self.title}**", ""] + [f"- {label}: {value}" for label, value in self.rows]
        return "\n".join(lines)


def _provenance_of(record: Mapping[str, Any]) -> Mapping[str, Any]:
    nested = record.get("provenance")
    return nested if isinstance(nested, Mapping) else record


def provenance_box(records: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                   title: str = "Provenance: what produced the numbers on this page") -> ProvenanceBox:
    """Summarise the provenance of one record or several (distinct values joined, dates as a range).

    A record carries its provenance at top level (telly.store.provenance merged in) or under a
    "provenance" key. A record missing one of PROVENANCE_FIELDS is an error naming it.
    """
    if isinstance(records, Mapping):
        records = [records]
    records = list(records)
    if not records:
        raise ValueError("provenance_box needs at least one record; the results store gave none")
    provenances = []
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise TypeError(f"record {index} is a {type(record).__name__}, expected a dict")
        prov = _provenance_of(record)
        missing = [name for name in PROVENANCE_FIELDS if name not in prov]
        if missing:
            raise ValueError(f"record {index} has no provenance field(s) {missing}; "
                             f"it has {sorted(prov)}: write it with telly.store.provenance")
        provenances.append(prov)

    rows = []
    for field in ("model", "dataset", "corpus_fingerprint", "profile", "seed", "device"):
        values = _distinct(str(p[field]) for p in provenances if p.get(field) is not None)
        if values:
            rows.append((_PROVENANCE_LABELS[field], ", ".join(values)))
    dates = sorted(str(p["date"]) for p in provenances)
    rows.append(("date", dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"))
    rows.append(("versions", _versions_summary(p["versions"] for p in provenances)))
    rows.append(("records", str(len(records))))
    return ProvenanceBox(rows, title)


def _distinct(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _versions_summary(version_maps: Iterable[Mapping[str, str]]) -> str:
    merged: dict[str, list[str]] = {}
    for versions in version_maps:
        for package, version in versions.items():
            merged.setdefault(package, [])
            if version not in merged[package]:
                merged[package].append(version)
    shown = [p for p in _SHOWN_VERSIONS if p in merged] or sorted(merged)
    return ", ".join(f"{p} {'/'.join(merged[p])}" for p in shown)


# ---------------------------------------------------------------------------------------------
# The freeze-depth slider: a Vega-Lite parameter bound to a range input, live in the static page.

FREEZE_PARAM = "freeze_k"
FREEZE_READOUT = "freeze_readout"  # vega mark name: the text row of the selected K (a CSS class in SVG)


def freeze_slider_chart(rows: pd.DataFrame | Sequence[Mapping[str, Any]], *, metric: str,
                        costs: Sequence[str] = (), freeze: str = "freeze", series: str | None = None,
                        formats: Mapping[str, str] | None = None, start: int | None = None,
                        width: int = 220, height: int = 160) -> alt.VConcatChart:
    """One panel per column (metric, then costs) against freeze depth K, with a slider for K.

    rows: one row per freeze depth (per `series` value when given, e.g. task or method), with an
    integer column `freeze` (-1 = full fine-tuning). The slider runs over K's range; the highlighted
    K is the run nearest the slider (ties go to the shallower K), so sweeps with gaps still snap to a
    real run. Below the panels a text row reads out the highlighted run's values.
    """
    frame = pd.DataFrame(list(rows) if not isinstance(rows, pd.DataFrame) else rows)
    columns = [metric, *costs]
    needed = [freeze, *columns] + ([series] if series else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"freeze_slider_chart: missing column(s) {missing}; the table has {list(frame.columns)}")
    if frame.empty:
        raise ValueError("freeze_slider_chart: no rows to chart")
    if not pd.api.types.is_integer_dtype(frame[freeze]):
        raise ValueError(f"freeze_slider_chart: column {freeze!r} must hold integer depths, got {frame[freeze].dtype}")
    key = [series, freeze] if series else [freeze]
    duplicated = frame[frame.duplicated(key, keep=False)]
    if not duplicated.empty:
        raise ValueError(f"freeze_slider_chart: several rows for {key} = "
                         f"{duplicated[key].drop_duplicates().to_dict('records')}; aggregate seeds first")
    formats = {column: ",.4~r" for column in columns} | dict(formats or {})

    data = frame[needed].copy()
    data["freeze_name"] = [freeze_label(int(k)) for k in data[freeze]]
    low, high = int(data[freeze].min()), int(data[freeze].max())
    start = high if start is None else start
    if not low <= start <= high:
        raise ValueError(f"freeze_slider_chart: start={start} is outside the depths run, {low}..{high}")
    k = alt.param(name=FREEZE_PARAM, value=start,
                  bind=alt.binding_range(min=low, max=high, step=1, name="freeze depth K (-1 = full) "))

    group = [series] if series else []
    # Distance to the slider, +0.5 above it so ties snap to the shallower depth.
    base = alt.Chart(alt.Data(values=data.to_dict("records"))).transform_calculate(
        distance=f"abs(datum['{freeze}'] - {FREEZE_PARAM}) + (datum['{freeze}'] > {FREEZE_PARAM} ? 0.5 : 0)"
    ).transform_joinaggregate(nearest="min(distance)", groupby=group).transform_calculate(
        selected="datum.distance == datum.nearest"
    )
    x = alt.X(f"{freeze}:Q", title="freeze depth K", scale=alt.Scale(domain=[low, high], nice=False),
              axis=alt.Axis(tickMinStep=1, format="d"))
    colour = alt.Color(f"{series}:N") if series else alt.value("#4c78a8")

    panels = []
    for column in columns:
        y = alt.Y(f"{column}:Q", title=column, scale=alt.Scale(zero=False),
                  axis=alt.Axis(format=formats[column]))
        tooltip = [alt.Tooltip("freeze_name:N", title="run")] + \
                  [alt.Tooltip(f"{c}:Q", format=formats[c]) for c in columns]
        line = base.mark_line(opacity=0.6).encode(x=x, y=y, color=colour,
                                                  detail=alt.Detail(f"{series}:N") if series else alt.Undefined)
        points = base.mark_point(filled=True).encode(
            x=x, y=y, color=colour, tooltip=tooltip,
            size=alt.condition("datum.selected", alt.value(160), alt.value(40)),
            opacity=alt.condition("datum.selected", alt.value(1.0), alt.value(0.5)),
        )
        rule = base.transform_filter("datum.selected").mark_rule(color="#e45756", strokeDash=[4, 3]).encode(x=x)
        panels.append(alt.layer(line, rule, points).properties(width=width, height=height, title=column))

    readout_expr = " + '  ·  ' + ".join(
        f"'{column} ' + format(datum['{column}'], '{formats[column]}')" for column in columns)
    prefix = f"datum['{series}'] + ': ' + " if series else ""
    readout = base.transform_filter("datum.selected").transform_calculate(
        readout=f"{prefix}datum.freeze_name + '  ·  ' + {readout_expr}"
    ).mark_text(align="left", baseline="middle", fontSize=13).encode(
        y=alt.Y(f"{series}:N", axis=None) if series else alt.value(10),
        x=alt.value(0),
        text="readout:N",
    ).properties(name=FREEZE_READOUT, view=alt.ViewBackground(strokeWidth=0), width=width * len(columns),
                 height=22 * (data[series].nunique() if series else 1))

    return alt.vconcat(alt.hconcat(*panels), readout).add_params(k)


# ---------------------------------------------------------------------------------------------
# Chapter 2 (RQ2, representational similarity). Owned by the similarity helper.

SIMILARITY_MEASURE_TITLES = {"rsa": "RSA (paper)", "cka": "linear CKA", "cka_debiased": "debiased CKA"}


def _chart_frame(rows: pd.DataFrame | Sequence[Mapping[str, Any]], needed: Sequence[str],
                 chart: str) -> pd.DataFrame:
    """Rows as a DataFrame (a copy), or a clear error naming the chart and the missing columns."""
    frame = pd.DataFrame(list(rows) if not isinstance(rows, pd.DataFrame) else rows).copy()
    if frame.empty:
        raise ValueError(f"{chart}: no rows to chart")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"{chart}: missing column(s) {missing}; the table has {list(frame.columns)}")
    return frame


def _similarity_frame(rows: pd.DataFrame | Sequence[Mapping[str, Any]], needed: Sequence[str],
                      chart: str) -> pd.DataFrame:
    frame = _chart_frame(rows, needed, chart)
    frame["measure_title"] = [SIMILARITY_MEASURE_TITLES.get(m, m) for m in frame["measure"]]
    return frame


PANELS_PER_ROW = 2  # faceted charts wrap after this many panels: each stays readable in the book's text column


def similarity_layers_chart(rows: pd.DataFrame | Sequence[Mapping[str, Any]], *, width: int = 290,
                            height: int = 150) -> alt.FacetChart:
    """Similarity to the pre-trained model over depth, one panel per task.

    rows: task, layer, depth (layer / L, so backbones of different depth share the x axis),
    measure ("rsa", "cka", "cka_debiased"), value, source (e.g. "ours (minilm-l6)" or
    "paper (unixcoder-base)"); optional low, high: the interval, drawn as a band where given.
    Colour = measure, dashes = source.
    """
    frame = _with_interval_columns(_similarity_frame(
        rows, ("task", "layer", "depth", "measure", "value", "source"), "similarity_layers_chart"))
    order = [SIMILARITY_MEASURE_TITLES[m] for m in SIMILARITY_MEASURE_TITLES
             if SIMILARITY_MEASURE_TITLES[m] in set(frame["measure_title"])]
    x = alt.X("depth:Q", title="depth (layer / L; 0 = embeddings)", scale=alt.Scale(domain=[0, 1]))
    color = alt.Color("measure_title:N", title="measure", sort=order)
    base = alt.Chart(frame).encode(
        x=x, y=alt.Y("value:Q", title="similarity to pre-trained", scale=alt.Scale(zero=False)),
        color=color, strokeDash=alt.StrokeDash("source:N", title="model"), detail="source:N",
        tooltip=["task:N", "source:N", "layer:O", "measure_title:N", alt.Tooltip("value:Q", format=".3f"),
                 alt.Tooltip("low:Q", format=".3f"), alt.Tooltip("high:Q", format=".3f")],
    )
    band = alt.Chart(frame).transform_filter("isValid(datum.low) && isValid(datum.high)").mark_area(
        opacity=0.2).encode(x=x, y="low:Q", y2="high:Q", color=color, detail="source:N")
    return (band + base.mark_line() + base.mark_point(filled=True, size=30)).properties(
        width=width, height=height).facet(facet=alt.Facet("task:N", title=None), columns=PANELS_PER_ROW)


def _with_interval_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """low/high columns (None where a row has no interval, e.g. the paper's numbers)."""
    for column in ("low", "high"):
        if column not in frame.columns:
            frame[column] = None
    return frame


def similarity_epochs_chart(rows: pd.DataFrame | Sequence[Mapping[str, Any]], *, width: int = 290,
                            height: int = 160) -> alt.FacetChart:
    """Per-epoch view: each layer's similarity to the pre-trained model after every epoch.

    rows: epoch, layer, measure, value (one row per epoch x layer x measure); optional low, high:
    the interval, drawn as a vertical bar where given; panels = measures.
    """
    frame = _with_interval_columns(_similarity_frame(rows, ("epoch", "layer", "measure", "value"),
                                                     "similarity_epochs_chart"))
    x = alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d"))
    color = alt.Color("layer:O", title="layer", scale=alt.Scale(scheme="viridis"))
    base = alt.Chart(frame).encode(
        x=x, y=alt.Y("value:Q", title="similarity to pre-trained", scale=alt.Scale(zero=False)), color=color,
        tooltip=["epoch:Q", "layer:O", "measure_title:N", alt.Tooltip("value:Q", format=".3f"),
                 alt.Tooltip("low:Q", format=".3f"), alt.Tooltip("high:Q", format=".3f")],
    )
    bars = alt.Chart(frame).transform_filter("isValid(datum.low) && isValid(datum.high)").mark_rule().encode(
        x=x, y="low:Q", y2="high:Q", color=color)
    return (bars + base.mark_line() + base.mark_point(filled=True)).properties(
        width=width, height=height).facet(facet=alt.Facet("measure_title:N", title=None), columns=PANELS_PER_ROW)


# ---------------------------------------------------------------------------------------------
# Chapter 4 (benchmarks). Owned by the bench helper.

BENCH_KINDS = ("full", "Telly uncached", "Telly cached", "LoRA", "BitFit")


def _bench_kind(row: Mapping[str, Any]) -> str:
    if row["method"] == "telly":
        return "Telly cached" if row["cached"] else "Telly uncached"
    return {"full": "full", "lora": "LoRA", "bitfit": "BitFit"}[row["method"]]


def bench_ratio_chart(rows: pd.DataFrame | Sequence[Mapping[str, Any]], *, value: str = "ratio_to_full",
                      title: str = "epoch time / full fine-tuning", limit: str | None = "compute_limit",
                      width: int = 320, height: int = 220) -> alt.FacetChart:
    """One bar per training variant (telly.studies.bench rows: model, label, method, cached, `value`), one
    panel per model; a black tick marks each cached variant's compute limit (L-K)/L when `limit`
    names a column. A dashed rule at 1 is full fine-tuning."""
    frame = pd.DataFrame(list(rows) if not isinstance(rows, pd.DataFrame) else rows)
    needed = ["model", "label", "method", "cached", value] + ([limit] if limit else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"bench_ratio_chart: missing column(s) {missing}; the table has {list(frame.columns)}")
    if frame.empty:
        raise ValueError("bench_ratio_chart: no rows to chart")
    frame = frame.copy()
    frame["kind"] = [_bench_kind(r) for r in frame.to_dict("records")]
    order = list(dict.fromkeys(frame["label"]))
    y = alt.Y("label:N", title=None, sort=order)
    tooltip = ["model:N", "label:N", alt.Tooltip(f"{value}:Q", format=".3f")]
    if limit:
        tooltip.append(alt.Tooltip(f"{limit}:Q", title="compute limit", format=".3f"))
    bars = alt.Chart().mark_bar().encode(
        x=alt.X(f"{value}:Q", title=title, scale=alt.Scale(zero=True)), y=y,
        color=alt.Color("kind:N", title="method", sort=list(BENCH_KINDS)), tooltip=tooltip)
    full = alt.Chart().mark_rule(strokeDash=[4, 3], color="#555").encode(x=alt.datum(1.0))
    layers = [bars, full]
    if limit:
        layers.append(alt.Chart().transform_filter(f"isValid(datum['{limit}'])").mark_tick(
            color="black", thickness=2, size=18).encode(x=f"{limit}:Q", y=y, tooltip=tooltip))
    return alt.layer(*layers, data=frame).properties(width=width, height=height).facet(
        row=alt.Row("model:N", title=None))


# ---------------------------------------------------------------------------------------------
# Chapter 3 (RQ3, freezing). Owned by the trainer helper (issue 4).

_FREEZE_COSTS = {"trainable_millions": "trainable backbone parameters (M)",
                 "epoch_seconds": "train seconds per epoch",
                 "time_to_best_seconds": "seconds to best validation"}


def freeze_results_chart(table: pd.DataFrame, task: str, *, highlight: int | None = None, margin: float | None = None,
                         width: int = 300, height: int = 170) -> alt.VConcatChart:
    """Quality and costs against freeze depth K for one task, from `telly.report.freezing.freeze_table`,
    two panels abreast so each stays readable on a page.

    Quality panel: Telly-K points with 95% CI bars, full fine-tuning as a line with its CI as a band,
    the zero-shot pre-trained score as a dashed line and, given the non-inferiority `margin`, a dotted
    line that far below full fine-tuning. Cost panels: trainable parameters, epoch time, time to best
    (full fine-tuning drawn at K = -1). `highlight`: a depth marked by a red rule in every panel (the
    live widget's selected K)."""
    needed = ["task", "method", "freeze", "value", "low", "high", "metric", "uses_cache", *_FREEZE_COSTS]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"freeze_results_chart: missing column(s) {missing}")
    rows = table[table.task == task]
    full = rows[rows.method == "full"]
    telly = rows[(rows.method == "telly") & rows.uses_cache]
    if full.empty and telly.empty:
        raise ValueError(f"freeze_results_chart: no full or Telly-K rows for task {task!r}")
    curve = pd.concat([full, telly]).sort_values("freeze").copy()
    curve["run"] = [freeze_label(int(k)) for k in curve.freeze]
    metric = rows.metric.iloc[0]
    x = alt.X("freeze:Q", title="freeze depth K (-1 = full)", axis=alt.Axis(tickMinStep=1, format="d"))
    base = alt.Chart(curve)
    marker = ([alt.Chart(pd.DataFrame({"freeze": [highlight], "run": [freeze_label(highlight)]}))
               .mark_rule(color="#e45756", strokeWidth=2).encode(x="freeze:Q", tooltip=["run"])]
              if highlight is not None else [])
    layers = [
        base.mark_errorbar().encode(x=x, y=alt.Y("low:Q", title=metric, scale=alt.Scale(zero=False)), y2="high:Q"),
        base.mark_line(point=True).encode(x=x, y="value:Q", tooltip=["run", alt.Tooltip("value:Q", format=".3f"),
                                                                     alt.Tooltip("low:Q", format=".3f"),
                                                                     alt.Tooltip("high:Q", format=".3f")]),
    ]
    if not full.empty:
        reference = pd.DataFrame({"low": [full.low.iloc[0]], "high": [full.high.iloc[0]],
                                  "value": [full.value.iloc[0]], "label": ["full fine-tuning (95% CI)"]})
        layers.insert(0, alt.Chart(reference).mark_rect(opacity=0.15, color="#54a24b").encode(y="low:Q", y2="high:Q"))
        layers.append(alt.Chart(reference).mark_rule(color="#54a24b").encode(y="value:Q", tooltip=["label"]))
        if margin is not None:
            floor = pd.DataFrame({"value": [full.value.iloc[0] - margin],
                                  "label": [f"full fine-tuning - non-inferiority margin ({margin:g})"]})
            layers.append(alt.Chart(floor).mark_rule(color="#54a24b", strokeDash=[2, 2])
                          .encode(y="value:Q", tooltip=["label"]))
    zero = rows.zero_shot.dropna() if "zero_shot" in rows else pd.Series(dtype=float)
    if not zero.empty:
        layers.append(alt.Chart(pd.DataFrame({"value": [zero.iloc[0]], "label": ["zero-shot (pre-trained)"]}))
                      .mark_rule(color="#e45756", strokeDash=[5, 4]).encode(y="value:Q", tooltip=["label"]))
    panels = [alt.layer(*layers, *marker).properties(width=width, height=height, title=f"{task}: test {metric}")]
    for column, title in _FREEZE_COSTS.items():
        line = base.mark_line(point=True).encode(
            x=x, y=alt.Y(f"{column}:Q", title=title), tooltip=["run", alt.Tooltip(f"{column}:Q", format=".3~r")])
        panels.append(alt.layer(line, *marker).properties(width=width, height=height, title=title))
    return alt.vconcat(alt.hconcat(*panels[:2]), alt.hconcat(*panels[2:]))


# ---------------------------------------------------------------------------------------------
# Chapter 1 (RQ1, probing). Rows from telly.report.probing.layer_rows / weight_rows; probes in
# the order of telly.probing.catalog.PROBES.

PROBE_ORDER = list(PROBES)
STATE_ORDER = ["random", "pretrained", "finetuned"]


def probing_layers_chart(rows: pd.DataFrame | Sequence[Mapping[str, Any]], *, width: int = 290,
                         height: int = 150) -> alt.FacetChart:
    """Layer-wise probe score per layer (0 = embeddings), one panel per probe.

    rows: model, probe, metric, state, layer, score, ci_low, ci_high, control (one row per probe x
    state x layer, as telly.report.probing.layer_rows gives; control is None for a probe without a
    control task). Colour = backbone state; the band is the bootstrap 95% CI; the dotted line is
    the lexical probe's control task (Hewitt & Liang, per word type) of the same state.
    """
    frame = _chart_frame(rows, ("model", "probe", "metric", "state", "layer", "score", "ci_low",
                                  "ci_high", "control"), "probing_layers_chart")
    frame = frame.assign(panel=frame["probe"] + " (" + frame["metric"] + ")")
    states = [s for s in STATE_ORDER if s in set(frame["state"])]
    color = alt.Color("state:N", title="backbone", sort=states)
    base = alt.Chart(frame).encode(x=alt.X("layer:O", title="layer (0 = embeddings)"), color=color)
    band = base.mark_area(opacity=0.18).encode(y=alt.Y("ci_low:Q", title="score"), y2="ci_high:Q")
    line = base.mark_line(point=True).encode(
        y=alt.Y("score:Q", scale=alt.Scale(zero=False)),
        tooltip=["model:N", "probe:N", "state:N", "layer:O", alt.Tooltip("score:Q", format=".3f"),
                 alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f"),
                 alt.Tooltip("control:Q", format=".3f")])
    control = base.mark_line(strokeDash=[2, 3], opacity=0.8).encode(y="control:Q")
    panels = [f"{p} ({m})" for p, m in frame.groupby("probe")["metric"].first().items()]
    panels.sort(key=lambda t: PROBE_ORDER.index(t.split(" ")[0]) if t.split(" ")[0] in PROBE_ORDER else 99)
    return (band + line + control).properties(width=width, height=height).facet(
        facet=alt.Facet("panel:N", title=None, sort=panels), columns=PANELS_PER_ROW).resolve_scale(y="independent")


def probing_weights_chart(rows: pd.DataFrame | Sequence[Mapping[str, Any]], *, width: int = 290,
                          height: int = 130) -> alt.FacetChart:
    """The weighted probe's learned softmax weight per layer (they sum to 1), one panel per probe.

    rows: model, probe, state, layer, weight (telly.report.probing.weight_rows). Bars grouped by state.
    """
    frame = _chart_frame(rows, ("model", "probe", "state", "layer", "weight"), "probing_weights_chart")
    states = [s for s in STATE_ORDER if s in set(frame["state"])]
    probes = [p for p in PROBE_ORDER if p in set(frame["probe"])]
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("layer:O", title="layer (0 = embeddings)"),
        xOffset=alt.XOffset("state:N", sort=states),
        y=alt.Y("weight:Q", title="mix weight"),
        color=alt.Color("state:N", title="backbone", sort=states),
        tooltip=["model:N", "probe:N", "state:N", "layer:O", alt.Tooltip("weight:Q", format=".3f")],
    ).properties(width=width, height=height).facet(facet=alt.Facet("probe:N", title=None, sort=probes),
                                                   columns=PANELS_PER_ROW)
