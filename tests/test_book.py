"""The book's build pieces: chapters from the toc, papermill errors, vendored assets, chart HTML, provenance."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import stat
import tarfile
from pathlib import Path

import altair as alt
import nbformat
import pytest
import yaml

from telly import book, cli
from telly.profiles import get_profile
from telly.report import charts
from telly.store import provenance

BOOK = Path(__file__).resolve().parents[1] / "book"
PARAMETERS = 'model = "minilm-l6"\nprofile = "laptop"\nout = "runs"'


def write_chapter(path: Path, cells: list[str], parameters: str | None = PARAMETERS) -> Path:
    """A chapter notebook: markdown cells start with '#', the rest are code; a `parameters` cell first."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        notebook.cells.append(cell)
    for source in cells:
        make = nbformat.v4.new_markdown_cell if source.startswith("#") else nbformat.v4.new_code_cell
        notebook.cells.append(make(source))
    nbformat.write(notebook, path)
    return path


def write_book(root: Path, chapters: dict[str, list[str]], toc: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "_config.yml").write_text((BOOK / "_config.yml").read_text())
    (root / "intro.md").write_text("# Intro\n\nA test book.\n")
    entries = "".join(f"  - file: {name}\n" for name in (toc if toc is not None else chapters))
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\n" + (f"chapters:\n{entries}" if entries else ""))
    for name, cells in chapters.items():
        write_chapter(root / f"{name}.ipynb", cells)
    return root


# --- chapters and the toc ------------------------------------------------------------------------

def test_chapters_follow_the_toc_and_missing_ones_are_dropped(tmp_path):
    root = write_book(tmp_path / "b", {"02-second": ["1"], "01-first": ["1"], "05-unlisted": ["1"]},
                      toc=["02-second", "03-absent", "01-first"])
    chapters, missing = book.find_chapters(root)
    assert [c.name for c in chapters] == ["02-second", "01-first"]
    assert missing == ["03-absent"]
    toc = book._without_missing(book.read_toc(root), set(missing))
    assert toc["chapters"] == [{"file": "02-second"}, {"file": "01-first"}]
    assert "chapters" not in book._without_missing(book.read_toc(root), {"02-second", "03-absent", "01-first"})


def test_the_committed_toc_lists_only_chapter_files():
    names = [n for n in book._toc_files(book.read_toc(BOOK))][1:]
    assert names and all(book.CHAPTER_NAME.match(n) for n in names), names


def test_a_bad_toc_is_named(tmp_path):
    (tmp_path / "_toc.yml").write_text("chapters: [")
    with pytest.raises(book.BookError, match="_toc.yml: not valid YAML"):
        book.read_toc(tmp_path)


def test_parameters_cell_is_required_and_must_declare_the_contract(tmp_path):
    bare = book.Chapter("01-bare", write_chapter(tmp_path / "01-bare.ipynb", ["1"], parameters=None))
    with pytest.raises(book.BookError, match="01-bare.ipynb: no code cell tagged `parameters`"):
        book.chapter_parameters(bare, {"model": "m"})
    partial = book.Chapter("02-partial", write_chapter(tmp_path / "02-partial.ipynb", ["1"],
                                                       parameters='model = "x"\nprofile = "smoke"'))
    with pytest.raises(book.BookError, match=r"does not declare \['out'\]"):
        book.chapter_parameters(partial, {"model": "m"})
    full = book.Chapter("03-full", write_chapter(tmp_path / "03-full.ipynb", ["1"], parameters=PARAMETERS + "\nseeds = 1"))
    assert book.chapter_parameters(full, {"model": "m", "profile": "smoke", "out": "/o", "seeds": 3, "other": 1}) == \
        {"model": "m", "profile": "smoke", "out": "/o", "seeds": 3}


