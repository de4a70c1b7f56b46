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
    from telly.studies.bench import reference_path

    path = reference_path("laptop", "cpu")
    assert path.exists() and ROOT / "telly" in path.parents
