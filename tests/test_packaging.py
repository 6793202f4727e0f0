"""The package's metadata: a distribution name of our own, the licence, extras that ask
only for what pgworker itself imports, and development tools outside the extras."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_distribution_name_is_not_the_taken_pypi_name() -> None:
    # "pgworker" on PyPI is an unrelated CLI relay; PyPI also refuses names that differ
    # from an existing one only by separators, so "pg-worker" would not do either.
    name = PROJECT["name"]
    assert re.sub(r"[-_.]", "", name.lower()) != "pgworker"
    assert metadata.version(name) == PROJECT["version"]
    assert PROJECT["scripts"] == {"pgworker": "pgworker.cli:main"}


def test_mit_licence_and_changelog_ship_with_the_project() -> None:
    assert PROJECT["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "## Unreleased" in (ROOT / "CHANGELOG.md").read_text()
    assert any(
        c.startswith("Programming Language :: Python :: 3.11") for c in PROJECT["classifiers"]
    )


def test_development_tools_are_a_dependency_group_not_an_extra() -> None:
    extras = PROJECT["optional-dependencies"]
    assert "dev" not in extras
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    assert any(dep.startswith("pytest") for dep in groups["dev"])


def test_the_otel_extra_needs_only_the_api() -> None:
    otel = PROJECT["optional-dependencies"]["otel"]
    assert [re.split(r"[<>=]", dep)[0] for dep in otel] == ["opentelemetry-api"]


def test_install_lines_in_the_docs_never_name_the_taken_pypi_project() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert not re.search(r"pip install '?pgworker(\[|\s|'|$)", text), doc.name
