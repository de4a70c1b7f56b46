"""telly.studies.bench and telly.report.bench: the measurement harness on a fake clock, the memory
and probing measurements, and a tiny end-to-end bench. No timing assertions: speed goals live in
the benchmark's own table."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from telly import store, trainer
from telly.methods import BitFit
from telly.profiles import get_profile
from telly.report import bench as report
from telly.studies import bench
from telly.studies import bench_harness as harness
from telly.studies import bench_workloads as workloads


class FakeClock:
    """A clock that only moves when a variant says how long it 'took'."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_interleave_takes_medians_rotates_order_and_ratios():
    clock = FakeClock()
    durations = {"full": [10.0, 30.0, 11.0], "telly": [2.0, 9.0, 3.0], "lora": [6.0, 5.0, 7.0]}
    calls = []

    def variant(name):
        def run(watch, repeat):
            calls.append((repeat, name))
            with watch.measure("epoch"):
                clock.now += durations[name][repeat]
            with watch.measure("setup"):
                clock.now += 1.0
            return {"seen": repeat}
        return run

    runs = harness.interleave({n: variant(n) for n in durations}, 3, clock=clock, progress=False)
    assert [n for r, n in calls if r == 0] == ["full", "telly", "lora"]
    assert [n for r, n in calls if r == 1] == ["telly", "lora", "full"]
    assert [n for r, n in calls if r == 2] == ["lora", "full", "telly"]
    assert runs["full"].seconds["epoch"] == [10.0, 30.0, 11.0]
    medians = {n: r.median("epoch") for n, r in runs.items()}
    assert medians == {"full": 11.0, "telly": 3.0, "lora": 6.0}
    assert runs["telly"].median("setup") == 1.0
    assert runs["lora"].info == {"seen": 2}
    ratios = harness.ratio_to(medians, "full")
    assert ratios["full"] == 1.0
    assert ratios["telly"] == pytest.approx(3 / 11)
    assert ratios["lora"] == pytest.approx(6 / 11)


def test_stopwatch_accumulates_and_syncs_around_each_measure():
    clock, synced = FakeClock(), []
    watch = harness.Stopwatch(clock, sync=lambda: synced.append(clock.now))
    for step in (1.5, 2.5):
        with watch.measure("epoch"):
            clock.now += step
    assert watch.seconds == {"epoch": 4.0}
    assert len(synced) == 4


def test_harness_errors_are_clear():
    with pytest.raises(RuntimeError, match="measured nothing"):
        harness.interleave({"idle": lambda watch, repeat: None}, 1, progress=False)
    with pytest.raises(ValueError, match="repeats"):
        harness.interleave({"idle": lambda watch, repeat: None}, 0, progress=False)
    with pytest.raises(ValueError, match="reference variant 'full'"):
        harness.ratio_to({"telly": 1.0}, "full")


def test_payback_and_limits():
    # C + E*cached < E*uncached  <=>  E > 6 / (5 - 2) = 2
    assert harness.payback_epochs(6.0, 2.0, 5.0) == pytest.approx(2.0)
    assert harness.payback_epochs(6.0, 5.0, 5.0) is None
    assert workloads.compute_limit(12, 10) == pytest.approx(2 / 12)
    assert workloads.paper_estimate(12, 12) == pytest.approx(1 / 3)
    assert workloads.freeze_depths(12) == [0, 6, 10, 11]
    assert workloads.freeze_depths(6) == [0, 3, 4, 5]
    variants = workloads.training_variants("unixcoder-shape", 12, get_profile("laptop"))
    assert [v.method.tag for v in variants] == [
        "full", "telly0-nocache", "telly0", "telly6-nocache", "telly6", "telly10-nocache", "telly10",
        "telly11-nocache", "telly11", "lora", "bitfit"]
    assert [v.label for v in variants[:3]] == ["Full fine-tuning", "Telly-0 uncached", "Telly-0 cached"]
    assert [v.label for v in variants[-2:]] == ["LoRA", "BitFit"]


def test_tensor_bytes_counts_shared_storage_once():
    weight = torch.zeros(1000)
    view = weight[:10]
    assert trainer.tensor_bytes([weight, view, None, torch.zeros(250)], torch.device("cpu")) == 4000 + 1000


