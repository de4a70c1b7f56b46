"""Properties of RSA and (debiased) linear CKA, and agreement with direct n x n references."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.stats import ortho_group

from telly.profiles import get_profile
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


# ----------------------------------------------------------------------------- bootstrap intervals

def reference_draw(X, Y, drawn):
    """One resample scored the slow way, on the drawn rows themselves: an input drawn twice is not
    paired with its own copy (RSA's off-diagonal pairs, biased CKA's off-diagonal kernel entries,
    every same-input entry of the debiased U-statistic); kernels of rows centred on all n inputs."""
    n = len(drawn)
    same = drawn[:, None] == drawn[None, :]
    copies = same & ~np.eye(n, dtype=bool)
    A = X[drawn] / np.linalg.norm(X[drawn], axis=1, keepdims=True)
    B = Y[drawn] / np.linalg.norm(Y[drawn], axis=1, keepdims=True)
    upper = np.triu_indices(n)
    kept = ~copies[upper]
    rsa_value = stats.pearsonr((A @ A.T)[upper][kept], (B @ B.T)[upper][kept]).statistic
    K = (X - X.mean(0))[drawn] @ (X - X.mean(0))[drawn].T
    L = (Y - Y.mean(0))[drawn] @ (Y - Y.mean(0))[drawn].T
    H, ones = np.eye(n) - 1.0 / n, np.ones(n)

    def biased(first, second):
        first, second = np.where(copies, 0.0, first), np.where(copies, 0.0, second)
        return np.trace(first @ H @ second @ H)

    def unbiased(first, second):
        first, second = np.where(same, 0.0, first), np.where(same, 0.0, second)
        return (np.trace(first @ second) + (ones @ first @ ones) * (ones @ second @ ones) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * (ones @ first @ second @ ones))

    return {"rsa": rsa_value, "cka": biased(K, L) / np.sqrt(biased(K, K) * biased(L, L)),
            "cka_debiased": unbiased(K, L) / np.sqrt(unbiased(K, K) * unbiased(L, L))}


@pytest.mark.parametrize("seed", SEEDS)
def test_bootstrap_draws_equal_the_measures_on_explicitly_resampled_rows(seed):
    from telly.similarity import bootstrap_layer_similarity

    X, Y = correlated_pair(seed, n=40, dx=12, dy=9)
    resampled = bootstrap_layer_similarity(np.stack([X, X + 0.5]), np.stack([Y, Y]), samples=6, seed=seed)
    drawn = np.random.default_rng(seed).integers(0, 40, size=(6, 40))  # the documented draw
    for sample in range(6):
        expected = reference_draw(X, Y, drawn[sample])
        for measure in MEASURES:
            assert resampled.draws[measure][sample, 0] == pytest.approx(expected[measure], abs=1e-9)
    # a shift of every row moves the cosines (RSA) but not the centred kernels (CKA)
    assert np.allclose(resampled.draws["cka"][:, 0], resampled.draws["cka"][:, 1], atol=1e-9)


def test_bootstrap_weights_are_draws_of_n_inputs_shared_by_every_layer():
    from telly.similarity import resample_weights

    weights = resample_weights(50, 30, seed=4)
    assert weights.shape == (30, 50) and np.all(weights.sum(1) == 50)
    assert np.array_equal(weights, resample_weights(50, 30, seed=4))
    assert not np.array_equal(weights, resample_weights(50, 30, seed=5))
    with pytest.raises(ValueError, match="samples=0"):
        resample_weights(50, 0)


def test_bootstrap_intervals_cover_the_point_and_identical_layers_are_exactly_one():
    from telly.similarity import bootstrap_layer_similarity

    rng = np.random.default_rng(2)
    pretrained = (rng.normal(size=(3, 200, 64)) + 2.0 * rng.normal(size=(3, 1, 64))).astype(np.float32)
    finetuned = pretrained.copy()
    finetuned[1] += 0.3 * rng.normal(size=(200, 64)).astype(np.float32)
    finetuned[2] += 1.5 * rng.normal(size=(200, 64)).astype(np.float32)
    records = bootstrap_layer_similarity(pretrained, finetuned, samples=300).records()
    assert set(records[0]) == {"layer", "n", *MEASURES, *(f"{m}_{side}" for m in MEASURES for side in ("low", "high"))}
    for measure in MEASURES:
        assert records[0][measure] == records[0][f"{measure}_low"] == records[0][f"{measure}_high"] == 1.0
        for record in records[1:]:
            assert record[f"{measure}_low"] < record[measure] < record[f"{measure}_high"] < 1.0
        # more change, lower similarity, and the intervals do not overlap here
        assert records[2][f"{measure}_high"] < records[1][f"{measure}_low"]
    wider = bootstrap_layer_similarity(pretrained[:, :50], finetuned[:, :50], samples=300).records()
    assert (wider[2]["rsa_high"] - wider[2]["rsa_low"]) > (records[2]["rsa_high"] - records[2]["rsa_low"])


def test_drop_share_of_the_top_blocks_with_its_interval():
    from telly.similarity import bootstrap_layer_similarity

    rng = np.random.default_rng(3)
    pretrained = rng.normal(size=(5, 150, 32)) + 1.0
    finetuned = pretrained + np.array([0.0, 0.0, 0.1, 0.3, 2.0])[:, None, None] * rng.normal(size=(5, 150, 32))
    resampled = bootstrap_layer_similarity(pretrained, finetuned, samples=200)
    drops = [1.0 - p["rsa"] for p in resampled.points]
    share = resampled.drop_share([4], "rsa")
    assert share["value"] == pytest.approx(drops[4] / sum(drops))
    assert 0.5 < share["low"] < share["value"] < share["high"] < 1.0
    assert resampled.drop_share([4], "cka_debiased")["value"] > 0.5
    unchanged = bootstrap_layer_similarity(pretrained, pretrained, samples=20)
    assert unchanged.drop_share([4], "rsa") is None  # nothing dropped: no share to speak of
    with pytest.raises(ValueError, match="no draws of 'pwcca'"):
        resampled.drop_share([4], "pwcca")


@pytest.mark.parametrize("num_layers, blocks", [(12, [11, 12]), (30, [26, 27, 28, 29, 30]), (6, [6]),
                                                (4, [4]), (24, [21, 22, 23, 24]), (1, [1])])
def test_top_blocks_are_the_papers_top_two_of_twelve_in_relative_depth(num_layers, blocks):
    from telly.similarity import top_blocks

    assert top_blocks(num_layers) == blocks


def test_top_blocks_reject_a_depth_that_is_not_a_positive_count():
    from telly.similarity import top_blocks

    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="positive number of blocks"):
            top_blocks(bad)


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

    from telly.profiles import get_profile

    monkeypatch.setenv("TELLY_CACHE", str(tmp_path / "cache"))
    profile = get_profile("smoke").changed(similarity_functions=12, max_code_tokens=32)
    return profile, write_corpus(tmp_path / "corpus")


def test_run_similarity_sees_only_the_changed_layer_move(tmp_path, rq2_setup):
    from telly.jsonio import read_json
    from telly.store import checkpoint_fingerprint
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
    assert len(layers) == 5 and document["num_layers"] == 4  # tiny-random: embeddings + 4 blocks
    for record in layers[:-1]:  # untouched blocks: identical features, an interval of exactly 1
        assert record["rsa"] == pytest.approx(1.0, abs=1e-9)
        assert record["cka"] == pytest.approx(1.0, abs=1e-9)
        assert record["rsa_low"] == record["rsa_high"] == record["cka_debiased_low"] == 1.0
    top = layers[-1]
    for measure in MEASURES:
        assert top[f"{measure}_low"] <= top[measure] <= top[f"{measure}_high"] < 0.999
    assert comparison["top_blocks"] == [4]
    assert comparison["top_share"]["rsa"] == {"value": 1.0, "low": 1.0, "high": 1.0}  # only block 4 moved
    assert set(comparison["seconds"]) == {"embed", "similarity"}
    assert checkpoint.exists()


def test_similarity_embeds_functions_without_docstrings_and_pools_without_padding(tmp_path, rq2_setup,
                                                                                   monkeypatch):

    import telly.features
    import telly.studies.similarity
    from telly.corpus import load_corpus
    from telly.features import FEATURES_FORMAT
    from telly.studies.similarity import run_similarity

    profile, corpus = rq2_setup
    perturbed_checkpoint(tmp_path / "ckpt.safetensors", scale=0.5)
    embedded = []
    original = telly.features.layer_features

    def recording(backbone, texts, **kwargs):
        embedded.append(list(texts))
        return original(backbone, texts, **kwargs)

    monkeypatch.setattr(telly.studies.similarity, "layer_features", recording)  # where it is called
    document = run_similarity("tiny-random", tmp_path / "ckpt.safetensors", profile, tmp_path / "out",
                              corpus=str(corpus), samples=50, progress=False)
    without_doc = {fn.code_without_doc for fn in load_corpus(str(corpus), progress=False)}
    assert embedded[0] == embedded[1] and set(embedded[0]) <= without_doc
    assert not any('"""' in text for text in embedded[0])  # the paper's `code_tokens`: no docstring
    inputs = document["inputs"]
    assert inputs["texts"]["field"] == "code_without_doc"
    assert "padding left out" in inputs["pooling"]
    assert inputs["features_format"] == FEATURES_FORMAT  # a new extraction makes stored documents stale
    assert inputs["bootstrap"] == {"unit": "function", "samples": 50, "confidence": 0.95, "seed": 0}
    # padding left out of the mean: how the functions are batched (how much padding) changes nothing
    monkeypatch.setenv("TELLY_CACHE", str(tmp_path / "fresh-cache"))  # embed again, not from the cache
    one_by_one = run_similarity("tiny-random", tmp_path / "ckpt.safetensors", profile.changed(feature_batch_size=1),
                                tmp_path / "out-1", corpus=str(corpus), samples=50, progress=False)
    for batched, alone in zip(document["comparisons"][0]["layers"], one_by_one["comparisons"][0]["layers"]):
        for measure in MEASURES:
            assert batched[measure] == pytest.approx(alone[measure], abs=1e-5)


