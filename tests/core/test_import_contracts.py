"""The import contracts of pyproject.toml ([tool.importlinter]) hold on this tree and catch a
crossing: a copy of the sources with one forbidden import added breaks the contract it should."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
SOURCES = {
    "transferstudio": ROOT / "transferstudio",
    "transferstudio_builtins": ROOT / "plugins" / "transferstudio_builtins",
    "transferstudio_efficientnet_lite": ROOT
    / "plugins"
    / "transferstudio-efficientnet-lite"
    / "src"
    / "transferstudio_efficientnet_lite",
}

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason="import-linter is not installed (pip install -e .[dev])"
)


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with this repository's contracts over the packages found in ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def source_copy(tmp_path: Path) -> Path:
    for name, folder in SOURCES.items():
        shutil.copytree(folder, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_tree_keeps_every_contract(source_copy: Path):
    done = lint_imports(source_copy)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        (
            "transferstudio/api/crossing.py",
            "import transferstudio.core.training.engine\n",
            "Entry points above the core, the core above the plugin API",
        ),
        (
            "transferstudio/core/files/crossing.py",
            "import transferstudio.core.runs.checkpoint\n",
            "The core's own layers",
        ),
        (
            "transferstudio_builtins/crossing.py",
            "import transferstudio.core.models.build\n",
            "Plugins (built-in and third-party) use the plugin API only",
        ),
        (
            "transferstudio/testing/crossing.py",
            "import transferstudio_builtins.datasets\n",
            "The plugin authors' test kit reaches no plugin package",
        ),
        (
            "transferstudio/core/crossing.py",
            "import PySide6.QtCore\n",
            "The core and the API never import Qt",
        ),
        (
            "transferstudio/core/models/layer_tree.py",
            "import transferstudio.core.models.build\n",
            "No import cycles between the modules of any package",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(source_copy: Path, module, line, contract):
    path = source_copy / module
    path.write_text((path.read_text() if path.exists() else "") + line)
    if module.endswith("layer_tree.py"):  # close the cycle: build -> layer_tree -> build
        build = source_copy / "transferstudio/core/models/build.py"
        build.write_text(build.read_text() + "import transferstudio.core.models.layer_tree\n")
    done = lint_imports(source_copy)
    assert done.returncode == 1, done.stdout + done.stderr
    broken = [ln for ln in done.stdout.splitlines() if ln.endswith(" BROKEN")]
    # A layer crossing usually closes a cycle too, so the cycle contract may break with it.
    assert any(ln.startswith(contract) for ln in broken), done.stdout