def test_profiled_peak_sees_a_freed_transient_allocation():
    kept = []

    def step():
        transient = torch.ones(1_000_000)  # 4 MB, freed at the end of the step
        kept.append(transient[:10].clone())
        del transient

    peak = trainer.profiled_peak_bytes(step)
    assert 4_000_000 <= peak < 16_000_000


class _TransientLoss(torch.nn.Module):
    """A model whose training step allocates a 4 MB transient, as activations do."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1000))

    def forward(self, batch: dict) -> torch.Tensor:
        transient = batch["x"].expand(1000, 1000) * self.weight
        return transient.sum()


def test_step_peak_memory_counts_resident_tensors_cache_and_the_step_on_a_copy():
    model = _TransientLoss()
    make_optimizer = lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3)  # noqa: E731
    batch = {"x": torch.ones(1000)}
    cpu = torch.device("cpu")
    peak = trainer.step_peak_memory(model, make_optimizer, batch, cpu, cache_bytes=1234)
    assert peak >= 4_000_000 + 4000 + 1234
    assert trainer.step_peak_memory(model, make_optimizer, batch, cpu, measure=False) is None
    assert torch.equal(model.weight, torch.ones(1000))  # the warm-up steps trained a copy


def test_truncated_forwards_compute_the_same_features_as_one_pass(tiny):
    from telly.features import layer_features

    texts = ["def add(a, b): return a + b", "x = [i * i for i in range(10)]", "print('hello')"]
    one = layer_features(tiny, texts, max_length=16, batch_size=2, cache=False, progress=False).pooled
    many = workloads.truncated_layer_features(tiny, texts, max_length=16, batch_size=2)
    assert many.shape == one.shape == (tiny.num_layers + 1, 3, tiny.hidden_size)
    np.testing.assert_allclose(many, one, rtol=1e-4, atol=1e-5)


def _row(model, layers, k, ratio, memory):
    return {"model": model, "num_layers": layers, "freeze": k, "cached": True, "ratio_to_full": ratio,
            "compute_limit": workloads.compute_limit(layers, k), "peak_memory_ratio": memory}


def test_acceptance_says_by_how_much_a_target_is_missed():
    checks = bench.acceptance([_row("unixcoder-shape", 12, 10, 0.30, 0.4),
                               _row("unixcoder-shape", 12, 6, 0.60, 0.7),
                               {"model": "unixcoder-shape", "cached": False}])
    by_target = {c["target"].split(" <=")[0] + ("" if "limit" not in c["target"] else " limit"): c for c in checks}
    epoch = by_target["cached Telly-10 epoch time"]
    assert not epoch["met"] and epoch["missed_by"] == pytest.approx(0.30 / 0.25 - 1) and epoch["binding"]
    assert by_target["cached Telly-10 peak memory"]["met"]
    assert not by_target["cached Telly-10 epoch ratio limit"]["met"]  # 0.30 > 1.3 * 2/12
    assert by_target["cached Telly-6 epoch ratio limit"]["met"]  # 0.60 <= 1.3 * 0.5
    assert len(checks) == 4
    assert not bench.acceptance([_row("minilm-l6", 6, 4, 0.1, 0.1)])[0]["binding"]


@pytest.fixture(scope="module")
def smoke_record(tmp_path_factory):
    """A whole bench on tiny-random with tiny sizes, a tiny corpus and synthetic training pairs:
    (record, out folder, the run's inputs as load_or_run takes them)."""
    from telly.tasks.code_search import SearchExample

    root = tmp_path_factory.mktemp("bench")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "shapes.py").write_text(
        'def area(width, height):\n    """Return the area of a rectangle."""\n    return width * height\n\n\n'
        'def perimeter(width, height):\n    """Return the perimeter of a rectangle."""\n    return 2 * (width + height)\n')
    profile = get_profile("smoke").changed(bench_repeats=2, bench_steps=2, bench_batch_size=2,
                      bench_code_tokens=16, bench_probe_texts=2, bench_similarity_inputs=20,
                      max_code_tokens=16, max_text_tokens=8, feature_batch_size=2)
    examples = [SearchExample(query=f"add {i} to x", code=f"def f{i}(x):\n    return x + {i}\n", id=str(i))
                for i in range(4)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record = bench.run_bench(profile, root / "out", model="tiny-random", models=["tiny-random"],
                                 corpus_source=corpus, training_examples=examples, progress=False)
    finally:
        torch.set_num_threads(threads)
    return record, root / "out", {"profile": profile, "models": ["tiny-random"], "corpus_source": corpus}


def test_smoke_bench_writes_a_well_formed_record(smoke_record):
    record, out, _ = smoke_record
    stored = json.loads((out / "bench.json").read_text())
    assert stored["profile"] == "smoke" and stored["device_type"] == "cpu"
    assert {"model", "profile", "device", "date", "versions"} <= set(stored["provenance"])
    assert stored["inputs"]["models"] == ["tiny-random"] and stored["inputs"]["sections"] == list(bench.SECTIONS)
    rows = {r["variant"]: r for r in stored["training"]}
    assert list(rows) == [v.method.tag for v in workloads.training_variants("tiny-random", 4, get_profile("smoke"))]
    for row in rows.values():
        assert {"model", "method", "freeze", "cached", "epoch_seconds", "ratio_to_full",
                "peak_memory_ratio"} <= set(row)
        assert row["model"] == "tiny-random"
        assert len(row["epoch_seconds_runs"]) == 2
        assert row["epoch_seconds"] == pytest.approx(float(np.median(row["epoch_seconds_runs"])))
        assert row["peak_tensor_memory_mb"] > 0 and row["trainable_parameters"] <= row["total_parameters"]
        assert (row["compute_limit"] is not None) == row["cached"]
    assert rows["full"]["ratio_to_full"] == 1.0 and rows["full"]["peak_memory_ratio"] == 1.0
    assert rows["telly3"]["compute_limit"] == pytest.approx(0.25)
    assert rows["telly3-nocache"]["ratio_to_full"] == pytest.approx(
        rows["telly3-nocache"]["epoch_seconds"] / rows["full"]["epoch_seconds"])
    assert (rows["telly3"]["method"], rows["telly3"]["freeze"], rows["telly3"]["cached"]) == ("telly", 3, True)
    assert rows["lora"]["label"] == "LoRA" and rows["telly3-nocache"]["label"] == "Telly-3 uncached"
    # Freezing more trains less, and BitFit trains only biases.
    assert rows["telly3-nocache"]["trainable_parameters"] < rows["telly0-nocache"]["trainable_parameters"] \
        < rows["full"]["trainable_parameters"]
    assert [c["freeze"] for c in stored["cache"]] == [0, 2, 3]
    assert all(c["cache_seconds"] > 0 for c in stored["cache"])
    assert stored["corpus"]["functions"] == 2
    assert stored["probing"]["num_layers"] == 4 and stored["probing"]["speedup_limit"] == 2.5
    assert stored["similarity"]["layers"] == 13 and stored["similarity"]["n"] == 20
    assert stored["acceptance"] and not any(a["binding"] for a in stored["acceptance"])
    table = report.markdown(stored)
    assert "| Telly-3 cached |" in table and "compute limit" in table


def test_summary_and_readme_are_generated_from_the_numbers(smoke_record, tmp_path):
    record, _, _ = smoke_record
    rows = {r["variant"]: r for r in record["training"]}
    text = report.summary_text(record)
    assert f"{rows['telly2']['ratio_to_full']:.2f}x from the frozen-prefix cache" in text
    assert f"{record['probing']['speedup']:.1f}x faster" in text
    readme = "# Bench\n\nintro\n"
    content = report.readme_with_table(report.readme_with_table(readme, record, "README.md"), record, "README.md")
    # the second call replaced its own block, it did not append a second
    assert content.count("<!-- bench:cpu:start -->") == 1 and content.startswith("# Bench")
    assert "bench:gpu" not in content
    assert report.markdown(record) in content
    with pytest.raises(ValueError, match="README.md: has only one of the markers"):
        report.readme_with_table("# Bench\n<!-- bench:cpu:start -->\n", record, "README.md")


def test_the_report_reads_the_shipped_reference_record():
    from telly.jsonio import read_json

    reference = read_json(bench.reference_path(get_profile("laptop"), "cpu"))
    assert "peak_memory_mb" in reference["training"][0]  # measured before the rows were renamed
    text = report.summary_text(reference)
    full = next(r for r in reference["training"] if r["model"] == "unixcoder-shape" and r["method"] == "full")
    assert f"On unixcoder-shape one epoch of full fine-tuning took {full['epoch_seconds']:.1f} s" in text
    assert f"| Full fine-tuning | 125.93M | {full['epoch_seconds']:.1f} |" in report.markdown(reference)


def test_ratio_chart_marks_compute_limits(smoke_record):
    from telly.report.charts import bench_ratio_chart

    record, _, _ = smoke_record
    spec = bench_ratio_chart(record["training"]).to_dict()
    marks = [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]
             for layer in spec["spec"]["layer"]]
    assert marks == ["bar", "rule", "tick"]
    memory = bench_ratio_chart(record["training"], value="peak_memory_ratio", limit=None).to_dict()
    assert len(memory["spec"]["layer"]) == 2
    with pytest.raises(ValueError, match="missing column"):
        bench_ratio_chart([{"model": "m"}])