def counting_forward_passes(monkeypatch) -> list[str]:
    """Record the source of every backbone that RQ2 (telly.studies.similarity) embeds with."""
    import telly.features
    import telly.studies.similarity

    passes = []
    counted = telly.features.layer_features

    def counting(backbone, texts, **kwargs):
        passes.append(backbone.source)
        return counted(backbone, texts, **kwargs)

    monkeypatch.setattr(telly.studies.similarity, "layer_features", counting)
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
                              per_epoch=True, samples=50, progress=False)
    assert (tmp_path / "out" / "similarity.json").exists()
    first, second, best = document["comparisons"]
    assert (first["epoch"], second["epoch"], best["epoch"]) == (1, 2, None)
    # the best weights are byte-identical to epoch 1's: reused, not embedded again
    assert best["layers"] == first["layers"] and len(passes) == 3  # pre-trained, epoch 1, epoch 2
    assert best["top_share"] == first["top_share"]
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
    from telly.jsonio import read_json

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
    from telly.jsonio import as_stored
    from telly.store import RunStore, Variant
    from telly.trainer import task_of

    store = RunStore(store) if not isinstance(store, RunStore) else store
    variant = Variant.of(task, "tiny-random", -1, profile=profile)
    run = store.run_dir(variant)
    perturbed_checkpoint(run / "backbone.safetensors", scale=scale, seed=seed)
    for epoch in range(1, epochs + 1):
        perturbed_checkpoint(run / f"epoch-{epoch}" / "backbone.safetensors", scale=scale * epoch / epochs)
    store.write_record(variant, {"status": "finished", "task": task, "profile_settings": as_stored(profile.to_dict()),
                                 "task_config": as_stored(task_of(variant).config.to_dict())})
    return run


