"""Figures the Telly paper reported (Shi et al., ISSTA 2023), transcribed for side-by-side display.

Source: the paper (arXiv 2304.05216) and its replication package's result files, as summarised in
the project's reference notes (shared/reference/telly-paper.md).
These are the paper's numbers on UniXcoder-base, never ours: the book shows them *beside* what
this library measures, labelled as the paper's.
"""
from __future__ import annotations

import re

from telly.probing.catalog import PAPER_REGIONS, PROBE_METRICS

PAPER_MODEL = "unixcoder-base"
PAPER_NUM_LAYERS = 12

# RQ2: RSA between the pre-trained and the fully fine-tuned UniXcoder, per layer (0 = embeddings),
# 5,000 CodeSearchNet Python functions. The paper reports these seven layers only, without
# intervals: chapter 2 judges its "top two layers" on them (telly.report.similarity.paper_movement).
PAPER_RSA: dict[str, dict[int, float]] = {
    "code-search": {0: 1.000, 4: 0.997, 8: 0.960, 9: 0.892, 10: 0.799, 11: 0.588, 12: 0.371},
    "clone-detection": {0: 1.000, 4: 0.970, 8: 0.892, 9: 0.844, 10: 0.647, 11: 0.505, 12: 0.265},
    "code-summarization": {0: 1.000, 4: 0.996, 8: 0.942, 9: 0.915, 10: 0.905, 11: 0.802, 12: 0.214},
    "code-generation": {0: 1.000, 4: 0.988, 8: 0.924, 9: 0.909, 10: 0.897, 11: 0.803, 12: 0.307},
    "code-completion": {0: 1.000, 4: 0.997, 8: 0.978, 9: 0.979, 10: 0.979, 11: 0.970, 12: 0.922},
}


def paper_rsa_rows(tasks: list[str] | None = None) -> list[dict]:
    """The paper's RSA as rows: task, layer, depth (layer / 12), measure "rsa", value."""
    chosen = list(PAPER_RSA) if tasks is None else tasks
    unknown = [t for t in chosen if t not in PAPER_RSA]
    if unknown:
        raise ValueError(f"the paper reports no RSA for {unknown}; it has {list(PAPER_RSA)}")
    return [{"task": task, "layer": layer, "depth": layer / PAPER_NUM_LAYERS, "measure": "rsa",
             "value": value, "source": f"paper ({PAPER_MODEL})"}
            for task in chosen for layer, value in PAPER_RSA[task].items()]


# RQ3: Telly-K on UniXcoder-base. Freeze depth -1 is "Base" (full fine-tuning). Quality per task
# in the paper's own metric and scale (MRR, F1, BLEU 0-100, EM %, edit similarity %).
# Added by the trainer helper (issue 4); the chapter shows these beside our sweep.
PAPER_TELLY_METRICS: dict[str, tuple[str, ...]] = {
    "code-search": ("mrr",),
    "clone-detection": ("f1",),
    "code-summarization": ("bleu",),
    "code-generation": ("bleu", "exact_match"),
    "code-completion": ("exact_match", "edit_similarity"),
}
PAPER_TELLY_QUALITY: dict[str, dict[int, tuple[float, ...]]] = {
    "code-search": {-1: (0.720,), 5: (0.726,), 8: (0.723,), 10: (0.710,), 11: (0.690,)},
    "clone-detection": {-1: (0.95,), 5: (0.95,), 8: (0.95,), 10: (0.94,), 11: (0.94,)},
    "code-summarization": {-1: (19.15,), 5: (19.18,), 8: (19.34,), 10: (19.11,), 11: (19.10,)},
    "code-generation": {-1: (33.82, 17.4), 5: (34.36, 18.6), 8: (32.12, 17.4), 10: (30.43, 16.6),
                        11: (27.71, 14.3)},
    "code-completion": {-1: (20.40, 51.92), 5: (20.40, 51.66), 8: (20.27, 50.95), 10: (20.53, 50.70),
                        11: (19.67, 49.49)},
}


def _seconds(text: str) -> int:
    """'2h35m', '17m14s', '35m' -> seconds."""

    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([hms])", text))


