"""What a page needs to know about the probes without running one (no torch): the probed
properties in the order every page shows them, each one's metric and where the paper found it, and
the backbone states probed. `telly.probing.properties` gives each `Property` its metric and region
from here."""
from __future__ import annotations

PROBES = ["lexical", "syntactic", "structural", "semantic"]
PROBE_METRICS = {"lexical": "accuracy", "syntactic": "MRR", "structural": "accuracy", "semantic": "MAP"}
# Where the paper found each property (RQ1): the lower, middle or upper third of the layers, or spread over all.
PAPER_REGIONS = {"lexical": "lower", "syntactic": "middle", "structural": "upper", "semantic": "spread"}
STATES = ("random", "pretrained", "finetuned")  # the backbone states a study probes, in record order