def no_training(*args, **kwargs):
    raise AssertionError("a finished run exists: nothing should be fine-tuned")


def test_task_similarity_reads_the_shared_run_and_reuses_its_document(tmp_path, rq2_setup, monkeypatch):
    from telly.studies import similarity as rq2

    profile, corpus = rq2_setup
    run = fake_finished_run(tmp_path / "store", "code-search", profile, scale=0.5)
    monkeypatch.setattr(rq2, "finetune", no_training)
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
    from telly.store import RunStore
    from telly.studies import similarity as rq2

    profile, corpus = rq2_setup
    store = RunStore(tmp_path / "store")
    run = fake_finished_run(store, "code-search", profile, scale=0.5)
    monkeypatch.setattr(rq2, "finetune", no_training)
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
    from telly.store import RunStore, epoch_checkpoints
    from telly.studies import similarity as rq2

    profile, _ = rq2_setup
    store = tmp_path / "store"
    shared = fake_finished_run(store, "code-search", profile, scale=0.5)
    calls = []

    def fake_finetune(variant, into, *, save_epoch_checkpoints, **kwargs):
        calls.append((variant.task, variant.model, variant.freeze, into.root, save_epoch_checkpoints))
        fake_finished_run(into, variant.task, variant.profile, scale=0.5, epochs=2)

    monkeypatch.setattr(rq2, "finetune", fake_finetune)
    assert rq2.ensure_finetuned("code-search", "tiny-random", profile, store) == shared
    run = rq2.ensure_finetuned("code-search", "tiny-random", profile, RunStore(store), per_epoch=True)
    assert calls == [("code-search", "tiny-random", -1, store / rq2.EPOCH_RUNS_DIR, True)]
    assert run.parent == store / rq2.EPOCH_RUNS_DIR and (shared / "backbone.safetensors").exists()
    assert [label for label, _, _ in epoch_checkpoints(run)] == ["epoch-1", "epoch-2", "best"]
    # now an epoch run exists: asking again trains nothing
    assert rq2.ensure_finetuned("code-search", "tiny-random", profile, store, per_epoch=True) == run
    assert len(calls) == 1