def test_cli_rejects_unknown_sections(tmp_path, capsys):
    from telly.cli import main

    assert main(["bench", "--profile", "smoke", "--out", str(tmp_path), "--sections", "nonsense"]) == 2
    assert "unknown bench section" in capsys.readouterr().err
    assert not (tmp_path / "bench.json").exists()


def test_load_or_run_reuses_a_matching_record(smoke_record, monkeypatch):
    record, out, inputs = smoke_record

    def must_not_run(*args, **kwargs):
        raise AssertionError("load_or_run re-ran a bench whose record was already there")

    monkeypatch.setattr(bench, "run_bench", must_not_run)
    reused = bench.load_or_run(out=out, model="tiny-random", **inputs)
    assert reused["provenance"]["date"] == record["provenance"]["date"] and reused["origin"] == "store"
    assert set(reused["section_seconds"]) == set(bench.SECTIONS)
    assert "was run on this machine before this build" in report.origin_note(reused, out)
    with pytest.raises(AssertionError, match="re-ran"):  # another profile's bench is not reused
        bench.load_or_run(get_profile("laptop"), out, model="tiny-random", models=inputs["models"],
                          corpus_source=inputs["corpus_source"], run=True)
    with pytest.raises(AssertionError, match="re-ran"):  # nor one with other profile settings
        bench.load_or_run(inputs["profile"].changed(bench_steps=3), out, model="tiny-random",
                          models=inputs["models"], corpus_source=inputs["corpus_source"], run=True)


