"""Properties of RSA and (debiased) linear CKA, and agreement with direct n x n references."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.stats import ortho_group

from telly.similarity import MEASURES, layer_similarity, linear_cka, rsa

SEEDS = [0, 1, 2]


def correlated_pair(seed: int, n: int = 120, dx: int = 24, dy: int = 16, offset: float = 2.0):
    """Y depends on X plus noise; an offset makes the rows anisotropic like pooled states."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dx)) + offset * rng.normal(size=dx)
    Y = X @ rng.normal(size=(dx, dy)) + rng.normal(size=(n, dy)) + offset * rng.normal(size=dy)
    return X, Y


def reference_rsa(X, Y) -> float:
    """The paper's protocol spelled out: full cosine matrices, upper triangles with diagonal."""
    A = X / np.linalg.norm(X, axis=1, keepdims=True)
    B = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    upper = np.triu_indices(len(X))
    return stats.pearsonr((A @ A.T)[upper], (B @ B.T)[upper]).statistic


def reference_hsic(K, L, debiased: bool) -> float:
    """Biased HSIC tr(KHLH)/(n-1)^2, or the unbiased estimator of Song et al. (2012)."""
    n = len(K)
    if not debiased:
        H = np.eye(n) - np.ones((n, n)) / n
        return np.trace(K @ H @ L @ H) / (n - 1) ** 2
    K, L, ones = K.copy(), L.copy(), np.ones(n)
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    return (np.trace(K @ L) + (ones @ K @ ones) * (ones @ L @ ones) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (ones @ K @ L @ ones)) / (n * (n - 3))


def reference_cka(X, Y, debiased: bool = False) -> float:
    K, L = X @ X.T, Y @ Y.T  # explicit n x n Gram matrices of the *uncentred* inputs
    return reference_hsic(K, L, debiased) / np.sqrt(
        reference_hsic(K, K, debiased) * reference_hsic(L, L, debiased))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(120, 24, 16), (40, 200, 300), (5, 3, 7)])
