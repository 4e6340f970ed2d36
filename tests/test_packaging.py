"""The package metadata installs without deprecation warnings (setuptools set a 2027-Feb-18 deadline
for the old TOML-table `license`)."""

from __future__ import annotations

import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_applies_without_warnings_and_ships_its_license(monkeypatch) -> None:
    """What `pip install -e .` runs: setuptools applies pyproject.toml to a distribution. Its
    deprecation of a table `license` (and anything else it deprecates) fails this test."""
    from setuptools.config.pyprojecttoml import apply_configuration, read_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(REPO)  # license-files and readme are relative to the project
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist = apply_configuration(Distribution(), "pyproject.toml")
    assert dist.metadata.license_expression == "Apache-2.0"  # SPDX
    assert dist.metadata.license_files == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License\n")
    requires = read_configuration(REPO / "pyproject.toml")["build-system"]["requires"]
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in requires), requires  # SPDX support
