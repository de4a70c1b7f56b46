"""The names of the files and folders in a results store and in a study's records folder, in one
place: studies write them, the read-back and report/ find them (no imports, no torch).

  <store>/<run id>.json             one fine-tuning run (telly.store.RunStore)
  <store>/summary.json              RQ3's verdicts over the records beside it
  <store>/similarity/               RQ2 documents
  <store>/probing/<model>/          RQ1's probing.json
  <store>/bench/bench.json          `telly bench`
  <records>/study.json              a study's ledger
  <records>/plan.json               the power plan the study was sized by (`telly plan --out`)
  <records>/precision/              the precision check's runs and precision.json
  <records>/quantisation/           the quantisation check's MiniLM runs and quantisation.json
  <records>/clock-anchors/<machine>/ chapter 5's clock anchors: a full fine-tune on each machine that ran its methods
  <out>/weights/                    a study's weights, apart from its committable records
"""
SUMMARY = "summary"
SIMILARITY_DIR = "similarity"
PROBING_DIR = "probing"
BENCH_DIR = "bench"
STUDY = "study"
PLAN = "plan"
PRECISION_DIR = "precision"
QUANTISATION_DIR = "quantisation"
CLOCK_DIR = "clock-anchors"
# `telly pilot-dimensions --write`: Telly-auto's pilots again, without each layer's largest columns
PILOT_DIMENSIONS = "telly-auto-dimensions"
WEIGHTS_DIR = "weights"
# study.json's parts: the research questions (totalled in this order), then the checks beside them.
QUESTIONS = ("rq3", "rq2", "rq1")
CHECKS = ("precision", "quantisation")
EXTENSIONS = ("beyond",)  # chapter 5's runs of the study's model: totalled apart (issue 23 has its own budget)
