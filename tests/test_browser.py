"""The built book in headless Chromium: no request leaves 127.0.0.1, every chart draws, the slider works.

Two books are built: the real smoke book (`telly book --profile smoke`, whatever chapters exist) and a
one-chapter fixture book whose chapter is written here (a freeze slider, an ipywidget, math), so the
slider and widget checks run even before the chapters that use them land.
"""
from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from test_book import BOOK, write_chapter

from telly.book import find_chapters
from telly.report.charts import freeze_label

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
if CHROMIUM is None:
    pytest.skip("Debian chromium is not installed (`make browser` installs it)", allow_module_level=True)
from playwright import sync_api  # noqa: E402  (a test dependency: pip install -e '.[test]')

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = {"127.0.0.1"}
# Where the chapters' full-page screenshots go for review (printed with their sizes).
SCREENSHOTS = Path(os.environ.get("TELLY_SCREENSHOTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def _build(book_dir: Path, out: Path, profile: str = "smoke", parameters: tuple[str, ...] = ()) -> Path:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "telly.cli", "book", "--profile", profile, "--book", str(book_dir), "--out", str(out)]
    command += [part for parameter in parameters for part in ("-p", parameter)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-6000:]}"
    return book_dir / "_build" / "html"


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory) -> Path:
    """The real book at the smoke profile with a multi-run sweep (two seeds of every depth), built from
    a copy so the repository's build tree is untouched."""
    root = tmp_path_factory.mktemp("smoke-book")
    shutil.copytree(BOOK, root / "book", ignore=shutil.ignore_patterns("_build", ".ipynb_checkpoints"))
    return _build(root / "book", root / "runs", parameters=("seeds=[0, 1]",))


