"""The path a GPU user takes (`make book PROFILE=paper` with real datasets), driven end to end on a
CPU: every chapter's code cells run in this process under the `paper` profile with its sizes shrunk,
on a tiny random model, with local files in the published formats (CodeXGLUE code-to-text jsonl,
BigCloneBench data.jsonl + pair lists, CONCODE json lines, CodeXGLUE line completion, POJ-104 jsonl).
Everything but the sizes is the paper profile's: beam search, all depths, ten-epoch budget with
early stopping, no mixed precision."""
from __future__ import annotations

import json
import random
from pathlib import Path

import nbformat
import pytest

from telly import loaders
from telly.corpus import load_corpus
from telly.profiles import PROFILES

BOOK = Path(__file__).resolve().parents[1] / "book"
SPLITS = {"train": 24, "valid": 8, "test": 8}

pytestmark = pytest.mark.integration


def write_published_formats(root: Path, seed: int = 0) -> dict[str, str]:
    """Files in each dataset's published layout, filled from stdlib functions; task -> path."""
    functions = [f for f in load_corpus("stdlib") if len(f.code) < 600]
    random.Random(seed).shuffle(functions)
    pools, start = {}, 0
    for split, size in SPLITS.items():
        pools[split], start = functions[start:start + size], start + size

    csn = root / "codesearchnet" / "python"
    csn.mkdir(parents=True)
    for split, pool in pools.items():
        rows = [{"code": f.code, "docstring": f.docstring, "func_name": f.qualname, "path": f.path,
                 "code_tokens": f.code_without_doc.split(), "docstring_tokens": f.docstring.split()} for f in pool]
        (csn / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    bcb = root / "bigclonebench"
    bcb.mkdir()
    everything = [f for pool in pools.values() for f in pool]
    (bcb / "data.jsonl").write_text("".join(json.dumps({"idx": str(i), "func": f.code}) + "\n"
                                            for i, f in enumerate(everything)))
    offset = 0
    for split, pool in pools.items():
        ids = list(range(offset, offset + len(pool)))
        offset += len(pool)
        lines = [f"{a}\t{a}\t1" for a in ids[::2]] + [f"{a}\t{b}\t0" for a, b in zip(ids, ids[1:])]
        (bcb / f"{split}.txt").write_text("\n".join(lines) + "\n")

    concode = root / "concode"
    concode.mkdir()
    for split, pool in pools.items():
        name = "dev" if split == "valid" else split
        rows = [{"nl": f.docstring + " concode_field_sep int size", "code": " ".join(f.code_without_doc.split()[:40])}
                for f in pool]
        (concode / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))

    completion = root / "line_completion" / "javaCorpus" / "line_completion"
    completion.mkdir(parents=True)
    rows = []
    for f in everything:
        lines = [" ".join(line.split()) for line in f.code.splitlines() if line.strip()]
        if len(lines) >= 2:
            rows.append({"input": "<s> " + " <EOL> ".join(lines[:-1]), "gt": lines[-1]})
    (completion / "test.json").write_text("".join(json.dumps(r) + "\n" for r in rows))

    poj = root / "poj104"
    poj.mkdir()
    for split, pool in pools.items():
        rows = [{"code": f.code, "label": i % 4 + 1, "index": i} for i, f in enumerate(pool)]
        (poj / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    return {"code-search": str(root / "codesearchnet"), "code-summarization": str(root / "codesearchnet"),
            "clone-detection": str(bcb), "code-generation": str(concode),
            "code-completion": str(root / "line_completion")}


@pytest.fixture
def paper(monkeypatch):
    """The paper profile with its sizes shrunk: every other setting is the GPU user's."""
    shrunk = PROFILES["paper"].changed(
        probe_functions=80, similarity_functions=24, max_code_tokens=32, max_text_tokens=16,
        feature_batch_size=16, probe_epochs=3, train_examples=16, valid_examples=8, test_examples=8, batch_size=8,
        epochs=2, max_target_tokens=6, num_beams=3, generation_examples=(16, 8, 8), bootstrap_samples=50,
        bench_repeats=1, bench_steps=1, bench_batch_size=2, bench_code_tokens=16, bench_probe_texts=8,
        bench_similarity_inputs=64, cache_memory_mb=64, extra_probe_models=(), lexical_functions=20,
        sbt_max_tokens=64, probe_weight_refits=2, extra_probe_functions=16, extra_probe_tokens=16,
    )
    monkeypatch.setitem(PROFILES, "paper", shrunk)
    return shrunk


def run_chapter(name: str, **parameters) -> dict:
    """Execute a chapter's code cells in this process after its parameters cell, with `parameters`
    replacing the defaults (as papermill injects them); returns the chapter's namespace."""
    notebook = nbformat.read(BOOK / name, as_version=4)
    namespace: dict = {}
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        exec(compile(cell.source, f"{name}:cell", "exec"), namespace)
        if "parameters" in cell.metadata.get("tags", []):
            namespace.update(parameters)
    return namespace


def test_the_published_formats_load_through_the_loaders(tmp_path):
    paths = write_published_formats(tmp_path)
    assert len(loaders.load_codesearchnet(paths["code-search"], "valid")) == SPLITS["valid"]
    assert {r.label for r in loaders.load_bigclonebench(paths["clone-detection"], "train")} == {0, 1}
    assert len(loaders.load_concode(paths["code-generation"], "valid")) == SPLITS["valid"]
    assert len(loaders.load_line_completion(paths["code-completion"], "test")) > 30
    assert len(loaders.load_poj104(tmp_path / "poj104", "test")) == SPLITS["test"]


def test_every_chapter_runs_the_paper_profile_on_published_formats(tmp_path, paper, monkeypatch, capsys):
    data = write_published_formats(tmp_path / "data")
    out = tmp_path / "runs"
    records = str(BOOK / "records" / "smollm2-135m")
    common = {"model": "tiny-random", "profile": "paper", "out": str(out), "study_records": records}

    rq1 = run_chapter("01-probing.ipynb", **common, extra_models=[])
    assert {r["profile"] for r in rq1["records"]} == {"paper"}
    rq2 = run_chapter("02-similarity.ipynb", **common)
    assert set(rq2["documents"]) == set(rq2["tasks"])
    # tiny-random stands in for UniXcoder, an encoder pre-trained to generate: its generation tasks run too.
    rq3 = run_chapter("03-freezing.ipynb", **common, data=data, generation_on_encoders=True)
    assert rq3["result"]["not_run"] == {}
    ran = {(r["task"], r["freeze"]) for r in rq3["records"]}
    layers = rq3["facts"]["num_layers"]
    # The paper profile sweeps every depth of every task, each from its published-format file.
    assert ran >= {(task, k) for task in data for k in range(-1, layers)}
    for r in rq3["records"]:
        if r["task"] in data and r.get("method", "telly") == "telly":
            assert r["data"]["path"] == data[r["task"]], r["task"]
    assert rq3["summary"]["profile"] == "paper"
    rq4 = run_chapter("04-bench.ipynb", **common)
    assert rq4["record"]["origin"] == "run" and rq4["record"]["profile"] == "paper"