def test_a_run_under_other_profile_settings_is_trained_again(tmp_path, rq2_setup, monkeypatch):

    from telly.studies import similarity as rq2

    profile, _ = rq2_setup
    store = tmp_path / "store"
    fake_finished_run(store, "code-search", profile.changed(epochs=profile.training.epochs + 1), scale=0.5)
    calls = []

    def fake_finetune(variant, into, **kwargs):
        calls.append(variant.run_id)
        fake_finished_run(into, variant.task, variant.profile, scale=0.5, epochs=1)

    monkeypatch.setattr(rq2, "finetune", fake_finetune)
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
    assert list(table.columns) == list(MEASURES) and len(table) == 5
    top = report.final_comparison(document)["layers"][-1]
    assert table.loc[("code-search", 4), "rsa"] == f"{top['rsa']:.3f} [{top['rsa_low']:.3f}, {top['rsa_high']:.3f}]"
    assert table.loc[("code-search", 0), "cka"] == "1.000 [1.000, 1.000]"
    prose = report.inputs_prose(study, profile)
    assert f"**{document['inputs']['texts']['n']}** held-out functions" in prose and "Skipped not-landed" in prose
    assert "without its docstring" in prose and "padding left out" in prose and "1000 bootstrap resamples" in prose
    with pytest.raises(ValueError, match="none of the tasks"):
        rq2.similarity_study("tiny-random", profile, tmp_path / "store", ["not-landed"], progress=False)


