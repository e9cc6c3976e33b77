"""Packaging: one version, the license file the metadata names, the PEP 561 marker."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import transferstudio

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_version_is_the_packages_own():
    # pyproject.toml reads it from transferstudio.__version__ (dynamic); nothing else writes it.
    assert metadata.version("transferstudio") == transferstudio.__version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]


def test_the_license_the_metadata_names_is_there():
    meta = metadata.metadata("transferstudio")
    assert meta["License-Expression"] == "BSD-3-Clause"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License")


def test_plugin_authors_type_checkers_see_the_api_types():
    assert (Path(transferstudio.__file__).parent / "py.typed").is_file()
    assert "Typing :: Typed" in metadata.metadata("transferstudio").get_all("Classifier")
