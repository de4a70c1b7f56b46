"""The lock: the exact version of everything pip installed in a venv whose suite passed.

    python tools/lock.py write constraints.txt   # from the running venv (make lock)
    python tools/lock.py diff constraints.txt    # what the running venv has that the lock does not

The README's commands pass the lock to pip with -c; pyproject.toml keeps ranges for library users.
Versions are written without local labels (torch 2.13.0, not 2.13.0+cpu) so that a GPU user's
CUDA build of the same release satisfies it. Standard library only: it runs before anything is installed.
"""
from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

OWN = {"telly"}  # installed from the checkout (-e .), not pinned


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    return version.split("+", 1)[0]


def installed() -> dict[str, str]:
    """Every distribution in the running environment, by canonical name, local labels dropped."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonical(name) not in OWN:
            found[canonical(name)] = public_version(dist.version)
    return dict(sorted(found.items()))


def read(path: str | Path) -> dict[str, str]:
    """name -> exact version from a lock; anything but `name==version` lines and comments is an error."""
    pins = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s=;]+)", text)
        if not match:
            raise ValueError(f"{path}:{number}: expected 'name==version', got {line!r}")
        pins[canonical(match[1])] = match[2]
    return pins


def write(path: str | Path) -> None:
    pins = installed()
    header = (f"# The lock: exact versions of everything pip installs for telly (make setup passes it with -c).\n"
              f"# Written by `make lock` on {datetime.now(UTC).date()} from a venv whose `make test` passed, on "
              f"Python {sys.version.split()[0]}.\n# Refresh: make test-latest, then make lock VENV=.venv-latest.\n")
    Path(path).write_text(header + "".join(f"{name}=={version}\n" for name, version in pins.items()))
    print(f"wrote {len(pins)} pins to {path}")


def differences(lock: dict[str, str], have: dict[str, str]) -> list[str]:
    """One line per package whose installed version is not the locked one."""
    lines = []
    for name in sorted(set(lock) | set(have)):
        if lock.get(name) != have.get(name):
            lines.append(f"{name}: lock {lock.get(name, '-')}, installed {have.get(name, '-')}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in {"write", "diff"}:
        print(__doc__, file=sys.stderr)
        return 2
    command, path = argv
    if command == "write":
        write(path)
        return 0
    lines = differences(read(path), installed())
    print(f"{len(lines)} package(s) differ from {path}:" if lines else f"every package matches {path}")
    print("\n".join(f"  {line}" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
