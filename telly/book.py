"""`telly book`: execute the chapters with papermill, then build the offline HTML book.

Build tree (all under book/_build/, never committed):
  src/   a copy of book/ in which each chapter is replaced by its executed copy (kept on failure),
         the web libraries are vendored into src/_vendor/, and _toc.yml lists only chapters that exist
  html/  the Jupyter Book 1.x output (execution off: papermill already ran every chapter)
The pages load vega, vega-lite, vega-embed, the ipywidgets HTML manager and MathJax from their own
_static/ folder: the packages come from the npm registry once (pinned versions, checked against
their published sha512) and are cached in <telly cache>/npm.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat
import papermill
import yaml
from papermill.exceptions import PapermillExecutionError

from telly.backbones import cache_dir
from telly.profiles import Profile
from telly.store import device_description, library_versions

CHAPTER_NAME = re.compile(r"^\d\d-[A-Za-z0-9_-]+$")  # NN-title, e.g. 03-freezing
REQUIRED_PARAMETERS = ("model", "profile", "out")
VENDOR_DIR = "_vendor"  # in the build tree; _config.yml lists it in html_static_path


class BookError(RuntimeError):
    """The book cannot be built; the message names the chapter, file or package at fault."""


# ---------------------------------------------------------------------------------------------
# Web libraries the pages load, vendored from the npm registry.

@dataclass(frozen=True)
class WebPackage:
    name: str
    version: str
    integrity: str  # the registry's sha512 of the tarball ("sha512-<base64>")
    base: str  # folder inside the package whose files are shipped
    include: tuple[str, ...]  # paths under base (files or folders; "" = everything)
    target: str  # folder under _static/ in the built book
    exclude_suffixes: tuple[str, ...] = ()


# Versions: what altair 6.3's CDN URLs (vega@6, vega-lite@6.4.1, vega-embed@7) resolved to when
# pinned; the HTML manager that ipywidgets 8 embeds; MathJax 3, which Sphinx 7 loads by default.
WEB_PACKAGES = (
    WebPackage("vega", "6.4.0",
               "sha512-rHXCq2LpEWCLMjXBEj7hocY9G0/i5TGYRayGGSj06VTF4+l2IG2Z7oeZKCjWbUh/7hTE/mVhbaOPB72wCElh6g==",
               "build", ("vega.min.js",), "vega"),
    WebPackage("vega-lite", "6.4.1",
               "sha512-KO3ybHNouRK4A0al/+2fN9UqgTEfxrd/ntGLY933Hg5UOYotDVQdshR3zn7OfXwQ7uj0W96Vfa5R+QxO8am3IQ==",
               "build", ("vega-lite.min.js",), "vega"),
    WebPackage("vega-embed", "7.3.0",
               "sha512-wQ8s5GaSzqoKgmRfbRolgBrjE2CP7ZKHXqH7NijxMqPjpdWxSs4Dn8tvp9g0giQvh2cK+3p56sxjWWM0wNngGw==",
               "build", ("vega-embed.min.js",), "vega"),
    # embed.js renders ipywidgets' built-in widgets from the saved state without require.js; its
    # webpack public path is its own folder, so the icon fonts beside it load locally too.
    WebPackage("@jupyter-widgets/html-manager", "1.0.15",
               "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
               "dist", ("",), "jupyter-widgets", exclude_suffixes=(".map", "-amd.js")),
    WebPackage("mathjax", "3.2.2",
               "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
               "es5", ("tex-mml-chtml.js", "input", "output/chtml", "ui", "a11y"), "mathjax"),
)


def npm_cache_dir() -> Path:
    return cache_dir() / "npm"


def fetch_npm_package(package: WebPackage, cache: Path | None = None) -> Path:
    """The unpacked package folder, fetched with `npm pack` once and checked against its sha512."""
    cache = npm_cache_dir() if cache is None else cache
    unpacked = cache / f"{package.name.replace('/', '+')}@{package.version}"
    if (unpacked / ".complete").exists():
        return unpacked / "package"
    npm = shutil.which("npm")
    spec = f"{package.name}@{package.version}"
    if npm is None:
        raise BookError(f"npm is not installed, and {spec} is not in {cache}: install Node.js/npm "
                        f"(Debian: apt-get install npm) so the book can ship its web libraries")
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run([npm, "pack", spec, "--pack-destination", tmp, "--json"],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise BookError(f"`npm pack {spec}` failed (exit {result.returncode}): {result.stderr.strip()[-1500:]}")
        tarball = Path(tmp) / json.loads(result.stdout)[0]["filename"]
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if digest != package.integrity:
            raise BookError(f"{spec}: the registry's tarball has {digest}, expected {package.integrity}")
        partial = unpacked.with_name(unpacked.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        with tarfile.open(tarball) as archive:
            archive.extractall(partial, filter="data")
        (partial / ".complete").write_text(digest + "\n")
        shutil.rmtree(unpacked, ignore_errors=True)
        partial.rename(unpacked)
    return unpacked / "package"


def _shipped_files(package: WebPackage, root: Path) -> list[tuple[Path, Path]]:
    """(source, path under the target folder) for every file the book ships from one package."""
    base = root / package.base
    chosen = []
    for path in sorted(base.rglob("*")):
        relative = path.relative_to(base).as_posix()
        if not path.is_file() or relative.endswith(package.exclude_suffixes):
            continue
        if any(entry == "" or relative == entry or relative.startswith(entry + "/") for entry in package.include):
            chosen.append((path, Path(relative)))
    missing = [entry for entry in package.include
               if entry and not any(r.as_posix() == entry or r.as_posix().startswith(entry + "/") for _, r in chosen)]
    if missing or not chosen:
        raise BookError(f"{package.name}@{package.version} has no {missing or package.include} under {base}")
    return chosen


def install_web_assets(static_dir: Path, cache: Path | None = None) -> list[Path]:
    """Copy every WEB_PACKAGES file (and each package's licence) into static_dir; returns the files."""
    written = []
    for package in WEB_PACKAGES:
        root = fetch_npm_package(package, cache)
        target = static_dir / package.target
        for source, relative in _shipped_files(package, root):
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
            written.append(destination)
        for licence in sorted(root.glob("LICEN[CS]E*")):
            destination = target / f"{licence.name}.{package.name.replace('/', '+')}"
            shutil.copyfile(licence, destination)
            written.append(destination)
    return written


# ---------------------------------------------------------------------------------------------
# Chapters: which ones, with which parameters.

@dataclass(frozen=True)
class Chapter:
    name: str  # e.g. "03-freezing"
    source: Path  # the committed notebook


def _toc_files(entry: Any) -> list[str]:
    """Every `file:` (and the root) in a jb-book _toc.yml, in reading order."""
    if isinstance(entry, list):
        return [name for item in entry for name in _toc_files(item)]
    if not isinstance(entry, dict):
        return []
    files = [str(entry[key]) for key in ("root", "file") if key in entry]
    for key in ("parts", "chapters", "sections"):
        files += _toc_files(entry.get(key, []))
    return files


def _document_exists(book_dir: Path, name: str) -> bool:
    stem = book_dir / name
    return stem.exists() or any(stem.with_suffix(s).exists() for s in (".md", ".ipynb", ".rst"))


def read_toc(book_dir: Path) -> dict:
    path = book_dir / "_toc.yml"
    try:
        toc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise BookError(f"{path}: no table of contents; the book needs one (jb-book format)") from None
    except yaml.YAMLError as exc:
        raise BookError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(toc, dict) or "root" not in toc:
        raise BookError(f"{path}: expected a jb-book table of contents with a `root:` entry")
    return toc


def find_chapters(book_dir: Path) -> tuple[list[Chapter], list[str]]:
    """Chapter notebooks (NN-*.ipynb) in _toc.yml order, and the toc entries whose file is missing."""
    chapters, missing = [], []
    for name in _toc_files(read_toc(book_dir)):
        stem = name.removesuffix(".ipynb")
        if not _document_exists(book_dir, stem):
            missing.append(stem)
        elif CHAPTER_NAME.match(Path(stem).name) and (book_dir / f"{stem}.ipynb").exists():
            chapters.append(Chapter(stem, book_dir / f"{stem}.ipynb"))
    return chapters, missing


def _without_missing(entry: Any, missing: set[str]) -> Any:
    """The toc with entries for missing files dropped (a chapter that has not landed yet)."""
    if isinstance(entry, list):
        kept = [_without_missing(item, missing) for item in entry]
        return [item for item in kept if item is not None]
    if isinstance(entry, dict):
        if str(entry.get("file", "")).removesuffix(".ipynb") in missing:
            return None
        kept = {key: _without_missing(value, missing) for key, value in entry.items()}
        # the toc schema rejects an empty chapters/parts/sections list: drop the key instead
        return {key: value for key, value in kept.items() if value != []}
    return entry


def chapter_parameters(chapter: Chapter, values: dict[str, Any]) -> dict[str, Any]:
    """The papermill parameters for one chapter: the required ones, plus those of `values` it declares."""
    declared = papermill.inspect_notebook(str(chapter.source))
    if not declared:
        raise BookError(f"{chapter.source}: no code cell tagged `parameters`; papermill needs one "
                        f"declaring {', '.join(REQUIRED_PARAMETERS)}")
    lacking = [name for name in REQUIRED_PARAMETERS if name not in declared]
    if lacking:
        raise BookError(f"{chapter.source}: its `parameters` cell does not declare {lacking}")
    return {name: value for name, value in values.items() if name in declared}


def execute_chapter(chapter: Chapter, executed: Path, parameters: dict[str, Any], cwd: Path) -> float:
    """Run one chapter with papermill into `executed`; a failing cell raises BookError naming it."""
    started = time.perf_counter()
    try:
        papermill.execute_notebook(str(chapter.source), str(executed), parameters=parameters,
                                   kernel_name="python3", cwd=str(cwd), progress_bar=True)
    except PapermillExecutionError as exc:
        raise BookError(f"chapter {chapter.name} failed in cell {_source_cell_index(executed, exc.cell_index)} "
                        f"(In [{exc.exec_count}]): {exc.ename}: {exc.evalue}\n"
                        f"  cell source: {_first_line(exc.source)}\n"
                        f"  executed notebook kept for inspection: {executed}") from None
    _tag_for_reading(executed)
    return time.perf_counter() - started


# Cell tags Jupyter Book reads: the code behind a page is collapsed behind a toggle, setup removed.
SHOWN_CODE = "hide-input"
HIDDEN = ("remove-cell", "remove-input", "hide-input")


def _tag_for_reading(executed: Path) -> None:
    """The page reads as a book: the default `parameters` cell is removed (papermill's injected cell
    keeps the values used), and every code cell that its chapter did not tag itself is collapsed
    behind a toggle (chapters tag pure set-up cells `remove-input`)."""
    notebook = nbformat.read(str(executed), as_version=4)
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.get("tags", [])
        if "parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
        elif not set(HIDDEN) & set(tags):
            cell.metadata["tags"] = [*tags, SHOWN_CODE]
    nbformat.write(notebook, str(executed))


def _source_cell_index(executed: Path, executed_index: int) -> int:
    """Index in the committed chapter of the cell that failed, skipping the cells papermill added."""
    cells = nbformat.read(str(executed), as_version=4).cells
    failed = next((i for i, cell in enumerate(cells) if cell.cell_type == "code"
                   and any(output.get("output_type") == "error" for output in cell.get("outputs", []))),
                  executed_index)
    added = {"injected-parameters", "papermill-error-cell-tag"}
    return sum(1 for cell in cells[:failed] if not added & set(cell.metadata.get("tags", [])))


def _first_line(source: str) -> str:
    lines = [line for line in source.splitlines() if line.strip()]
    return (lines[0] + (" ..." if len(lines) > 1 else "")) if lines else "(empty)"


# ---------------------------------------------------------------------------------------------
# The build.

def prepare_build_tree(book_dir: Path, build_src: Path, missing: list[str]) -> None:
    """Copy book/ into the build tree, vendor the web libraries, and drop missing toc entries."""
    if (book_dir / "_static").exists():
        # Jupyter Book 1 adds every .js under every static path to every page once _static exists,
        # which would load all of MathJax's and the widget manager's files in an arbitrary order.
        raise BookError(f"{book_dir / '_static'} exists: put extra static files under {book_dir / VENDOR_DIR} "
                        f"and list them in _config.yml instead")
    shutil.rmtree(build_src, ignore_errors=True)
    shutil.copytree(book_dir, build_src, ignore=shutil.ignore_patterns("_build", ".ipynb_checkpoints"))
    install_web_assets(build_src / VENDOR_DIR)
    toc = _without_missing(read_toc(book_dir), set(missing))
    (build_src / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))