@pytest.fixture(scope="module")
def fixture_book(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fixture-book")
    book = root / "book"
    shutil.copytree(BOOK, book, ignore=shutil.ignore_patterns("_build", "[0-9][0-9]-*.ipynb", ".ipynb_checkpoints"))
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: 01-fixture\n")
    write_chapter(book / "01-fixture.ipynb", [
        "# A fixture chapter\n\nFreezing $K$ of $L$ layers:\n\n$$\\text{trainable} = (L - K)\\,p$$",
        "from telly.report import charts\nimport ipywidgets\ncharts.setup_offline_rendering()",
        "rows = [dict(freeze=k, mrr=0.72 - 0.004 * k, epoch_seconds=1000.0 - 60 * k) for k in (-1, 0, 2, 5, 8, 10, 11)]\n"
        "charts.freeze_slider_chart(rows, metric='mrr', costs=['epoch_seconds'], start=11)",
        "ipywidgets.IntSlider(value=7, min=0, max=11, description='fixture widget')",
    ])
    return _build(book, root / "runs")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with tempfile.TemporaryDirectory(prefix="telly-chromium-") as profile, sync_api.sync_playwright() as playwright:
        # a persistent context takes our fresh --user-data-dir; playwright adds its own --headless flag
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True,
            args=[flag for flag in CHROMIUM_FLAGS if flag != "--headless"])
        yield context
        context.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = lambda *a, **k: _Quiet(*a, directory=str(directory), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def chapter_pages(html: Path) -> list[Path]:
    return sorted(html.glob("[0-9][0-9]-*.html"))


def load(browser, url: str) -> tuple[object, list[str], list[str]]:
    """Open a page, blocking and logging every request that is not for 127.0.0.1; returns page, requests, errors."""
    page = browser.new_page()
    requests, errors = [], []

    def route(route):
        requests.append(route.request.url)
        host = urlparse(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:", "about:")) or host in LOCAL_HOSTS:
            route.continue_()
        else:
            route.abort()

    page.route("**/*", route)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(url, wait_until="load")
    return page, requests, errors


def check_page(browser, base: str, html: Path, page_path: Path) -> object:
    page, requests, errors = load(browser, f"{base}/{page_path.relative_to(html).as_posix()}")
    charts = page.locator(".telly-chart").count()
    if charts:
        page.wait_for_function(f"document.querySelectorAll('.telly-chart.vega-embed svg').length >= {charts}",
                               timeout=30_000)
    foreign = [url for url in requests if urlparse(url).hostname not in LOCAL_HOSTS | {None}
               and not url.startswith(("data:", "blob:"))]
    assert not foreign, f"{page_path.name} requested non-local URLs: {foreign}"
    for index in range(charts):
        chart = page.locator(".telly-chart").nth(index)
        assert chart.locator("svg [class*='mark-']").count() > 0, \
            f"{page_path.name}: chart {index} drew no vega marks"
        assert chart.locator(".telly-chart-error, .telly-chart-missing").count() == 0, \
            f"{page_path.name}: chart {index} failed: {chart.inner_text()}"
    assert not errors, f"{page_path.name} logged errors: {errors}"
    return page


RAW_REPR = re.compile(r"<IPython\.core\.display\.\w+ object>|<[\w.]+ object at 0x[0-9a-f]+>|\{'model': '")
MACHINE_ROOTS = (str(Path.home()) + "/", tempfile.gettempdir() + "/", str(Path(__file__).resolve().parents[1]))
PROGRESS_TEXT = re.compile(r"\d+%\|.*\||\d+(\.\d+)?(it|s)/(s|it)\]")  # tqdm's bar and its rate


def check_reads_as_a_book(page, name: str) -> None:
    """No code input shows unless its toggle is opened, and no progress bar or its text is on the page."""
    visible_code = page.eval_on_selector_all(
        "div.cell_input", "els => els.filter(e => e.offsetParent !== null && !e.closest('details:not([open])')).length")
    assert visible_code == 0, f"{name}: {visible_code} code cell(s) show their source by default"
    text = page.inner_text("main") if page.locator("main").count() else page.inner_text("body")
    assert not PROGRESS_TEXT.search(text), f"{name} shows progress-bar text: {PROGRESS_TEXT.search(text).group(0)!r}"
    raw = RAW_REPR.search(text)
    assert not raw, f"{name} shows a raw Python repr: {raw.group(0)!r}"
    paths = [root for root in MACHINE_ROOTS if root in text]
    assert not paths, f"{name} shows a path of the machine that built it: {paths}"
    assert page.locator(".widget-progress:visible, progress:visible").count() == 0, f"{name} shows a progress bar"
    gap = largest_blank_stretch(page)
    viewport = page.evaluate("window.innerHeight")
    assert gap < viewport, f"{name}: a blank stretch of {gap:.0f} px, taller than the {viewport} px screen"


# Widget models a reader uses (the freeze explorer's); tqdm's bars would add FloatProgress and friends.
READER_WIDGETS = {"IntSliderModel", "SliderStyleModel", "LayoutModel", "VBoxModel", "HBoxModel", "OutputModel",
                  "HTMLModel", "HTMLStyleModel", "DescriptionStyleModel", "LabelModel", "LabelStyleModel",
                  "ButtonModel", "ButtonStyleModel", "DropdownModel",
                  "IntProgressModel", "ProgressStyleModel"}  # the explorer's epoch bar, hidden until it trains


def saved_widget_models(html: str) -> set[str]:
    """The widget model names of the page's saved ipywidgets state."""
    return set(re.findall(r'"model_name":\s*"(\w+)"', html))


def largest_blank_stretch(page) -> float:
    """The tallest vertical run of the article with nothing drawn in it (px): the largest gap between the
    bottom of everything above and the top of the next visible text, table, image, chart or widget."""
    return page.evaluate("""() => {
        const root = document.querySelector('main') || document.body;
        const boxes = [];
        for (const el of root.querySelectorAll('p, li, pre, table, img, svg, canvas, h1, h2, h3, h4, .widget-box, .jupyter-widgets, summary, .cell_output > div')) {
            const r = el.getBoundingClientRect();
            if (r.width > 0 && r.height > 0 && el.offsetParent !== null) boxes.push([r.top + window.scrollY, r.bottom + window.scrollY]);
        }
        boxes.sort((a, b) => a[0] - b[0]);
        let reach = boxes.length ? boxes[0][1] : 0, gap = 0;
        for (const [top, bottom] of boxes) { gap = Math.max(gap, top - reach); reach = Math.max(reach, bottom); }
        return gap;
    }""")


def check_book_page(browser, base: str, html: Path, page_path: Path, screenshot: str | None = None):
    """Every check a reader's page must pass (check_page, check_reads_as_a_book, the saved widget
    state), after saving its full-page screenshot; returns the open page."""
    page = check_page(browser, base, html, page_path)
    save_screenshot(page, screenshot or page_path.name)
    check_reads_as_a_book(page, page_path.name)
    unused = saved_widget_models(page_path.read_text()) - READER_WIDGETS
    assert not unused, f"{page_path.name} saves widgets no reader uses: {sorted(unused)}"
    return page


def save_screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{Path(name).stem}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot {path} ({path.stat().st_size / 1024:.0f} KiB, {page.evaluate('document.body.scrollHeight')} px tall)")
    return path


SLIDER = "input[type=range][name=freeze_k]"


def slider_charts(page) -> list:
    """Each chart on the page that carries a freeze-depth slider (a page may show several)."""
    charts = page.locator(".telly-chart").filter(has=page.locator(SLIDER))
    return [charts.nth(i) for i in range(charts.count())]


def readout(chart) -> list[str]:
    return chart.locator("g[class*='freeze_readout'] text").all_text_contents()


def move_slider(chart, value: int) -> None:
    chart.locator(SLIDER).evaluate(
        "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input', {bubbles: true})); }", value)


def wait_for_readout(chart, changed_from: list[str], seconds: float = 10.0) -> list[str]:
    """The chart's readout once it differs from `changed_from` (vega redraws asynchronously)."""
    deadline = time.monotonic() + seconds
    while (now := readout(chart)) == changed_from and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def check_slider(chart) -> None:
    before = readout(chart)
    assert before, "the freeze slider chart shows no readout row"
    high, low = (int(chart.locator(SLIDER).get_attribute(bound)) for bound in ("max", "min"))
    target = low if any(freeze_label(high) in line for line in before) else high
    move_slider(chart, target)
    after = wait_for_readout(chart, before)
    expected = freeze_label(target)
    assert all(line != old for line, old in zip(after, before)), (before, after)
    assert any(expected in line for line in after), f"slider at {target} highlights {after}"


def pareto_charts(page) -> list:
    """Chapter 5's charts: the two menus (method, Telly-K's K) that pick a point."""
    charts = page.locator(".telly-chart")
    return [charts.nth(i) for i in range(charts.count()) if charts.nth(i).locator("select").count() == 2]


def picked(chart) -> str:
    return next((t for t in chart.locator("svg text").all_text_contents() if t and "x full" in t), "")


def check_pick(chart) -> None:
    """Picking another method in the menu moves the ring and its readout to that method's point."""
    before = picked(chart)
    assert before, "the Pareto chart reads out no picked point"
    menu = chart.locator("select").first
    target = next(o for o in menu.locator("option").all_text_contents() if not before.startswith(o))
    menu.select_option(target)
    deadline = time.monotonic() + 10
    while (after := picked(chart)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after.startswith("Base" if target == "Full" else "Telly-" if target == "Telly-K" else target), (target, after)


def test_smoke_book_pages_are_offline_and_draw(smoke_book, browser):
    chapters, _ = find_chapters(BOOK)
    assert [p.stem for p in chapter_pages(smoke_book)] == sorted(c.name for c in chapters)
    server, base = serve(smoke_book)
    try:
        pages = [smoke_book / "intro.html", *chapter_pages(smoke_book)]
        for page_path in pages:
            page = check_book_page(browser, base, smoke_book, page_path)
            if page_path.name != "intro.html":
                assert page.locator(".telly-chart").count() > 0, f"{page_path.name} shows no chart"
            sliders = slider_charts(page)  # chapter 3: the study's sweep (when recorded) and the live one
            assert sliders or not page_path.name.startswith("03-"), "chapter 3 shows no freeze-depth slider"
            for chart in sliders:
                check_slider(chart)
            picks = pareto_charts(page)  # chapter 5: one per task of the live run
            assert picks or not page_path.name.startswith("05-"), "chapter 5 shows no Pareto chart to pick on"
            for chart in picks:
                check_pick(chart)
            page.close()
    finally:
        server.shutdown()


def test_fixture_book_slider_widget_and_math(fixture_book, browser):
    server, base = serve(fixture_book)
    try:
        page = check_page(browser, base, fixture_book, fixture_book / "01-fixture.html")
        assert page.locator(".telly-chart").count() == 1
        [chart] = slider_charts(page)
        before = readout(chart)
        assert "Telly-11" in " ".join(before)
        move_slider(chart, 3)  # no run at K=3: the nearest, shallower run (K=2) is highlighted
        assert "Telly-2" in wait_for_readout(chart, before)[0]
        check_slider(chart)
        # the ipywidget renders from the saved state with the local HTML manager
        page.wait_for_selector(".widget-slider, .jupyter-widgets.widget-slider", timeout=15_000)
        assert "fixture widget" in page.inner_text(".jupyter-widgets.widget-slider, .widget-slider")
        # MathJax (local) typesets the formula
        page.wait_for_selector("mjx-container", timeout=15_000)
        page.close()
    finally:
        server.shutdown()


def test_the_last_local_book_build_reads_as_a_book(browser):
    """The pages of `make book` (book/_build/html, any profile) under the same checks, when a build is
    there: after a laptop build, `pytest tests/test_browser.py` checks what readers will open."""
    html = BOOK / "_build" / "html"
    if not chapter_pages(html):
        pytest.skip("no local book build (make book writes book/_build/html)")
    server, base = serve(html)
    try:
        for page_path in [html / "intro.html", *chapter_pages(html)]:
            page = check_book_page(browser, base, html, page_path, screenshot=f"built-{page_path.name}")
            for chart in slider_charts(page):
                check_slider(chart)
            page.close()
    finally:
        server.shutdown()
