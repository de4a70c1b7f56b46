"""RQ1: which code properties live in which layer. Four probes on every layer, with controls.

- `estimators`: the probes themselves, scikit-learn style (`ClassifierProbe`, `RetrievalProbe`).
- `data`: the probed functions and their labels (`prepare`), and the backbone states each
  property reads (`state_features`: one `telly.features.layer_features` pass per input set).
- `properties`: one `Property` per probe (lexical, syntactic, structural, semantic) in `PROPERTIES`.
- `run`: every property on one backbone state.

`telly.studies.probing` runs a whole study (random, pre-trained and fine-tuned states) and stores it;
`telly.report.probing` reads its record.
"""