def test_movement_judges_the_top_blocks_in_relative_depth():
    from telly.report.similarity import movement

    # 30 blocks, the drop spread evenly over the top five: "top two of 12" in relative depth
    curve = {k: 1.0 - (0.1 if k >= 26 else 0.002 if k else 0.0) for k in range(31)}
    verdict = movement(curve)
    assert verdict["top_blocks"] == [26, 27, 28, 29, 30] and verdict["moved"] == list(range(1, 31))
    assert verdict["top_share"] == pytest.approx(0.5 / (0.5 + 25 * 0.002))
    assert verdict["verdict"] == "agrees"
    # the same drop over blocks 21-25 instead: the layers that moved are not the top ones
    lower = {k: 1.0 - (0.1 if 21 <= k <= 25 else 0.002 if k else 0.0) for k in range(31)}
    assert movement(lower)["verdict"] == "disagrees" and movement(lower)["most_moved"][0] == 25


@pytest.mark.parametrize("curve, verdict, most_moved", [
    ({0: 1.0, 1: 0.99, 2: 0.98, 3: 0.7, 4: 0.4}, "agrees", 4),
    ({0: 1.0, 1: 0.5, 2: 0.98, 3: 0.97, 4: 0.6}, "disagrees", 1),  # a low layer moved most
    # the top block leads, but every layer moved and it holds less than half of the summed drop
    ({0: 1.0, 1: 0.9, 2: 0.9, 3: 0.9, 4: 0.9, 5: 0.89, 6: 0.88}, "disagrees", 6),
])
def test_movement_names_the_layer_that_moved_most_and_judges_the_share(curve, verdict, most_moved):
    from telly.report.similarity import movement

    judged = movement(curve)
    assert judged["most_moved"][0] == most_moved and judged["verdict"] == verdict


def test_movement_counts_a_layer_as_moved_only_when_its_interval_excludes_one():
    from telly.report.similarity import movement

    curve = {0: 1.0, 1: 0.999, 2: 0.995, 3: 0.99}
    assert movement(curve)["verdict"] == "agrees"  # points alone: layer 3 moved most
    wide = {0: (1.0, 1.0), 1: (0.99, 1.0), 2: (0.98, 1.0), 3: (0.97, 1.0)}
    judged = movement(curve, intervals=wide)
    assert judged["moved"] == [] and judged["verdict"] == "no movement"
    narrow = {**wide, 3: (0.985, 0.995)}
    assert movement(curve, intervals=narrow)["moved"] == [3]
    # the share's interval decides: wholly above one half agrees, across it cannot tell, below disagrees
    assert movement(curve, intervals=narrow, share_interval=(0.55, 0.8))["verdict"] == "agrees"
    assert movement(curve, intervals=narrow, share_interval=(0.4, 0.8))["verdict"] == "undecided"
    assert movement(curve, intervals=narrow, share_interval=(0.2, 0.45))["verdict"] == "disagrees"


def test_the_papers_verdict_is_computed_on_the_seven_layers_it_reports():
    from telly.report.paper import PAPER_RSA
    from telly.report.similarity import movement, paper_movement

    for task, curve in PAPER_RSA.items():
        assert sorted(curve) == [0, 4, 8, 9, 10, 11, 12]
        judged = paper_movement(task)
        assert judged["top_blocks"] == [11, 12] and judged["verdict"] == "agrees"
    # completion: 62% of the drop over the reported layers; layers 1-3 and 5-7 would only lower it
    assert paper_movement("code-completion")["top_share"] == pytest.approx(0.108 / 0.175, abs=1e-3)
    assert movement({0: 1.0, 11: 0.97, 12: 0.5}, num_layers=12)["top_blocks"] == [11, 12]
    with pytest.raises(ValueError, match="top block 12 has no value"):
        movement({0: 1.0, 4: 0.9, 8: 0.8}, num_layers=12)
    with pytest.raises(ValueError, match="reports no RSA"):
        paper_movement("line-counting")


