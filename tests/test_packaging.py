"""The declared dependency floors are the versions this suite runs on, and the package is importable
without the repository checkout around it."""
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_versions_meet_the_declared_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    unmet = [f"{r}: installed {metadata.version(r.name)}" for r in requirements
             if not r.specifier.contains(metadata.version(r.name), prereleases=True)]
    assert not unmet, unmet


def test_the_readme_names_the_tested_versions_of_every_floor():
    readme = (ROOT / "README.md").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        requirement = Requirement(text)
        floor = next((s.version for s in requirement.specifier if s.operator == ">="), None)
        assert floor and f"{requirement.name} {floor}" in readme, requirement.name


def test_the_bench_reference_ships_as_package_data():
    from telly.profiles import get_profile
    from telly.studies.bench import reference_path

    path = reference_path(get_profile("laptop"), "cpu")
    assert path.exists() and ROOT / "telly" in path.parents


def _lock_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lock", ROOT / "tools" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_record_made_on_a_locked_install_carries_the_locked_versions():
    import os

    import pytest

    from telly.store import provenance

    lock_path = os.environ.get("TELLY_LOCKED")
    if not lock_path:
        pytest.skip("not a locked install (make test sets TELLY_LOCKED; make test-latest does not)")
    lock = _lock_tool()
    pins = lock.read(ROOT / lock_path)
    versions = provenance(model="tiny-random", profile="smoke", corpus_fingerprint=None)["versions"]
    recorded = {lock.canonical(name): lock.public_version(v) for name, v in versions.items()
                if name not in {"python", "telly"}}
    assert recorded and not lock.differences({name: pins.get(name, "-") for name in recorded}, recorded)


def test_the_lock_pins_every_installed_package_exactly():
    lock = _lock_tool()
    pins = lock.read(ROOT / "constraints.txt")
    for required in ("torch", "transformers", "pip", "pytest", "jupyter-book"):
        assert required in pins, required
    assert all("+" not in version for version in pins.values())  # no local labels: CUDA builds satisfy it


def test_the_lock_reader_names_the_line_it_cannot_read(tmp_path):
    import pytest

    path = tmp_path / "lock.txt"
    path.write_text("# comment\ntorch==2.13.0\ntransformers>=5\n")
    with pytest.raises(ValueError, match=r"lock.txt:3: expected 'name==version'"):
        _lock_tool().read(path)
    assert _lock_tool().differences({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == [
        "b: lock 2, installed 3", "c: lock -, installed 4"]


def test_conda_and_make_install_through_the_lock():
    assert "-c constraints.txt" in (ROOT / "environment.yml").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "LOCK ?= constraints.txt" in makefile and makefile.count("-c $(LOCK)") == 3
