"""Run profiles: one frozen dataclass each, the only place sizes and budgets are set."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    # RQ1 probing / RQ2 similarity: how many corpus functions and how long their inputs.
    probe_functions: int
    similarity_functions: int
    max_code_tokens: int
    max_text_tokens: int
    feature_batch_size: int
    probe_epochs: int
    # RQ3 fine-tuning: examples per split (None = all), optimisation and early stopping.
    train_examples: int | None
    valid_examples: int | None
    test_examples: int | None
    batch_size: int
    epochs: int
    patience: int
    learning_rate: float
    warmup_ratio: float
    # Generation tasks: target length and decoding.
    max_target_tokens: int
    num_beams: int
    # Train/valid/test examples of the three generation tasks (None = all): decoding is dear on a CPU.
    generation_examples: tuple[int | None, int | None, int | None]
    # Statistics and benchmarks.
    bootstrap_samples: int
    bench_repeats: int
    bench_steps: int
    # Benchmarks (telly.studies.bench): training batch (examples x code tokens), probing and similarity sizes.
    bench_batch_size: int
    bench_code_tokens: int
    bench_probe_texts: int
    bench_similarity_inputs: int
    # Frozen-prefix cache budget in memory before spilling to disk shards.
    cache_memory_mb: int
    # What the book's chapters run in this profile: freeze depths swept ("all" or "-1,0,3"), for
    # the two classification tasks and for the slower generation tasks; extra probed backbones.
    sweep_freeze: str = "all"
    generation_freeze: str = "-1,3"
    extra_probe_models: tuple[str, ...] = ("smollm2-135m",)
    # Whether a book build runs the bench when the results store has none (else chapter 4 shows the
    # shipped reference record): on 2 cores the laptop bench took 24 min and the rest of the laptop book
    # 43 min, against the book's 45-minute budget.
    book_runs_bench: bool = True
    # RQ1 probing sizes: the held-out share of the probed functions; the shares of them the syntactic
    # and semantic probes use (each encodes extra inputs per function: SBT sequences, variants); the
    # variants per semantic function; the lexical probe's token-state budget (float16 values) and
    # function cap (~70 words each; more only slows a probe that saturates).
    probe_test_share: float = 0.25
    syntactic_share: float = 0.5
    semantic_share: float = 0.2
    variants_per_function: int = 2
    lexical_token_budget: int = 80_000_000
    lexical_functions: int = 120
    # A slower extra backbone (SmolLM2: 30 layers, 576 wide) is probed on at most this many
    # functions (and at most half the profile's) of at most this many tokens.
    extra_probe_functions: int = 240
    extra_probe_tokens: int = 96
    # Optimiser beside learning_rate and warmup_ratio, as the replication package's UniXcoder scripts
    # set it: AdamW (eps 1e-8) without weight decay, gradient norm clipped at 1.0.
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # RQ3 training seeds; a "keeps quality" claim needs at least three.
    seeds: tuple[int, ...] = (0,)
    # Non-inferiority margins per metric, on the metric's own scale (MRR and F1 0-1, the CodeXGLUE
    # metrics 0-100): Telly-K keeps quality when its paired difference to full fine-tuning stays above
    # -margin. Stated before any run, never tuned on results.
    margins: tuple[tuple[str, float], ...] = (("mrr", 0.02), ("f1", 0.02), ("bleu", 2.0), ("exact_match", 2.0),
                                              ("edit_similarity", 2.0))
    # "bf16": autocast in training and in probing/similarity forward passes (decoding stays float32);
    # "no": float32 everywhere. The record names it.
    mixed_precision: str = "no"
    # RQ1 probing validity: the SBT token budget of the syntactic probe, chosen from the data so that
    # at most 5% of SBT sequences are cut (its functions' code fits max_code_tokens, and their SBTs run
    # about twice as long in tokens; the record measures the cut share); and how many times the
    # weighted probe is refitted on bootstrap resamples of the training functions (the interval of
    # where its weights sit) and as many times on shuffled labels (whether they moved from uniform).
    sbt_max_tokens: int = 512
    probe_weight_refits: int = 19
    def margin(self, metric: str) -> float:
        """The non-inferiority margin of `metric`; a metric without one is an error naming the known ones."""
        margins = dict(self.margins)
        if metric not in margins:
            raise ValueError(f"profile {self.name!r} states no non-inferiority margin for {metric!r}; "
                             f"it has {sorted(margins)}")
        return margins[metric]

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", probe_functions=160, similarity_functions=64, max_code_tokens=64,
        max_text_tokens=24, feature_batch_size=32, probe_epochs=20, train_examples=64,
        valid_examples=32, test_examples=64, batch_size=16, epochs=1, patience=1,
        learning_rate=5e-5, warmup_ratio=0.1, max_target_tokens=16, num_beams=1, generation_examples=(64, 16, 32),
        bootstrap_samples=200, bench_repeats=1, bench_steps=2, cache_memory_mb=256,
        bench_batch_size=2, bench_code_tokens=32, bench_probe_texts=16, bench_similarity_inputs=500,
        sweep_freeze="-1,3", extra_probe_models=(),
        sbt_max_tokens=160, probe_weight_refits=4,
    ),
    "laptop": Profile(
        name="laptop", probe_functions=600, similarity_functions=1000, max_code_tokens=128,
        max_text_tokens=32, feature_batch_size=32, probe_epochs=60, train_examples=192,
        valid_examples=64, test_examples=500, batch_size=32, epochs=3, patience=1,
        learning_rate=5e-5, warmup_ratio=0.1, max_target_tokens=24, num_beams=1, generation_examples=(64, 32, 96),
        bootstrap_samples=1000, bench_repeats=3, bench_steps=2, cache_memory_mb=2048,
        bench_batch_size=8, bench_code_tokens=256, bench_probe_texts=256, bench_similarity_inputs=5000,
        book_runs_bench=False,
        # RQ3 within the book's 45 minutes: fewer depths (L/2 and L-1 of MiniLM-L6's 6 layers), three seeds
        # and small training splits. The live book runs no generation task on MiniLM (an encoder never
        # pre-trained to generate: every test output was empty); part of the time that saved (issue 24
        # put it at about 40% of chapter 3) went to 500 test rows (was 300) for code search and clone
        # detection, the rest to code search training its three epochs instead of collapsing after one.
        # Chosen by the time budget; `telly plan` over the laptop records should size them next.
        seeds=(0, 1, 2), sweep_freeze="-1,3,5", generation_freeze="-1,5",
        sbt_max_tokens=320,
    ),
    "paper": Profile(
        name="paper", probe_functions=5000, similarity_functions=5000, max_code_tokens=256,
        max_text_tokens=128, feature_batch_size=64, probe_epochs=100, train_examples=None,
        valid_examples=None, test_examples=None, batch_size=32, epochs=10, patience=2,
        learning_rate=2e-5, warmup_ratio=0.1, max_target_tokens=128, num_beams=10, generation_examples=(None, None, None),
        bootstrap_samples=1000, bench_repeats=5, bench_steps=20, cache_memory_mb=16384,
        bench_batch_size=32, bench_code_tokens=256, bench_probe_texts=1000, bench_similarity_inputs=5000,
        generation_freeze="all", probe_weight_refits=99,
    ),
    # The code-model study (`make study`: telly.studies.study) of smollm2-135m on 2 cores. Sized from
    # its first records (idle 2-core Xeon with AMX, bf16 autocast training, fp32 evaluation), made
    # with at most 4 epochs and patience 1: RQ3 code search took 37 min for 15 runs (full ~5 min a
    # run, Telly-15 2.7, Telly-25..29 1.4-1.8), RQ2 64 s a task, RQ1 10 min. There the full
    # fine-tunes were still improving at epoch 4 (best epoch 4 of 4 on two code-search seeds) and one
    # clone-detection seed stopped after two chance-level epochs, so training now runs up to 6 epochs
    # and stops after 2 without a lower validation loss (the committed pilot records stopped on a
    # validation gain above half the margin instead, a bar that 32-64 validation examples could not
    # decide: every code-generation run kept its first epoch). Measured under the pilot's settings
    # (study.json): RQ3 code search 51 min, clone detection 61 min, code summarization 46 min, code
    # generation 29 min, code completion 57 min (6 of them a run cut off by a machine shutdown and
    # redone); RQ2 0.6-2.2 min a task; RQ1 9.1 min; the precision check 45 min: 5.1 h in all, under
    # the 6-hour budget. Depth 20 is left out (-1, 15, 25, 27, 29: the paper's key ratios K/L of 1/2,
    # 5/6, 11/12 and the top block alone) and the splits are small so that three seeds fit.
    "study": Profile(
        name="study", probe_functions=600, similarity_functions=400, max_code_tokens=128,
        max_text_tokens=32, feature_batch_size=32, probe_epochs=60, train_examples=160,
        valid_examples=64, test_examples=200, batch_size=8, epochs=6, patience=2,
        learning_rate=5e-5, warmup_ratio=0.1, max_target_tokens=32, num_beams=1, generation_examples=(160, 32, 120),
        bootstrap_samples=1000, bench_repeats=3, bench_steps=2, cache_memory_mb=2048,
        bench_batch_size=8, bench_code_tokens=128, bench_probe_texts=256, bench_similarity_inputs=5000,
        sweep_freeze="-1,15,25,27,29", generation_freeze="-1,15,25,27,29", extra_probe_models=(),
        book_runs_bench=False, sbt_max_tokens=320, seeds=(0, 1, 2),
        probe_weight_refits=99,  # the fewest whose smallest p survives Holm across the four probes
        # bf16 autocast: 0.65x the fp32 training step and 0.46x the forward pass on that machine
        # (bench/bench.md; `telly bench --sections precision` measures the machine at hand), and its
        # code-search epochs took 0.44x fp32's: fp32 would put RQ3 (4.1 h) far past the budget. The
        # precision check (3 seeds) found bf16 - fp32 MRR -0.004 [-0.032, +0.016]: equal quality within
        # 0.02 not shown, so float32 stays the default of every other profile; RQ3's verdicts pair
        # runs trained in one precision.
        mixed_precision="bf16",
    ),
}


def get_profile(name: str | Profile) -> Profile:
    """Look a profile up by name; an unknown name lists the valid ones."""
    if isinstance(name, Profile):
        return name
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; expected one of {sorted(PROFILES)}") from None
