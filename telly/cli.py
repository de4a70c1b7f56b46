"""`telly ...`: each command lives beside the code it drives and registers itself here."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# command -> module that defines `add_cli(subparsers)`; imported lazily so `telly --help` is quick.
COMMANDS = {
    "fetch": "telly.backbones_cli",
    "probe": "telly.probing",
    "similarity": "telly.similarity_cli",
    "finetune": "telly.trainer",
    "sweep": "telly.sweep",
    "bench": "telly.bench",
    "book": "telly.book",
}


def add_common(parser: argparse.ArgumentParser, out: str) -> None:
    """The options every command takes: --model, --profile, --out."""
    parser.add_argument("--model", default="minilm-l6", help="registry name, HF id or local path")
    parser.add_argument("--profile", default="laptop", choices=["smoke", "laptop", "paper"])
    parser.add_argument("--out", default=out, help="directory for the JSON records")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telly", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = [a for a in argv if a in COMMANDS][:1] or list(COMMANDS)
    for command in wanted:
        try:
            importlib.import_module(COMMANDS[command]).add_cli(subparsers)
        except ModuleNotFoundError as exc:
            if exc.name != COMMANDS[command]:
                raise
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