def test_without_a_stored_bench_the_chapter_shows_the_shipped_reference(smoke_record, tmp_path, monkeypatch):
    record, _, _ = smoke_record
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("must not run the bench"))
    references = tmp_path / "results"
    with pytest.raises(FileNotFoundError, match=r"no smoke bench with tiny-random .*telly bench --profile smoke"):
        bench.load_or_run(get_profile("smoke"), tmp_path / "empty", model="tiny-random", run=False, reference_root=references)
    from telly.jsonio import write_json

    write_json(bench.reference_path(get_profile("smoke"), "cpu", references), record)
    shown = bench.load_or_run(get_profile("smoke"), tmp_path / "empty", model="tiny-random", run=False, reference_root=references)
    assert shown["origin"] == "reference" and shown["training"] == record["training"]
    note = report.origin_note(shown, tmp_path / "empty")
    assert "reference numbers shipped with Telly" in note and record["provenance"]["date"][:10] in note
    with pytest.raises(FileNotFoundError):  # the reference holds no rows for another model
        bench.load_or_run(get_profile("smoke"), tmp_path / "empty", model="minilm-l6", run=False, reference_root=references)


def test_training_bench_needs_a_full_epoch_of_examples(tiny):
    from telly.tasks.code_search import SearchExample

    profile = get_profile("smoke").changed(bench_batch_size=4, bench_steps=2)
    with pytest.raises(ValueError, match="2 x 4 examples for one epoch, got 1"):
        workloads.TrainingWorkload(tiny, profile, torch.device("cpu"), [SearchExample("q", "def f(): pass", "0")])


