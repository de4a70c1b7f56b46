"""RQ1: which code properties live in which layer. Four probes on every layer, each read against
the random-init backbone and surface baselines (and, for the lexical probe, a control task).

- `estimators`: the probes themselves, scikit-learn style (`ClassifierProbe`, `RetrievalProbe`).
- `data`: the probed functions and their labels (`prepare`), and the backbone states each
  property reads (`state_features`: one `telly.features.layer_features` pass per input set).
- `properties`: one `Property` per probe (lexical, syntactic, structural, semantic) in `PROPERTIES`.
- `run`: every property on one backbone state, and each probe's record entry (`probe_entry`:
  paired differences to the random-init backbone and to the baselines).

`telly.studies.probing` runs a whole study (random, pre-trained and fine-tuned states) and stores it;
`telly.report.probing` reads its record.
"""
