"""The freeze explorer (ipywidgets): a freeze-depth slider over one task's quality/cost chart, which
fine-tunes a depth not in the store yet on a button press. It runs part of RQ3's study; how the
chart looks is the chapter's to say (`chart`, e.g. `telly.report.freezing.explorer_chart`), so this
module never imports report/. ipywidgets is imported where a widget is made.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from IPython.display import display

from telly.analysis import freeze_label
from telly.backbones import load
from telly.profiles import Profile
from telly.store import RunStore, Variant, as_store
from telly.trainer import finetune, finished_run


class FreezeExplorer:
    """The live freeze-depth widget: a slider for K redraws the task's quality/cost chart from the
    store with that depth marked; a depth not run yet trains on a button press (a progress bar
    counts its epochs) and then joins the chart. Display it as a cell's last expression. In the
    static book its last state shows, inert (no kernel runs behind a page).

    chart(records, task, depth): the chart of the task's full and cached Telly-K records of this seed
    with `depth` marked (`telly.report.freezing.explorer_chart`)."""

    def __init__(self, task: str, model: str, profile: Profile, store: RunStore | str | Path, *,
                 chart: Callable[[list[dict], str, int], Any], seed: int = 0, data_path: str | None = None,
                 start: int | None = None) -> None:
        import ipywidgets as widgets

        self.task, self.model, self.seed, self.data_path, self.draw = task, model, seed, data_path, chart
        self.profile, self.store = profile, as_store(store)
        num_layers = load(model).num_layers
        self.slider = widgets.IntSlider(value=num_layers // 2 if start is None else start, min=-1,
                                        max=num_layers - 1, description="freeze K", continuous_update=False)
        self.button = widgets.Button(description="fine-tune this depth", icon="play")
        # Shown only while a depth trains: a static page has no kernel, so an idle bar would mislead.
        self.progress = widgets.IntProgress(value=0, min=0, max=self.profile.training.epochs, description="epochs",
                                            layout=widgets.Layout(display="none"))
        self.status = widgets.HTML()
        self.output = widgets.Output()
        self.chart = None
        self.slider.observe(lambda _change: self.redraw(), names="value")
        self.button.on_click(lambda _button: self.train())
        self.widget = widgets.VBox([widgets.HBox([self.slider, self.button, self.progress]), self.status, self.output])
        self.redraw()

    def variant(self) -> Variant:
        return Variant.of(self.task, self.model, self.slider.value, seed=self.seed, profile=self.profile,
                          data_path=self.data_path)

    def records(self) -> list[dict]:
        """The task's full and cached Telly-K records of this seed in the store."""
        return [r for r in self.store.records(model=self.model, profile=self.profile.name, tasks=[self.task],
                                              data_paths={self.task: self.data_path} if self.data_path else None)
                if r["seed"] == self.seed and (r["method"] == "full" or (r["method"] == "telly" and r["uses_cache"]))]

    def redraw(self) -> None:
        """Rebuild the chart from the store with the slider's depth marked, and say whether it ran."""

        records = self.records()
        ran = finished_run(self.variant(), self.store) is not None
        self.button.disabled = ran
        self.status.value = (f"{freeze_label(self.slider.value)}: " +
                             ("in the store, marked on the chart." if ran else
                              "not run yet; press the button to fine-tune it here."))
        self.chart = self.draw(records, self.task, self.slider.value) if records else None
        self.output.clear_output(wait=True)
        if self.chart is not None:
            with self.output:
                display(self.chart)

    def train(self) -> dict:
        """Fine-tune the slider's depth (or read it back), then redraw."""

        variant = self.variant()
        record = finished_run(variant, self.store)
        if record is None:
            self.button.disabled = True
            self.progress.value = 0
            self.progress.layout.display = None
            self.status.value = f"training {variant.label} on {self.task} ..."

            def advance(epoch: dict, epochs: int) -> None:
                self.progress.max = epochs
                self.progress.value = epoch["epoch"]

            try:
                record = finetune(variant, self.store, progress=False, on_epoch=advance)
            finally:
                self.progress.layout.display = "none"
        self.redraw()
        return record

    def _ipython_display_(self) -> None:
        display(self.widget)