def similarity_document(task, values, *, bounds=None, share=None, epochs=(), num_layers=None, model="m"):
    """A similarity document as run_similarity writes it, from per-layer RSA values (and intervals)."""
    def layers(scale=1.0):
        rows = []
        for k, v in enumerate(values):
            value = 1 - (1 - v) * scale
            low, high = bounds[k] if bounds else (value - 0.01, min(value + 0.01, 1.0))
            if bounds and scale != 1.0:
                low, high = 1 - (1 - low) * scale, 1 - (1 - high) * scale
            rows.append({"layer": k, "n": 9, "rsa": value, "rsa_low": low, "rsa_high": high})
        return rows

    top = num_layers or len(values) - 1
    blocks = [k for k in range(1, top + 1) if 6 * k > 5 * top]
    comparisons = [{"label": f"epoch-{e}", "epoch": e, "checkpoint": "x", "layers": layers(e / max(epochs)),
                    "top_blocks": blocks, "top_share": {"rsa": share}} for e in epochs]
    comparisons.append({"label": "best", "epoch": None, "checkpoint": "x", "layers": layers(),
                        "top_blocks": blocks, "top_share": {"rsa": share}})
    return {"task": task, "model": model, "num_layers": top, "comparisons": comparisons}


def test_movement_prose_flips_with_the_numbers():
    from telly.report.similarity import movement_prose, movement_table

    agreeing = similarity_document("code-search", [1.0, 0.99, 0.97, 0.8, 0.5],
                                   share={"value": 0.68, "low": 0.6, "high": 0.75})
    text = movement_prose({"code-search": agreeing})
    assert "agrees with the paper's \"top two layers\" on **1 of 1** tasks" in text
    # layer 1's interval reaches 1 (0.99 + 0.01): not counted as moved
    assert "layers 2-4 moved" in text and "layer 4 moved most (rsa 0.500 [0.490, 0.510])" in text
    assert "The top block (4 of 4) holds 68% [60%, 75%]" in text and "agrees with the paper's" in text
    assert "RSA 0.371 at its top layer, 12" in text  # the paper's code-search value beside ours
    assert "UniXcoder agrees on 1 of 1" in text and "7 layers the paper reports" in text
    # contrary numbers: a low layer moved most
    low = similarity_document("code-search", [1.0, 0.5, 0.97, 0.9, 0.8], share={"value": 0.3, "low": 0.25, "high": 0.35})
    text = movement_prose({"code-search": low})
    assert "on **0 of 1** tasks" in text and "layer 1 moved most" in text and "does not match" in text
    # the share's interval straddles one half: no verdict either way
    straddling = similarity_document("code-search", [1.0, 0.99, 0.97, 0.8, 0.7],
                                     share={"value": 0.55, "low": 0.45, "high": 0.62})
    text = movement_prose({"code-search": straddling})
    assert "on 1 the interval cannot tell" in text and "cannot tell (the interval crosses" in text
    # intervals that all reach 1: nothing moved, no claim
    still = similarity_document("clone-detection", [1.0, 0.999, 0.995, 0.99],
                                bounds=[(1.0, 1.0), (0.99, 1.0), (0.98, 1.0), (0.97, 1.0)],
                                share={"value": 0.6, "low": 0.1, "high": 0.9})
    assert movement_prose({"clone-detection": still}).startswith("No layer of m moved on any task")
    table = movement_table({"code-search": agreeing, "clone-detection": still})
    assert table.loc["code-search", "verdict"] == "agrees" and table.loc["clone-detection", "verdict"] == "no movement"
    assert table.loc["code-search", "top_share"] == "68% [60%, 75%]" and table.loc["clone-detection", "moved"] == "none"
    assert table.loc["code-search", "paper_verdict"] == "agrees"