def test_cli_parameters_parse_as_yaml_values():
    assert cli._parameter("seeds=3") == ("seeds", 3)
    assert cli._parameter("tasks=[code-search, clone-detection]") == ("tasks", ["code-search", "clone-detection"])
    assert cli._parameter("name=minilm-l6") == ("name", "minilm-l6")
    with pytest.raises(Exception, match="NAME=VALUE"):
        cli._parameter("no-equals")


def test_a_failing_chapter_names_chapter_cell_and_error_and_keeps_the_notebook(tmp_path):
    source = write_chapter(tmp_path / "07-broken.ipynb", ["# Heading", "x = 1", "raise ValueError(f'bad value {x}')", "y = 2"])
    chapter = book.Chapter("07-broken", source)
    executed = tmp_path / "executed" / "07-broken.ipynb"
    executed.parent.mkdir()
    with pytest.raises(book.BookError) as failure:
        book.execute_chapter(chapter, executed, {"model": "m", "profile": "smoke", "out": str(tmp_path)}, cwd=tmp_path)
    message = str(failure.value)
    # cell 3 of the committed notebook: parameters (0), heading (1), x = 1 (2), the raise (3)
    assert "chapter 07-broken failed in cell 3" in message
    assert "ValueError: bad value 1" in message
    assert "raise ValueError" in message
    assert str(executed) in message and executed.exists()
    kept = nbformat.read(executed, as_version=4)
    assert any(o.get("ename") == "ValueError" for c in kept.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_build_book_executes_chapters_and_writes_html(tmp_path, capsys):
    root = write_book(tmp_path / "b", {"01-tiny": ["# Tiny chapter", "print(f'profile={profile} model={model}')"]},
                      toc=["01-tiny", "02-not-yet"])
    index = book.build_book(book_dir=root, profile=get_profile("smoke"), model="tiny-random", out=tmp_path / "runs")
    html = index.parent
    page = (html / "01-tiny.html").read_text()
    assert "profile=smoke model=tiny-random" in page
    assert "02-not-yet is listed in _toc.yml" in capsys.readouterr().err
    intro = (html / "intro.html").read_text()
    assert "This build" in intro and "tiny-random" in intro
    executed = nbformat.read(root / "_build" / "src" / "01-tiny.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    # the page shows the injected values, not the chapter's defaults
    assert "tiny-random" in page and '"minilm-l6"' not in page
    # every script the page loads is local
    scripts = re.findall(r'<script[^>]*\ssrc="([^"]+)"', page)
    assert scripts and not [s for s in scripts if "://" in s or s.startswith("//")], scripts
    assert (html / "_static" / "vega" / "vega-embed.min.js").exists()


def test_a_static_folder_in_the_book_is_refused(tmp_path):
    root = write_book(tmp_path / "b", {})
    (root / "_static").mkdir()
    with pytest.raises(book.BookError, match="_static exists"):
        book.prepare_build_tree(root, tmp_path / "src", [])


# --- vendored web libraries ------------------------------------------------------------------------

def test_config_loads_only_vendored_files(tmp_path):
    """Every script _config.yml names is a file install_web_assets ships, and vega-lite matches altair."""
    static = tmp_path / "_vendor"
    written = {p.relative_to(static).as_posix() for p in book.install_web_assets(static)}
    committed = {p.relative_to(BOOK / book.VENDOR_DIR).as_posix() for p in (BOOK / book.VENDOR_DIR).rglob("*") if p.is_file()}
    config = yaml.safe_load((BOOK / "_config.yml").read_text())["sphinx"]["config"]
    assert config["html_static_path"] == [book.VENDOR_DIR]
    named = [entry if isinstance(entry, str) else entry[0] for entry in config["html_js_files"]]
    named += [*config["nb_ipywidgets_js"], config["mathjax_path"]]
    assert [n for n in named if n not in written | committed] == []
    assert not written & committed  # npm files never overwrite the book's own
    assert f'"{alt.SCHEMA_VERSION.lstrip("v")}"' in (static / "vega" / "vega-lite.min.js").read_text()[:2000]
    assert any(p.startswith("vega/LICENSE") for p in written)
    assert not [p for p in written if p.endswith(".map")]


def _fake_npm(tmp_path: Path, files: dict[str, bytes]) -> str:
    """An `npm` on PATH whose `pack` writes a tarball of `files`; returns that tarball's sha512 integrity."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    tarball = tmp_path / "fake-1.0.0.tgz"
    tarball.write_bytes(buffer.getvalue())
    script = tmp_path / "bin" / "npm"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\n# args: pack SPEC --pack-destination DIR --json\ncp {tarball} "$4/"\n'
                      f'echo \'{json.dumps([{"filename": tarball.name}])}\'\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()


def test_npm_packages_are_checked_unpacked_and_cached(tmp_path, monkeypatch):
    integrity = _fake_npm(tmp_path, {"build/lib.min.js": b"var lib = 1;", "build/lib.js.map": b"{}", "LICENSE": b"MIT"})
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    package = book.WebPackage("fake", "1.0.0", integrity, "build", ("",), "fake", exclude_suffixes=(".map",))
    root = book.fetch_npm_package(package, tmp_path / "cache")
    assert (root / "build" / "lib.min.js").read_text() == "var lib = 1;"
    assert [r.as_posix() for _, r in book._shipped_files(package, root)] == ["lib.min.js"]
    (tmp_path / "bin" / "npm").unlink()  # cached: npm is not asked again
    assert book.fetch_npm_package(package, tmp_path / "cache") == root

    (tmp_path / "other").mkdir()
    _fake_npm(tmp_path / "other", {"build/lib.min.js": b"tampered"})
    monkeypatch.setenv("PATH", f"{tmp_path / 'other' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(book.BookError, match="fake@2.0.0: the registry's tarball has sha512-"):
        book.fetch_npm_package(book.WebPackage("fake", "2.0.0", integrity, "build", ("",), "fake"), tmp_path / "cache")
    with pytest.raises(book.BookError, match=r"has no \['missing.js'\]"):
        book._shipped_files(book.WebPackage("fake", "1.0.0", integrity, "build", ("missing.js",), "fake"), root)


# --- chart HTML ------------------------------------------------------------------------------------

def test_offline_renderer_emits_html_that_loads_no_script():
    previous = alt.renderers.active
    charts.setup_offline_rendering()
    try:
        chart = alt.Chart(alt.Data(values=[{"a": 1, "b": "</script><script>alert(1)"}])).mark_point().encode(x="a:Q", text="b:N")
        bundle = chart._repr_mimebundle_()
        bundle = bundle[0] if isinstance(bundle, tuple) else bundle
        html = bundle["text/html"]
    finally:
        alt.renderers.enable(previous)
    assert "vegaEmbed(el, spec, embedOpt)" in html
    assert " src=" not in html and "cdn" not in html
    assert html.count("</script>") == 1  # the data's "</script>" is escaped inside the JSON
    spec = json.loads(re.search(r"\}\)\((\{.*\}), \{\"renderer\"", html, re.S).group(1))
    assert spec["data"]["values"][0]["b"] == "</script><script>alert(1)"
    assert '"renderer": "svg"' in html


def test_freeze_slider_chart_binds_a_range_and_validates_its_table():
    rows = [{"task": t, "freeze": k, "mrr": 0.7, "epoch_seconds": 10.0} for t in ("a", "b") for k in (-1, 0, 5, 11)]
    spec = charts.freeze_slider_chart(rows, metric="mrr", costs=["epoch_seconds"], series="task").to_dict()
    (param,) = spec["params"]
    assert param["name"] == charts.FREEZE_PARAM and param["value"] == 11
    assert param["bind"]["input"] == "range" and (param["bind"]["min"], param["bind"]["max"], param["bind"]["step"]) == (-1, 11, 1)
    assert charts.FREEZE_READOUT in json.dumps(spec)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['bleu'\]"):
        charts.freeze_slider_chart(rows, metric="bleu")
    with pytest.raises(ValueError, match="several rows for"):
        charts.freeze_slider_chart(rows, metric="mrr")  # two tasks, no series column named
    with pytest.raises(ValueError, match="integer depths"):
        charts.freeze_slider_chart([{"freeze": 1.5, "mrr": 0.1}], metric="mrr")
    with pytest.raises(ValueError, match="outside the depths run"):
        charts.freeze_slider_chart(rows, metric="mrr", series="task", start=12)
    assert charts.freeze_label(-1) == "Base (full)" and charts.freeze_label(8) == "Telly-8"


# --- provenance --------------------------------------------------------------------------------------

def _record(**changes):
    record = {"task": "code-search", "freeze": 4, **provenance(model="minilm-l6", profile="smoke",
                                                                corpus_fingerprint="c0ffee12", seed=0, device="cpu")}
    record.update(changes)
    return record


def test_provenance_box_shows_model_data_profile_device_date_versions():
    record = _record()
    box = charts.provenance_box(record)
    html = box._repr_html_()
    for text in ("minilm-l6", "c0ffee12", "smoke", record["device"], record["date"], "torch " + record["versions"]["torch"]):
        assert text in html, text
    assert 'class="admonition note telly-provenance"' in html
    assert "- model: minilm-l6" in box._repr_markdown_()


def test_provenance_box_summarises_several_records_and_nested_provenance():
    first = _record(date="2026-01-02T00:00:00+00:00")
    second = {"metrics": {}, "provenance": _record(model="unixcoder-base", date="2026-01-01T00:00:00+00:00")}
    rows = dict(charts.provenance_box([first, second]).rows)
    assert rows["model"] == "minilm-l6, unixcoder-base"
    assert rows["date"] == "2026-01-01T00:00:00+00:00 to 2026-01-02T00:00:00+00:00"
    assert rows["records"] == "2"
    assert "<b>" not in charts.provenance_box(_record(model="<b>x</b>"))._repr_html_()


def test_provenance_box_rejects_records_without_provenance():
    record = _record()
    del record["corpus_fingerprint"]
    with pytest.raises(ValueError, match=r"record 0 has no provenance field\(s\) \['corpus_fingerprint'\]"):
        charts.provenance_box([record])
    with pytest.raises(ValueError, match="at least one record"):
        charts.provenance_box([])


def test_each_page_keeps_one_copy_of_every_script(tmp_path):
    """Sphinx with the book's script-registering extensions and telly.sphinx_pages: no script twice
    (the repeated sphinx-thebe config made every page log a SyntaxError)."""
    from sphinx.application import Sphinx

    (tmp_path / "conf.py").write_text('extensions = ["sphinx_thebe", "sphinx_togglebutton", "telly.sphinx_pages"]\n'
                                      'html_theme = "sphinx_book_theme"\n')
    (tmp_path / "index.rst").write_text("Title\n=====\n\ntext\n")
    app = Sphinx(str(tmp_path), str(tmp_path), str(tmp_path / "_build"), str(tmp_path / "_doctrees"), "html",
                 status=None, warning=None)
    app.build()
    page = (tmp_path / "_build" / "index.html").read_text()
    assert page.count("const THEBE_JS_URL =") == 1 and page.count("togglebuttonSelector =") == 1


def test_a_page_names_the_results_store_without_a_folder_of_the_building_machine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert book.shown_path(tmp_path / "runs" / "laptop") == "runs/laptop"
    elsewhere = Path("/srv/ci/work/runs")
    assert book.shown_path(elsewhere) == "…/work/runs"
    note = book.build_note("m", get_profile("smoke"), elsewhere, {})
    assert "…/work/runs" in note and "/srv/" not in note