def test_the_bench_trains_with_the_trainers_step_and_memory_measure(tiny, monkeypatch):
    from telly.tasks.code_search import SearchExample

    steps, measured = [], []
    real_step, real_memory = trainer.train_step, trainer.step_peak_memory

    def counting_step(*args, **kwargs):
        steps.append(kwargs.get("autocast"))
        return real_step(*args, **kwargs)

    def counting_memory(*args, **kwargs):
        measured.append(kwargs["measure"])
        return real_memory(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", counting_step)
    monkeypatch.setattr(trainer, "step_peak_memory", counting_memory)
    profile = get_profile("smoke").changed(bench_batch_size=2, bench_steps=2, bench_code_tokens=16,
                      max_text_tokens=8)
    examples = [SearchExample(query=f"add {i}", code=f"def f{i}(x):\n    return x + {i}\n", id=str(i))
                for i in range(4)]
    workload = workloads.TrainingWorkload(tiny, profile, torch.device("cpu"), examples)
    cached = next(v for v in workloads.training_variants(tiny.name, tiny.num_layers, get_profile("smoke"))
                  if v.method.cache and v.freeze == tiny.num_layers - 1)
    watch = harness.Stopwatch()
    first = workload.run(cached, watch, measure_memory=True)
    # One untimed warm-up step on a copy (inside step_peak_memory), then the epoch's two steps.
    assert steps == [None, None, None] and measured == [True]
    assert first["peak_memory_bytes"] > 0 and set(watch.seconds) == {"cache_seconds", "epoch_seconds"}
    later = workload.run(cached, harness.Stopwatch(), measure_memory=False)
    assert len(steps) == 6 and measured == [True, False] and "peak_memory_bytes" not in later


def test_corpus_bench_parses_every_cold_load_and_none_cached(tmp_path, monkeypatch):
    import os

    import telly.corpus as corpus

    source = tmp_path / "src"
    source.mkdir()
    (source / "one.py").write_text('def double(x):\n    """Return twice the given number."""\n    return 2 * x\n')
    parsed = []
    real = corpus._functions_in_file
    monkeypatch.setattr(corpus, "_functions_in_file", lambda *a, **k: parsed.append(a[0]) or real(*a, **k))
    before = os.environ.get("TELLY_CACHE")
    result = workloads.corpus_bench(source, repeats=3, progress=False)
    assert len(parsed) == 3  # the file is parsed by each of the 3 cold loads, never by a cached one
    assert result["functions"] == 1
    assert len(result["runs"]["cold"]) == len(result["runs"]["cached"]) == 3
    assert os.environ.get("TELLY_CACHE") == before


def test_a_subset_of_sections_writes_only_those(tmp_path):
    profile = get_profile("smoke").changed(bench_similarity_inputs=12)
    record = bench.run_bench(profile, tmp_path, sections=["similarity"], progress=False)
    assert "similarity" in record and "training" not in record and "corpus" not in record
    table = report.markdown(record)
    assert "Similarity (12 inputs x 13 layers" in table and "Training" not in table
    assert "RSA over 12 inputs" in report.summary_text(record)


def test_bench_code_tokens_use_a_models_own_length():
    laptop, smoke = get_profile("laptop"), get_profile("smoke")
    assert workloads.bench_code_tokens(laptop, "smollm2-135m") == 128  # the study's length, not the laptop's 256
    assert workloads.bench_code_tokens(laptop, "minilm-l6") == laptop.bench.bench_code_tokens == 256
    assert workloads.bench_code_tokens(smoke, "smollm2-135m") == smoke.bench.bench_code_tokens == 32  # never longer
    assert workloads.bench_profile(laptop, "smollm2-135m").inputs.max_code_tokens == 128
    assert workloads.bench_profile(laptop).inputs.max_code_tokens == 256


def test_bench_models_bring_in_the_profiles_extra_backbones():
    assert bench.bench_models("minilm-l6", get_profile("laptop")) == ["unixcoder-shape", "minilm-l6", "smollm2-135m"]
    assert bench.bench_models("minilm-l6", get_profile("smoke")) == ["unixcoder-shape", "minilm-l6"]
    assert bench.bench_models("smollm2-135m", get_profile("laptop")) == ["unixcoder-shape", "smollm2-135m"]
    assert bench.bench_models("unixcoder-shape") == ["unixcoder-shape"]


def test_bf16_units_read_the_cpu_flags():
    assert store.bf16_units("processor : 0\nflags : fpu sse avx512_bf16 amx_tile amx_bf16\n") == ["amx_bf16", "avx512_bf16"]
    assert store.bf16_units("Features : fp asimd bf16 i8mm\n") == ["bf16"]
    assert store.bf16_units("flags : fpu sse sse2 avx2\n") == []


def test_the_cpu_description_tells_two_cpus_of_one_name_apart():
    zen3 = "model name : AMD EPYC\ncpu family : 25\nmodel : 1\nflags : fpu avx2\n"
    zen4 = "model name : AMD EPYC\ncpu family : 25\nmodel : 17\nflags : fpu avx2 avx512_bf16\n"
    assert store.cpu_description(zen3) == "AMD EPYC, family 25 model 1, no bf16 units"
    assert store.cpu_description(zen4) == "AMD EPYC, family 25 model 17, bf16 units: avx512_bf16"
    assert store.cpu_description("Features : fp asimd bf16\n").endswith(", bf16 units: bf16")  # Arm: no family line


def test_precision_rows_compare_bf16_with_fp32_on_the_same_batch(smoke_record):
    record, out, _ = smoke_record
    stored = json.loads((out / "bench.json").read_text())
    assert stored["precision"]["autocast"] == "torch.autocast('cpu', dtype=torch.bfloat16)"
    assert isinstance(stored["precision"]["bf16_units"], list)
    (row,) = stored["precision"]["rows"]
    assert (row["model"], row["batch_size"], row["code_tokens"]) == ("tiny-random", 2, 16)
    for name in ("fp32_step", "bf16_step", "fp32_forward", "bf16_forward"):
        assert len(row["runs"][name]) == 2  # bench_repeats, interleaved
        assert row[f"{name}_seconds"] == pytest.approx(float(np.median(row["runs"][name])))
    assert row["step_ratio"] == pytest.approx(row["bf16_step_seconds"] / row["fp32_step_seconds"])
    assert row["forward_ratio"] == pytest.approx(row["bf16_forward_seconds"] / row["fp32_forward_seconds"])
    assert all((r["batch_size"], r["code_tokens"]) == (2, 16) for r in stored["training"])
    table = report.markdown(stored)
    assert "| tiny-random | 2 x 16 |" in table and "Ratio = bf16 time / float32 time" in table
    assert "**tiny-random** (L = 4," in table and "batch 2 x 16 code tokens)" in table
    assert report.precision_sentence(row) in report.summary_text(record)


def test_precision_row_warms_each_precision_once_and_times_the_rest(tiny, monkeypatch):
    from telly.tasks.code_search import SearchExample

    steps = []
    real_step = trainer.train_step
    monkeypatch.setattr(trainer, "train_step",
                        lambda *a, **k: steps.append(type(k["autocast"]).__name__) or real_step(*a, **k))
    profile = get_profile("smoke").changed(bench_batch_size=2, bench_steps=1, bench_code_tokens=16,
                      max_text_tokens=8, bench_repeats=3)
    examples = [SearchExample(query=f"add {i}", code=f"def f{i}(x):\n    return x + {i}\n", id=str(i)) for i in range(2)]
    row = workloads.precision_row(tiny, profile, torch.device("cpu"), examples=examples, progress=False)
    # One untimed step per precision, then one timed step per repeat.
    assert steps.count("autocast") == steps.count("nullcontext") == 1 + 3
    assert all(len(runs) == 3 for runs in row["runs"].values())


def test_precision_prose_and_table_follow_the_numbers():
    def row(step, forward):
        return {"model": "m", "batch_size": 8, "code_tokens": 128, "fp32_step_seconds": 1.0,
                "bf16_step_seconds": step, "step_ratio": step, "fp32_forward_seconds": 1.0,
                "bf16_forward_seconds": forward, "forward_ratio": forward}

    assert report.precision_sentence(row(0.70, 0.46)) == (
        "Under bf16 autocast a training step of m took 0.70x its float32 time and a forward pass 0.46x: "
        "bf16 autocast is the faster choice for both here.")
    assert report.precision_sentence(row(1.10, 1.30)).endswith("float32 is as fast or faster for both here.")
    assert report.precision_sentence(row(0.90, 1.20)).endswith("bf16 autocast is faster only for the training step here.")
    assert report.precision_sentence(row(1.05, 0.50)).endswith("bf16 autocast is faster only for the forward pass here.")

    def record(units):
        return {"timing": "median of 3", "precision": {"autocast": "torch.autocast('cpu', dtype=torch.bfloat16)",
                                                       "bf16_units": units, "rows": [row(0.7, 0.46)]}}

    assert "This CPU's bf16 units: amx_bf16." in report.precision_markdown(record(["amx_bf16"]))[0]
    assert "reports no bf16 unit" in report.precision_markdown(record([]))[0]
    assert "| m | 8 x 128 | 1 | 0.7 | 0.70 | 1 | 0.46 | 0.46 |" in report.precision_markdown(record([]))
    assert report.precision_markdown({"timing": "x"}) == []  # records made before the precision rows


def test_an_unavailable_extra_backbone_is_skipped_with_its_reason(tmp_path, monkeypatch):
    from telly.tasks.code_search import SearchExample

    monkeypatch.setattr(bench, "unavailable_reason", lambda model: "no wheel here" if model == "smollm2-135m" else None)
    profile = get_profile("smoke").changed(bench_repeats=1, bench_steps=1, bench_batch_size=2, bench_code_tokens=16,
                      max_text_tokens=8, extra_probe_models=("smollm2-135m",))
    examples = [SearchExample(query=f"add {i}", code=f"def f{i}(x):\n    return x + {i}\n", id=str(i)) for i in range(2)]
    record = bench.run_bench(profile, tmp_path, models=["tiny-random", "smollm2-135m"], sections=["training"],
                             training_examples=examples, progress=False)
    assert record["skipped_models"] == {"smollm2-135m": "no wheel here"}
    assert {r["model"] for r in record["training"]} == {"tiny-random"}
    assert [r["model"] for r in record["precision"]["rows"]] == ["tiny-random"]
    assert "Not measured: smollm2-135m (no wheel here)." in report.markdown(record)


def test_the_shipped_reference_has_no_precision_table():
    from telly.jsonio import read_json

    assert "Mixed precision" not in report.markdown(read_json(bench.reference_path(get_profile("laptop"), "cpu")))


def test_bitfit_is_left_out_for_a_backbone_without_bias_terms(smoke_record, tiny):
    assert BitFit.bias_names(tiny.model)
    assert not BitFit.bias_names(torch.nn.Linear(4, 4, bias=False))  # SmolLM2's kind
    assert [v.method.tag for v in workloads.training_variants("m", 4, get_profile("smoke"), bitfit=False)][-1] == "lora"
    record, _, _ = smoke_record
    assert "and BitFit" in report.summary_text(record)
    without = {**record, "training": [r for r in record["training"] if r["method"] != "bitfit"],
               "not_applicable": [{"model": "tiny-random", "method": "bitfit", "label": "BitFit", "reason": "the backbone has no bias terms"}]}
    text = report.summary_text(without)
    assert "and BitFit" not in text and "BitFit was not run (the backbone has no bias terms)" in text
    assert "BitFit on tiny-random: not applicable (the backbone has no bias terms)." in report.markdown(without)


def test_the_runs_section_times_whole_runs_and_checks_the_issue_targets(tmp_path, monkeypatch):
    """Whole runs of full, Telly-L/2 and Telly-(L-1) on a tiny model: each record's time split comes
    back as medians, the ratios are to full's wall time, and the targets say by how much they miss."""
    profile = get_profile("smoke").changed(train_examples=8, valid_examples=4, test_examples=4, batch_size=4,
                                           epochs=1, bench_repeats=1, bench_run_tasks=("clone-detection",))
    prepared = []
    real = trainer.FineTuning.before_training
    monkeypatch.setattr(trainer.FineTuning, "before_training",
                        lambda self: (prepared.append(self.variant.label), real(self))[1])
    record = bench.run_bench(profile, tmp_path, model="tiny-random", sections=["runs"], progress=False)
    section, = record["runs"]
    assert [row["freeze"] for row in section["rows"]] == [-1, 2, 3]
    full = section["rows"][0]
    assert full["ratio_to_full"] == 1.0
    for row in section["rows"]:
        assert set(row["split"]) == {"load", "prepare", "pilot", "cache", "train", "eval", "test", "other"}
        assert row["ratio_to_full"] == pytest.approx(row["wall_seconds"] / full["wall_seconds"])
        assert (row["split"]["cache"] > 0) == (row["freeze"] >= 0)
    # One untimed preparation first, then the three timed runs (which read it back).
    assert len(prepared) == 4
    targets = {a["target"]: a for a in record["run_acceptance"]}
    assert set(targets) == {"cached Telly-3 run wall time <= 0.15x full", "cached Telly-2 run wall time <= 0.55x full"}
    table = report.markdown(record)
    assert "**clone-detection** on tiny-random" in table and "| Telly-3 cached |" in table
    assert "Training" not in table


def test_run_acceptance_names_the_miss():
    section = {"task": "code-search", "model": "m", "num_layers": 30,
               "rows": [{"freeze": -1, "ratio_to_full": 1.0}, {"freeze": 15, "ratio_to_full": 0.5},
                        {"freeze": 29, "ratio_to_full": 0.3}]}
    checks = {c["target"]: c for c in bench.run_acceptance([section])}
    assert checks["cached Telly-15 run wall time <= 0.55x full"]["met"]
    deepest = checks["cached Telly-29 run wall time <= 0.15x full"]
    assert not deepest["met"] and deepest["missed_by"] == pytest.approx(1.0)


def _finished_run(task, freeze, seed, wall, test, epochs=3):
    split = {"load": 1.0, "prepare": 0.0, "pilot": 0.0, "cache": 0.0 if freeze < 0 else 10.0,
             "train": wall - test - 1.0 - (0.0 if freeze < 0 else 10.0), "eval": 0.0, "test": test, "other": 0.0}
    return {"run": f"{task}-{freeze}-{seed}", "task": task, "model": "m", "method": "full" if freeze < 0 else "telly",
            "freeze": freeze, "seed": seed, "status": "finished", "profile": "study", "epochs_run": epochs,
            "label": "Full fine-tuning" if freeze < 0 else f"Telly-{freeze} cached", "wall_seconds": wall,
            "time_split": split, "parameters": {"num_layers": 30}, "uses_cache": freeze >= 0,
            "data": {"sizes": {"train": 160, "valid": 32, "test": 445}, "fingerprint": "f"}}


def test_a_studys_own_runs_check_the_whole_run_targets_paired_by_seed():
    """Ratios pair each seed's cached Telly-K with that seed's full run (a slow seed does not move the other's
    ratio), LoRA, uncached runs and unpaired seeds stay out, and a miss is explained by its largest part."""
    records = [_finished_run("code-generation", -1, 0, 600.0, 250.0), _finished_run("code-generation", -1, 1, 1200.0, 250.0),
               _finished_run("code-generation", 29, 0, 300.0, 250.0, epochs=6),
               _finished_run("code-generation", 29, 1, 300.0, 250.0, epochs=5),
               _finished_run("code-generation", 15, 0, 60.0, 20.0), _finished_run("code-generation", 15, 2, 60.0, 20.0),
               {**_finished_run("code-generation", -1, 0, 900.0, 250.0), "method": "lora", "freeze": -1},
               {**_finished_run("code-generation", 29, 0, 900.0, 250.0), "uses_cache": False}]
    record = bench.recorded_runs(records)
    section, = record["runs"]
    rows = {row["freeze"]: row for row in section["rows"]}
    assert rows[29]["ratio_to_full"] == pytest.approx((0.5 + 0.25) / 2) and rows[29]["epochs_run"] == "5-6"
    assert rows[15]["seeds"] == [0] and rows[15]["ratio_to_full"] == pytest.approx(0.1)
    assert rows[-1]["wall_seconds"] == pytest.approx(900.0) and rows[-1]["split"]["test"] == 250.0
    checks = {c["freeze"]: c for c in record["run_acceptance"]}
    assert checks[15]["met"] and not checks[29]["met"]
    findings = report.runs_findings(record)
    assert "Telly-29's run took 0.38x" in findings and "test pass, 250.0 s (83% of the run), 1.00x" in findings
    assert "Telly-15" not in findings
    assert "one after another (not interleaved)" in "\n".join(report.runs_markdown(record))
    assert report.runs_findings(bench.recorded_runs(records[4:6] + records[:1])) == ""
    with pytest.raises(ValueError, match="no time_split"):
        bench.recorded_runs([{k: v for k, v in records[0].items() if k != "time_split"}])