def shown_path(path: Path) -> str:
    """A path as a page may show it: relative to where `telly book` ran when it lies below it, else only
    its last two parts (a page names no folder of the machine that built it)."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else f"…/{path.parent.name}/{path.name}"


def build_note(model: str, profile: Profile, out: Path, timings: dict[str, float]) -> str:
    """A MyST admonition for the introduction: how this copy of the book was produced."""
    versions = library_versions()
    ran = ", ".join(f"{name} ({seconds:.0f} s)" for name, seconds in timings.items()) or "none yet"
    return (f"\n\n:::{{admonition}} This build\n:class: tip\n"
            f"Built with `telly book --profile {profile.name} --model {model}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
            f"{device_description()}; telly {versions['telly']}, torch {versions['torch']}, "
            f"transformers {versions['transformers']}. Results store: `{shown_path(out)}`. "
            f"Chapters executed: {ran}.\n:::\n")


def build_html(build_src: Path, build_dir: Path) -> Path:
    """Jupyter Book 1.x HTML from the build tree (execution off per _config.yml) into build_dir/html."""
    if build_dir.name != "_build":
        raise BookError(f"{build_dir}: Jupyter Book writes to <path-output>/_build, so the build folder must be named _build")
    command = [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
               "build", "--all", "--path-output", str(build_dir.parent), str(build_src)]
    result = subprocess.run(command)
    index = build_dir / "html" / "index.html"
    if result.returncode != 0 or not index.exists():
        raise BookError(f"jupyter-book build of {build_src} failed (exit {result.returncode}); see its output above")
    return index


def build_book(*, book_dir: Path, profile: Profile, model: str, out: Path,
               extra: dict[str, Any] | None = None) -> Path:
    """Execute every chapter listed in _toc.yml, then build the HTML book; returns its index.html."""
    book_dir, out = book_dir.resolve(), out.resolve()
    build_dir = book_dir / "_build"
    build_src = build_dir / "src"
    chapters, missing = find_chapters(book_dir)
    for name in missing:
        print(f"telly book: {name} is listed in _toc.yml but not in {book_dir}; building without it", file=sys.stderr)
    listed = {c.name for c in chapters}
    for notebook in sorted(book_dir.glob("[0-9][0-9]-*.ipynb")):
        if notebook.stem not in listed:
            print(f"telly book: {notebook.name} is not in _toc.yml; not built", file=sys.stderr)

    # Relative to the chapters' working folder: a page shows no path of the machine that built it.
    values = {"model": model, "profile": profile.name, "out": os.path.relpath(out, build_src), **(extra or {})}
    parameters = {c.name: chapter_parameters(c, values) for c in chapters}
    undeclared = set(extra or {}) - {name for p in parameters.values() for name in p}
    if undeclared:
        raise BookError(f"no chapter declares parameter(s) {sorted(undeclared)}")

    prepare_build_tree(book_dir, build_src, missing)
    # The chapter kernels inherit these: telly's bars as text on stderr, which pages leave out
    # (telly.progress); the hub's and transformers' own bars off.
    os.environ.setdefault("TELLY_PROGRESS", "text")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    timings = {}
    for chapter in chapters:
        print(f"telly book: executing {chapter.name} with {parameters[chapter.name]}", file=sys.stderr)
        timings[chapter.name] = execute_chapter(chapter, build_src / f"{chapter.name}.ipynb",
                                                parameters[chapter.name], cwd=build_src)
        print(f"telly book: {chapter.name} took {timings[chapter.name]:.1f} s", file=sys.stderr)
    intro = build_src / f"{read_toc(book_dir)['root']}.md"
    if intro.exists():
        intro.write_text(intro.read_text() + build_note(model, profile, out, timings))
    index = build_html(build_src, build_dir)
    print(f"telly book: {index}", file=sys.stderr)
    return index