# Epoch time and time to best validation, at Base, Telly-5, Telly-10, Telly-11.
PAPER_TELLY_TIMES: dict[str, dict[int, tuple[int, int]]] = {
    task: {k: (_seconds(epoch), _seconds(best)) for k, epoch, best in zip((-1, 5, 10, 11), epochs, bests)}
    for task, epochs, bests in (
        ("code-search", ("17m14s", "11m42s", "7m10s", "6m21s"), ("2h35m", "35m", "21m30s", "19m03s")),
        ("clone-detection", ("20m21s", "13m25s", "8m51s", "8m00s"), ("1h42m", "1h07m", "35m24s", "32m00s")),
        ("code-summarization", ("22m44s", "16m18s", "10m19s", "9m14s"), ("1h54m", "49m", "10m19s", "9m14s")),
        ("code-generation", ("12m25s", "8m44s", "6m03s", "5m22s"), ("4h08m", "1h54m", "1h13m", "1h10m")),
        ("code-completion", ("4m12s", "3m07s", "2m17s", "2m06s"), ("37m48s", "9m21s", "9m08s", "6m18s")),
    )
}
PAPER_BASE_PARAMETERS_M = 125.93  # full fine-tuning: every backbone parameter
PAPER_LAYER_PARAMETERS_M = 7.087872  # one RoBERTa block (768 wide, FFN 3072): the paper rounds it to 7.09M


def paper_trainable_millions(freeze: int) -> float:
    """The paper's trainable backbone parameters (millions) at freeze depth K (-1 = Base)."""
    if not -1 <= freeze <= PAPER_NUM_LAYERS - 1:
        raise ValueError(f"the paper's model has freeze depths -1..{PAPER_NUM_LAYERS - 1}, got {freeze}")
    return PAPER_BASE_PARAMETERS_M if freeze == -1 else round((PAPER_NUM_LAYERS - freeze) * PAPER_LAYER_PARAMETERS_M, 2)


def paper_telly_rows(tasks: list[str] | None = None) -> list[dict]:
    """The paper's RQ3 table as rows: task, freeze, metric, value, trainable_millions and, where
    reported, epoch_seconds and time_to_best_seconds."""
    chosen = list(PAPER_TELLY_QUALITY) if tasks is None else tasks
    unknown = [t for t in chosen if t not in PAPER_TELLY_QUALITY]
    if unknown:
        raise ValueError(f"the paper reports no Telly-K results for {unknown}; it has {list(PAPER_TELLY_QUALITY)}")
    rows = []
    for task in chosen:
        for freeze, values in PAPER_TELLY_QUALITY[task].items():
            epoch, best = PAPER_TELLY_TIMES[task].get(freeze, (None, None))
            for metric, value in zip(PAPER_TELLY_METRICS[task], values):
                rows.append({"task": task, "freeze": freeze, "metric": metric, "value": value,
                             "trainable_millions": paper_trainable_millions(freeze),
                             "epoch_seconds": epoch, "time_to_best_seconds": best,
                             "source": f"paper ({PAPER_MODEL})"})
    return rows


# RQ1: weighted layer-wise probe scores on UniXcoder-base (random init / pre-trained / fine-tuned
# on code search), on a 0-1 scale (the paper prints accuracy and MAP in %). Added by the probing
# helper (issue 5); chapter 1 shows these beside ours.
PAPER_WEIGHTED_PROBES: dict[str, dict[str, float]] = {
    "lexical": {"random": 0.7614, "pretrained": 0.9998, "finetuned": 0.9995},
    "syntactic": {"random": 0.65, "pretrained": 0.96, "finetuned": 0.95},
    "semantic": {"random": 0.4609, "pretrained": 0.7093, "finetuned": 0.7155},
    "structural": {"random": 0.348, "pretrained": 0.297, "finetuned": 0.622},
}
PAPER_PROBE_METRICS = PROBE_METRICS
# Where the paper's number is not what its label says: shown beside it wherever it appears.
PAPER_PROBE_NOTES = {
    "syntactic": ("not an MRR, not comparable: the replication package's script ranks the wrong "
                  "index when it computes the syntactic probe's reciprocal ranks"),
}


def paper_probe_rows() -> list[dict]:
    """The paper's weighted-probe table as rows: probe, metric, state, score, source, and a note
    where the number is not comparable (`PAPER_PROBE_NOTES`)."""
    return [{"probe": probe, "metric": PAPER_PROBE_METRICS[probe], "state": state, "score": score,
             "source": f"paper ({PAPER_MODEL})", "note": PAPER_PROBE_NOTES.get(probe, "")}
            for probe, scores in PAPER_WEIGHTED_PROBES.items() for state, score in scores.items()]
# Where the paper found each property (RQ1): the third of the layers the probes peak in.
PAPER_PROBE_REGIONS = PAPER_REGIONS
