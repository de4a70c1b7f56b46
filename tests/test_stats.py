import numpy as np
import pytest

from telly.stats import bootstrap_ci, paired_bootstrap


def test_bootstrap_ci_of_a_mean_brackets_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = bootstrap_ci(rng.normal(0.5, 0.2, 50), samples=500)["value"]
    large = bootstrap_ci(rng.normal(0.5, 0.2, 2000), samples=500)["value"]
    for ci in (small, large):
        assert ci["low"] < ci["value"] < ci["high"]
    assert large["high"] - large["low"] < (small["high"] - small["low"]) / 3
    # the normal-theory half width at n=2000 is 1.96 * 0.2 / sqrt(2000) = 0.0088
    assert (large["high"] - large["low"]) / 2 == pytest.approx(0.0088, rel=0.2)


def test_bootstrap_ci_with_a_statistic_over_columns():
    labels = np.array([1, 1, 0, 0] * 50)
    predictions = np.array([1, 0, 0, 0] * 50)

    def accuracy(columns):
        return {"accuracy": np.mean(columns["prediction"] == columns["label"])}

    ci = bootstrap_ci({"prediction": predictions, "label": labels}, accuracy, samples=300)
    assert ci["accuracy"]["value"] == pytest.approx(0.75)
    assert ci["accuracy"]["low"] < 0.75 < ci["accuracy"]["high"]


def test_bootstrap_is_deterministic_for_a_seed():
    values = np.arange(100) / 100
    assert bootstrap_ci(values, samples=200, seed=3) == bootstrap_ci(values, samples=200, seed=3)


def test_paired_bootstrap_sees_a_consistent_small_gain_that_unpaired_cis_miss():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 300)  # large per-example spread
    better = base + 0.02  # every example gains a little
    result = paired_bootstrap(base, better, samples=500)["value"]
    assert result["difference"] == pytest.approx(0.02)
    assert result["low"] > 0 and result["p_value"] < 0.01
    a, b = bootstrap_ci(base, samples=500)["value"], bootstrap_ci(better, samples=500)["value"]
    assert a["high"] > b["low"]  # the unpaired intervals overlap


def test_paired_bootstrap_of_identical_systems_is_not_significant():
    values = np.random.default_rng(2).uniform(size=200)
    result = paired_bootstrap(values, values.copy(), samples=200)["value"]
    assert result["difference"] == 0 and result["p_value"] == 1.0


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match="equally long"):
        bootstrap_ci({"a": np.ones(3), "b": np.ones(4)})
    with pytest.raises(ValueError, match="zero examples"):
        bootstrap_ci(np.array([]))
    with pytest.raises(ValueError, match="same test rows"):
        paired_bootstrap(np.ones(3), np.ones(4))


def _three_seeds(shifts, n=400, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    reference = [rng.normal(10.0, 5.0, n) for _ in shifts]
    variant = [r + s + rng.normal(0.0, noise, n) for r, s in zip(reference, shifts)]
    return reference, variant


def test_three_seeds_that_disagree_in_sign_cannot_pass_where_resampling_them_did():
    from telly.stats import non_inferiority, seeded_difference_draws, verdict

    reference, variant = _three_seeds([-1.13, -0.02, 0.45])  # the summarization Telly-15 seeds of the study
    _, draws = seeded_difference_draws(reference, variant, None, "value", samples=2000)
    bootstrap_p = (np.sum(draws <= -1.5) + 1) / (len(draws) + 1)
    assert bootstrap_p < 0.05  # resampling three seeds as if they were many passes the depth
    result = non_inferiority(reference, variant, None, "value", 1.5, samples=500)
    assert result["p_value"] > 0.05 and result["df"] < 4  # the seed level is a sample of three
    assert verdict(result["p_value"], result["high"], 1.5) == "inconclusive"
    assert result["detectable_margin"] > 1.5 and result["high"] > 0 > result["low"]


def test_three_verdicts_follow_the_numbers():
    from telly.stats import non_inferiority, verdict

    agree = non_inferiority(*_three_seeds([-0.1, 0.0, 0.1]), None, "value", 1.0, samples=300)
    assert verdict(agree["p_value"], agree["high"], 1.0) == "non-inferior"
    worse = non_inferiority(*_three_seeds([-3.0, -3.2, -2.9]), None, "value", 1.0, samples=300)
    assert worse["high"] < -1.0 and verdict(worse["p_value"], worse["high"], 1.0) == "inferior"
    assert verdict(0.2, -0.5, 1.0) == "inconclusive" and verdict(0.01, -2.0, 1.0) == "non-inferior"


def test_sizes_to_show_a_margin_shrink_with_seeds_and_say_when_rows_cannot_help():
    from telly.stats import non_inferiority, sizes_to_show

    result = non_inferiority(*_three_seeds([-1.13, -0.02, 0.45], noise=2.0), None, "value", 1.5, samples=300)
    options = {o["seeds"]: o["rows"] for o in sizes_to_show(result, 1.5, seed_options=(3, 5, 10, 40))}
    assert options[3] is None  # the seeds' spread alone exceeds what three seeds can show
    assert options[40] is not None and (options[10] is None or options[10] >= options[40])


def test_equivalence_tests_any_contrast_of_systems_on_shared_seeds_and_rows():
    from telly.stats import equivalence

    rng = np.random.default_rng(0)

    def mean_score(columns):
        return {"score": float(np.mean(columns["score"]))}

    base = [{"score": rng.normal(0.5, 0.1, 400)} for _ in range(4)]
    shifted = [{"score": c["score"] + 0.3} for c in base]
    # (shifted - base) - (shifted - base) = 0 exactly: equivalent within any margin
    did = equivalence([shifted, base, shifted, base], (1, -1, -1, 1), mean_score, "score", 0.01, samples=200)
    assert did["difference"] == pytest.approx(0.0, abs=1e-12) and did["verdict"] == "equivalent"
    # a plain difference of 0.3 is not within 0.1: the upper one-sided test cannot reject
    apart = equivalence([base, shifted], (-1, 1), mean_score, "score", 0.1, samples=200)
    assert apart["difference"] == pytest.approx(0.3) and apart["verdict"] == "not shown" and apart["p_upper"] > 0.5
    with pytest.raises(ValueError, match="one weight per system"):
        equivalence([base, shifted], (1,), mean_score, "score", 0.1)
    with pytest.raises(ValueError, match="same test rows"):
        equivalence([base, [{"score": c["score"][:10]} for c in base]], (-1, 1), mean_score, "score", 0.1)