def test_rsa_matches_scipy_pearson_on_full_matrices(seed, shape):
    n, dx, dy = shape
    X, Y = correlated_pair(seed, n, dx, dy)
    assert rsa(X, Y) == pytest.approx(reference_rsa(X, Y), abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("shape", [(120, 24, 16), (40, 200, 300), (6, 3, 7)])
def test_cka_matches_explicit_gram_hsic(seed, debiased, shape):
    n, dx, dy = shape
    X, Y = correlated_pair(seed, n, dx, dy)
    assert linear_cka(X, Y, debiased=debiased) == pytest.approx(
        reference_cka(X, Y, debiased), abs=1e-6)


def test_rsa_keeps_precision_on_anisotropic_float32_states():
    # Pooled transformer states share a large common direction; cosines then sit near 1.
    rng = np.random.default_rng(7)
    common = 3.0 * rng.normal(size=96)
    X = (common + 0.3 * rng.normal(size=(600, 96))).astype(np.float32)
    Y = (X + 0.05 * rng.normal(size=X.shape)).astype(np.float32)
    expected = reference_rsa(X.astype(np.float64), Y.astype(np.float64))
    assert 0.9 < expected < 0.999  # the regime the test is about
    assert rsa(X, Y) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_identical_inputs_score_one(seed):
    X, _ = correlated_pair(seed)
    X32 = X.astype(np.float32)
    assert rsa(X, X) == pytest.approx(1.0, abs=1e-12)
    assert rsa(X32, X32.copy()) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(X, X, debiased=True) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling(seed, debiased):
    X, Y = correlated_pair(seed)
    Q = ortho_group.rvs(Y.shape[1], random_state=seed)
    base = linear_cka(X, Y, debiased=debiased)
    assert linear_cka(X, Y @ Q, debiased=debiased) == pytest.approx(base, abs=1e-6)
    assert linear_cka(7.5 * X, 0.01 * Y, debiased=debiased) == pytest.approx(base, abs=1e-6)
    # ...but not to an arbitrary invertible linear map (otherwise the invariance test proves nothing)
    stretch = np.diag(np.geomspace(0.01, 100.0, Y.shape[1]))
    assert abs(linear_cka(X, Y @ stretch, debiased=debiased) - base) > 1e-3


@pytest.mark.parametrize("seed", SEEDS)
def test_rsa_invariant_to_rotation_and_row_scaling(seed):
    X, Y = correlated_pair(seed)
    rng = np.random.default_rng(seed)
    Q = ortho_group.rvs(X.shape[1], random_state=seed)
    row_scale = rng.uniform(0.1, 10.0, size=(len(X), 1))  # cosine similarity ignores row norms
    assert rsa(row_scale * X @ Q, Y) == pytest.approx(rsa(X, Y), abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_debiased_cka_reads_independent_data_as_unrelated(seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.normal(size=(64, 384)), rng.normal(size=(64, 384))
    biased, debiased = linear_cka(X, Y), linear_cka(X, Y, debiased=True)
    assert 0.8 < biased < 0.9  # n << d: the biased estimator sees structure in noise
    assert abs(debiased) < 0.05


def test_similarity_is_symmetric():
    X, Y = correlated_pair(3)
    assert rsa(X, Y) == pytest.approx(rsa(Y, X), abs=1e-6)  # up to float32 product rounding
    assert linear_cka(X, Y) == pytest.approx(linear_cka(Y, X), abs=1e-6)


@pytest.mark.parametrize("measure", [rsa, linear_cka])
def test_constant_input_is_a_clear_error_not_nan(measure):
    X, _ = correlated_pair(0)
    constant = np.tile(np.arange(1.0, X.shape[1] + 1.0), (len(X), 1))
    with pytest.raises(ValueError, match="Y is constant"):
        measure(X, constant)
    with pytest.raises(ValueError, match="X is constant"):
        measure(constant, X)


def test_rsa_rejects_rows_it_cannot_normalise_and_parallel_rows():
    X, _ = correlated_pair(0)
    zero_row = X.copy()
    zero_row[5] = 0.0
    with pytest.raises(ValueError, match="row 5 is all zeros"):
        rsa(zero_row, X)
    parallel = np.outer(np.arange(1.0, len(X) + 1.0), X[0])  # same direction, different lengths
    with pytest.raises(ValueError, match="same direction"):
        rsa(X, parallel)


def test_bad_shapes_and_values_are_named():
    X, Y = correlated_pair(0)
    with pytest.raises(ValueError, match="X has 120 rows, Y has 119"):
        rsa(X, Y[:-1])
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(X[0], Y[0])
    with pytest.raises(ValueError, match="at least 4 inputs"):
        linear_cka(X[:3], Y[:3], debiased=True)
    broken = Y.copy()
    broken[9, 2] = np.nan
    with pytest.raises(ValueError, match="Y has a non-finite value .* row 9"):
        rsa(X, broken)


def test_layer_similarity_equals_per_layer_calls():
    rng = np.random.default_rng(4)
    pretrained = rng.normal(size=(4, 50, 12)).astype(np.float32) + 1.0
    finetuned = pretrained + np.linspace(0.0, 2.0, 4)[:, None, None] * rng.normal(size=(4, 50, 12))
    records = layer_similarity(pretrained, finetuned)
    assert [r["layer"] for r in records] == [0, 1, 2, 3]
    for layer, record in enumerate(records):
        assert set(record) == {"layer", "n", *MEASURES}
        assert record["n"] == 50
        assert record["rsa"] == pytest.approx(rsa(pretrained[layer], finetuned[layer]), abs=1e-12)
        assert record["cka"] == pytest.approx(linear_cka(pretrained[layer], finetuned[layer]), abs=1e-12)
        assert record["cka_debiased"] == pytest.approx(
            linear_cka(pretrained[layer], finetuned[layer], debiased=True), abs=1e-12)
    # layer 0 did not move; more noise further up moves the representation further
    assert records[0]["rsa"] == pytest.approx(1.0, abs=1e-12)
    assert records[0]["rsa"] > records[1]["rsa"] > records[3]["rsa"]
    only_rsa = layer_similarity(list(pretrained), list(finetuned), measures=["rsa"])
    assert set(only_rsa[2]) == {"layer", "n", "rsa"}


def test_layer_similarity_checks_layers_and_names_the_bad_one():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, 20, 8))
    with pytest.raises(ValueError, match="3 layers but features_b has 2"):
        layer_similarity(a, a[:2])
    with pytest.raises(ValueError, match="unknown measure"):
        layer_similarity(a, a, measures=["pwcca"])
    b = a.copy()
    b[2] = 1.0
    with pytest.raises(ValueError, match=r"features_b\[2\] is constant"):
        layer_similarity(a, b)


# ----------------------------------------------------------------------------- RQ2 pipeline

def write_corpus(root):
    """Sixty small modules, so that the module-hash split puts a few in the test split."""
    root.mkdir()
    for i in range(60):
        body = "\n".join(
            f"def f{i}_{j}(x, y={j}):\n    \"\"\"Combine the two inputs number {j} here.\"\"\"\n"
            f"    if x > {i}:\n        return x * y + {i}\n    return [x] * {j + 1}\n"
            for j in range(3))
        (root / f"mod_{i}.py").write_text(body)
    return root


def perturbed_checkpoint(path, scale, top_only=True, seed=0):
    """Tiny-random weights with noise added to the last block only (or everywhere)."""
    import torch
    from safetensors.torch import save_file

    from telly import backbones

    backbone = backbones.load("tiny-random")
    last = f"encoder.layer.{backbone.num_layers - 1}."
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in backbone.model.state_dict().items():
        if tensor.is_floating_point() and (key.startswith(last) or not top_only):
            tensor = tensor + scale * torch.randn(tensor.shape, generator=generator)
        state[key] = tensor.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


@pytest.fixture
def rq2_setup(tmp_path, monkeypatch):
    from dataclasses import replace

    from telly.profiles import get_profile

    monkeypatch.setenv("TELLY_CACHE", str(tmp_path / "cache"))
    profile = replace(get_profile("smoke"), similarity_functions=12, max_code_tokens=32)
    return profile, write_corpus(tmp_path / "corpus")


def test_run_similarity_sees_only_the_changed_layer_move(tmp_path, rq2_setup):
    from telly.store import checkpoint_fingerprint, read_json
    from telly.studies.similarity import run_similarity

    profile, corpus = rq2_setup
    checkpoint = perturbed_checkpoint(tmp_path / "run" / "backbone.safetensors", scale=0.5)
    document = run_similarity("tiny-random", tmp_path / "run", profile, tmp_path / "out",
                              task="code-search", corpus=str(corpus), progress=False)
    stored = read_json(tmp_path / "out" / "similarity-code-search.json")
    assert stored == document
    texts = document["inputs"]["texts"]
    assert stored["provenance"]["corpus_fingerprint"] == texts["corpus_fingerprint"]
    assert texts["split"] == "test" and 0 < texts["n"] <= 12
    assert document["inputs"]["model"] == "tiny-random"
    assert document["inputs"]["profile_settings"]["similarity_functions"] == 12
    assert document["inputs"]["checkpoints"] == [
        {"label": "best", "epoch": None, "fingerprint": checkpoint_fingerprint(checkpoint)}]
    (comparison,) = document["comparisons"]
    assert comparison["checkpoint"] == str(tmp_path / "run")
    layers = comparison["layers"]
    assert len(layers) == 5  # tiny-random: embeddings + 4 blocks
    for record in layers[:-1]:  # untouched blocks: identical features
        assert record["rsa"] == pytest.approx(1.0, abs=1e-9)
        assert record["cka"] == pytest.approx(1.0, abs=1e-9)
    assert layers[-1]["rsa"] < 0.999 and layers[-1]["cka"] < 0.999
    assert checkpoint.exists()


def counting_forward_passes(monkeypatch) -> list[str]:
    """Record the source of every backbone that telly.features.layer_features embeds with."""
    import telly.features

    passes = []
    counted = telly.features.layer_features

    def counting(backbone, texts, **kwargs):
        passes.append(backbone.source)
        return counted(backbone, texts, **kwargs)

    monkeypatch.setattr(telly.features, "layer_features", counting)
    return passes


def test_per_epoch_checkpoints_expand_in_epoch_order(tmp_path, rq2_setup, monkeypatch):
    from telly.store import epoch_checkpoints
    from telly.studies.similarity import run_similarity

    profile, corpus = rq2_setup
    run = tmp_path / "run"
    perturbed_checkpoint(run / "epoch-2" / "backbone.safetensors", scale=1.0, top_only=False)
    perturbed_checkpoint(run / "epoch-1" / "backbone.safetensors", scale=0.02, top_only=False)
    perturbed_checkpoint(run / "backbone.safetensors", scale=0.02, top_only=False)
    (run / "epoch-3").mkdir()  # an epoch folder without weights (run killed) is not a checkpoint
    assert [label for label, _, _ in epoch_checkpoints(run)] == ["epoch-1", "epoch-2", "best"]
    passes = counting_forward_passes(monkeypatch)
    document = run_similarity("tiny-random", [run], profile, tmp_path / "out", corpus=str(corpus),
                              per_epoch=True, progress=False)
    assert (tmp_path / "out" / "similarity.json").exists()
    first, second, best = document["comparisons"]
    assert (first["epoch"], second["epoch"], best["epoch"]) == (1, 2, None)
    # the best weights are byte-identical to epoch 1's: reused, not embedded again
    assert best["layers"] == first["layers"] and len(passes) == 3  # pre-trained, epoch 1, epoch 2
    assert second["layers"][-1]["rsa"] < first["layers"][-1]["rsa"]  # bigger change, lower RSA
    fingerprints = [c["fingerprint"] for c in document["inputs"]["checkpoints"]]
    assert fingerprints[0] == fingerprints[2] != fingerprints[1]


def test_missing_checkpoint_is_named(tmp_path, rq2_setup):
    from telly.studies.similarity import run_similarity

    profile, corpus = rq2_setup
    with pytest.raises(FileNotFoundError, match="no-such-run"):
        run_similarity("tiny-random", tmp_path / "no-such-run", profile, tmp_path / "out",
                       corpus=str(corpus), progress=False)


def test_cli_writes_similarity_json(tmp_path, rq2_setup, capsys):
    from telly.cli import main
    from telly.store import read_json

    _, corpus = rq2_setup
    perturbed_checkpoint(tmp_path / "ckpt.safetensors", scale=0.5)
    code = main(["similarity", "--model", "tiny-random", "--checkpoint", str(tmp_path / "ckpt.safetensors"),
                 "--profile", "smoke", "--out", str(tmp_path / "out"), "--corpus", str(corpus)])
    assert code == 0
    document = read_json(tmp_path / "out" / "similarity.json")
    assert {"rsa", "cka", "cka_debiased", "n", "layer"} <= set(document["comparisons"][0]["layers"][0])
    assert {"model", "profile", "corpus_fingerprint", "device", "versions"} <= set(document["provenance"])
    assert "wrote" in capsys.readouterr().out
    assert main(["similarity", "--model", "tiny-random", "--checkpoint", str(tmp_path / "absent"),
                 "--profile", "smoke", "--out", str(tmp_path / "out"), "--corpus", str(corpus)]) == 2


# ----------------------------------------------------------------------------- chapter 2 study

def fake_finished_run(store, task, profile, scale, epochs=0, seed=0):
    """A finished full fine-tuning run laid out as telly.trainer.finetune writes it (record + weights)."""
    from telly.store import RunStore, Variant, as_stored

    store = RunStore(store) if not isinstance(store, RunStore) else store
    variant = Variant.of(task, "tiny-random", -1, profile=profile.name)
    run = store.run_dir(variant)
    perturbed_checkpoint(run / "backbone.safetensors", scale=scale, seed=seed)
    for epoch in range(1, epochs + 1):
        perturbed_checkpoint(run / f"epoch-{epoch}" / "backbone.safetensors", scale=scale * epoch / epochs)
    store.write_record(variant, {"status": "finished", "task": task,
                                 "profile_settings": as_stored(profile.to_dict())})
    return run


def no_training(*args, **kwargs):
    raise AssertionError("a finished run exists: nothing should be fine-tuned")


def test_task_similarity_reads_the_shared_run_and_reuses_its_document(tmp_path, rq2_setup, monkeypatch):
    import telly.trainer
    from telly.studies import similarity as rq2

    profile, corpus = rq2_setup
    run = fake_finished_run(tmp_path / "store", "code-search", profile, scale=0.5)
    monkeypatch.setattr(telly.trainer, "finetune", no_training)
    document = rq2.task_similarity("code-search", "tiny-random", profile, tmp_path / "store",
                                   corpus=str(corpus), progress=False)
    assert document["comparisons"][0]["checkpoint"] == str(run)
    assert (tmp_path / "store" / "similarity" / "similarity-code-search.json").exists()

    passes = counting_forward_passes(monkeypatch)
    again = rq2.task_similarity("code-search", "tiny-random", profile, tmp_path / "store",
                                corpus=str(corpus), progress=False)
    assert passes == []  # the stored document is current: reused, nothing embedded
    assert again["comparisons"] == document["comparisons"]


def test_similarity_document_is_recomputed_when_a_checkpoint_changes(tmp_path, rq2_setup, monkeypatch):
    import telly.trainer
    from telly.store import RunStore
    from telly.studies import similarity as rq2

    profile, corpus = rq2_setup
    store = RunStore(tmp_path / "store")
    run = fake_finished_run(store, "code-search", profile, scale=0.5)
    monkeypatch.setattr(telly.trainer, "finetune", no_training)
    passes = counting_forward_passes(monkeypatch)

    def study() -> dict:
        return rq2.task_similarity("code-search", "tiny-random", profile, store, corpus=str(corpus),
                                   progress=False)

    first = study()
    assert len(passes) == 2  # pre-trained, fine-tuned
    assert study() == first and len(passes) == 2  # nothing changed: reused
    perturbed_checkpoint(run / "backbone.safetensors", scale=0.5, seed=1)  # same path, new bytes
    changed = study()
    assert len(passes) == 4
    assert changed["inputs"]["checkpoints"] != first["inputs"]["checkpoints"]
    assert changed["comparisons"][0]["layers"][-1]["rsa"] != first["comparisons"][0]["layers"][-1]["rsa"]
    stored = RunStore(store.root / "similarity").find_document("similarity-code-search", changed["inputs"])
    assert stored == changed


def test_per_epoch_view_reruns_into_its_own_folder_when_the_shared_run_has_no_epochs(
        tmp_path, rq2_setup, monkeypatch):
    import telly.trainer
    from telly.store import RunStore, epoch_checkpoints
    from telly.studies import similarity as rq2

    profile, _ = rq2_setup
    store = tmp_path / "store"
    shared = fake_finished_run(store, "code-search", profile, scale=0.5)
    calls = []

    def fake_finetune(variant, into, *, profile, save_epoch_checkpoints, **kwargs):
        calls.append((variant.task, variant.model, variant.freeze, into.root, save_epoch_checkpoints))
        fake_finished_run(into, variant.task, profile, scale=0.5, epochs=2)

    monkeypatch.setattr(telly.trainer, "finetune", fake_finetune)
    assert rq2.ensure_finetuned("code-search", "tiny-random", profile, store) == shared
    run = rq2.ensure_finetuned("code-search", "tiny-random", profile, RunStore(store), per_epoch=True)
    assert calls == [("code-search", "tiny-random", -1, store / rq2.EPOCH_RUNS_DIR, True)]
    assert run.parent == store / rq2.EPOCH_RUNS_DIR and (shared / "backbone.safetensors").exists()
    assert [label for label, _, _ in epoch_checkpoints(run)] == ["epoch-1", "epoch-2", "best"]
    # now an epoch run exists: asking again trains nothing
    assert rq2.ensure_finetuned("code-search", "tiny-random", profile, store, per_epoch=True) == run
    assert len(calls) == 1


def test_a_run_under_other_profile_settings_is_trained_again(tmp_path, rq2_setup, monkeypatch):
    from dataclasses import replace

    import telly.trainer
    from telly.studies import similarity as rq2

    profile, _ = rq2_setup
    store = tmp_path / "store"
    fake_finished_run(store, "code-search", replace(profile, epochs=profile.epochs + 1), scale=0.5)
    calls = []

    def fake_finetune(variant, into, *, profile, **kwargs):
        calls.append(variant.run_id)
        fake_finished_run(into, variant.task, profile, scale=0.5, epochs=1)

    monkeypatch.setattr(telly.trainer, "finetune", fake_finetune)
    run = rq2.ensure_finetuned("code-search", "tiny-random", profile, store)
    assert len(calls) == 1 and run.parent == store


def test_similarity_study_skips_tasks_not_in_this_checkout(tmp_path, rq2_setup, monkeypatch):
    import telly.tasks
    from telly.report import similarity as report
    from telly.studies import similarity as rq2

    profile, corpus = rq2_setup
    monkeypatch.setitem(telly.tasks.TASKS, "not-landed", "telly.tasks.not_landed_yet:Task")
    fake_finished_run(tmp_path / "store", "code-search", profile, scale=0.5, epochs=2)
    study = rq2.similarity_study("tiny-random", profile, tmp_path / "store", ["code-search", "not-landed"],
                                 corpus=str(corpus), progress=False)
    assert list(study["documents"]) == ["code-search"]
    assert "not-landed" in study["skipped"] and "not installed" in study["skipped"]["not-landed"]
    document = study["documents"]["code-search"]
    assert [c["label"] for c in document["comparisons"]] == ["epoch-1", "epoch-2", "best"]
    epochs = report.epoch_rows(document)
    assert {row["epoch"] for row in epochs} == {0, 1, 2}
    assert all(row["value"] == 1.0 for row in epochs if row["epoch"] == 0)  # the pre-trained model itself
    rows = report.study_rows(study["documents"])
    assert {(r["layer"], r["depth"]) for r in rows} == {(k, k / 4) for k in range(5)}
    table = report.layer_table(rows)
    assert list(table.columns) == ["cka", "cka_debiased", "rsa"] and len(table) == 5
    prose = report.inputs_prose(study, profile.name)
    assert f"**{document['inputs']['texts']['n']}** held-out functions" in prose and "Skipped not-landed" in prose
    with pytest.raises(ValueError, match="none of the tasks"):
        rq2.similarity_study("tiny-random", profile, tmp_path / "store", ["not-landed"], progress=False)


@pytest.mark.parametrize("curve, most_moved, agrees", [
    ({0: 1.0, 1: 0.99, 2: 0.98, 3: 0.7, 4: 0.4}, [4, 3], True),
    ({0: 1.0, 1: 0.5, 2: 0.98, 3: 0.97, 4: 0.6}, [1, 4], False),
    # the top two lead, but every layer moved and they hold less than half of the total drop
    ({0: 1.0, 1: 0.9, 2: 0.9, 3: 0.9, 4: 0.9, 5: 0.89, 6: 0.88}, [6, 5], False),
])
def test_movement_names_the_layers_that_moved_and_judges_top_two(curve, most_moved, agrees):
    from telly.report.similarity import movement

    verdict = movement(curve)
    assert verdict["most_moved"] == most_moved
    assert verdict["agrees"] is agrees


def test_movement_of_an_unmoved_model_makes_no_claim():
    from telly.report.paper import PAPER_RSA
    from telly.report.similarity import movement

    assert movement({0: 1.0, 1: 1.0, 2: 0.9999})["agrees"] is None
    from telly.report.similarity import movement_prose

    still = {"task": "code-search", "model": "m", "comparisons": [{"label": "best", "epoch": None, "layers": [
        {"layer": k, "n": 9, "rsa": 1.0} for k in range(4)]}]}
    assert movement_prose({"code-search": still}).startswith("No layer of m moved measurably")
    assert all(movement(curve)["agrees"] for curve in PAPER_RSA.values())  # the paper's own finding


def test_prose_is_generated_from_the_numbers():
    from telly.report.similarity import epoch_prose, movement_prose

    def document(task, values, epochs=None):
        layers = [{"layer": k, "n": 9, "rsa": v, "cka": v, "cka_debiased": v} for k, v in enumerate(values)]
        comparisons = [{"label": f"epoch-{e}", "epoch": e, "checkpoint": "x",
                        "layers": [dict(r, rsa=1 - (1 - r["rsa"]) * e / len(epochs)) for r in layers]}
                       for e in (epochs or [])]
        return {"task": task, "model": "m", "comparisons": comparisons + [
            {"label": "best", "epoch": None, "checkpoint": "x", "layers": layers}]}

    documents = {"code-search": document("code-search", [1.0, 0.99, 0.8, 0.6], epochs=[1, 2]),
                 "clone-detection": document("clone-detection", [1.0, 0.5, 0.99, 0.98])}
    text = movement_prose(documents)
    assert "On **1 of 2** tasks" in text
    assert "layer 3 (rsa 0.600) and layer 2 (rsa 0.800)" in text
    assert "layer 1 (rsa 0.500)" in text and "does not match" in text
    assert "RSA 0.371 at its top layer, 12" in text  # the paper's code-search value beside ours
    assert "50% of the way" in epoch_prose(documents["code-search"])
    one_epoch = document("code-search", [1.0, 0.9, 0.8], epochs=[1])
    assert "only the pre-trained start and epoch 1" in epoch_prose(one_epoch)


def test_similarity_charts_build_from_rows():
    from telly.report.charts import similarity_epochs_chart, similarity_layers_chart
    from telly.report.paper import paper_rsa_rows

    ours = [{"task": "code-search", "layer": k, "depth": k / 4, "measure": m, "value": 1 - k / 10,
             "source": "ours (tiny)"} for k in range(5) for m in ("rsa", "cka")]
    spec = similarity_layers_chart(ours + paper_rsa_rows(["code-search"])).to_dict()
    assert spec["facet"]["field"] == "task" and spec["columns"] == 2  # two panels abreast
    epochs = [{"epoch": e, "layer": k, "measure": "rsa", "value": 1 - e * k / 10} for e in (1, 2) for k in range(3)]
    assert similarity_epochs_chart(epochs).to_dict()["facet"]["field"] == "measure_title"
    with pytest.raises(ValueError, match="missing column"):
        similarity_layers_chart([{"task": "x", "value": 1.0, "measure": "rsa"}])
    with pytest.raises(ValueError, match="reports no RSA"):
        paper_rsa_rows(["line-counting"])