def test_epoch_prose_flips_with_the_numbers():
    from telly.report.similarity import epoch_prose

    fast = similarity_document("code-search", [1.0, 0.99, 0.8, 0.6], epochs=[2, 3])  # 2/3 of the drop early
    text = epoch_prose(fast)
    assert "After epoch 2 the top block (3) had already moved 67% of the way to its rsa after epoch 3" in text
    assert "layer that moved most by the last epoch is layer 3" in text
    slow = similarity_document("code-search", [1.0, 0.99, 0.8, 0.6], epochs=[1, 2, 3, 4])
    assert "had moved only 25% of the way" in epoch_prose(slow)
    # after epoch 1 the top block's interval still reaches 1
    barely = similarity_document("code-search", [1.0, 0.99, 0.99, 0.99], epochs=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                                 bounds=[(1.0, 1.0), (0.98, 0.995), (0.98, 0.995), (0.98, 0.995)])
    assert "its interval not yet clear of 1" in epoch_prose(barely)
    unmoved = similarity_document("code-search", [1.0, 0.999, 0.999, 0.9995], epochs=[1, 2],
                                  bounds=[(1.0, 1.0)] * 3 + [(0.998, 1.0)])
    assert "the top block (3) had not moved" in epoch_prose(unmoved)
    one_epoch = similarity_document("code-search", [1.0, 0.9, 0.8], epochs=[1])
    assert "only the pre-trained start and epoch 1" in epoch_prose(one_epoch)


def test_inputs_prose_says_what_was_embedded_and_how_from_the_inputs():
    from telly.report.similarity import inputs_prose

    texts = {"n": 800, "source": "stdlib", "split": "test", "max_length": 128, "field": "code_without_doc"}
    inputs = {"texts": texts, "pooling": "mean over each function's real tokens (padding left out)",
              "bootstrap": {"unit": "function", "samples": 2000, "confidence": 0.9, "seed": 0}}
    study = {"documents": {"code-search": {"inputs": inputs}}, "skipped": {}}
    text = inputs_prose(study, get_profile("study"))
    assert "**800** held-out functions" in text and "each without its docstring" in text
    assert "90% percentile intervals over 2000 bootstrap resamples" in text and "Skipped" not in text
    # an older document: whole functions, no intervals
    older = {"texts": dict(texts, field="code"), "pooling": "mean over all positions"}
    text = inputs_prose({"documents": {"code-search": {"inputs": older}}, "skipped": {"x": "why"}}, get_profile("laptop"))
    assert "as their `code` text" in text and "mean over all positions" in text
    assert "bootstrap" not in text and "**Skipped x**: why" in text


def test_similarity_charts_build_from_rows():
    from telly.report.charts import similarity_epochs_chart, similarity_layers_chart
    from telly.report.paper import paper_rsa_rows

    ours = [{"task": "code-search", "layer": k, "depth": k / 4, "measure": m, "value": 1 - k / 10,
             "low": 0.98 - k / 10, "high": 1 - k / 20, "source": "ours (tiny)"} for k in range(5) for m in ("rsa", "cka")]
    spec = similarity_layers_chart(ours + paper_rsa_rows(["code-search"])).to_dict()
    assert spec["facet"]["field"] == "task" and spec["columns"] == 2  # two panels abreast
    band = spec["spec"]["layer"][0]
    assert band["mark"]["type"] == "area" and band["encoding"]["y2"]["field"] == "high"
    assert similarity_layers_chart(paper_rsa_rows(["code-search"])).to_dict()["facet"]["field"] == "task"
    epochs = [{"epoch": e, "layer": k, "measure": "rsa", "value": 1 - e * k / 10} for e in (1, 2) for k in range(3)]
    assert similarity_epochs_chart(epochs).to_dict()["facet"]["field"] == "measure_title"
    with pytest.raises(ValueError, match="missing column"):
        similarity_layers_chart([{"task": "x", "value": 1.0, "measure": "rsa"}])
    with pytest.raises(ValueError, match="reports no RSA"):
        paper_rsa_rows(["line-counting"])
