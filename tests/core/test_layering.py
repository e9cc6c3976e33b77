"""Architecture rules that are easy to break silently: startup cost, and the API-only rule for
the third-party plugin and the scaffold's generated plugins."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _modules_loaded_by(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return set(out.stdout.split())


def test_import_transferstudio_does_not_import_torch_or_qt():
    loaded = _modules_loaded_by("import transferstudio, transferstudio.api, transferstudio.cli")
    assert "torch" not in loaded
    assert "PySide6" not in loaded


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom transferstudio.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    loaded = _modules_loaded_by(code)
    assert "torch" not in loaded and "torchvision" not in loaded


def test_listing_plugins_does_not_import_torch():
    loaded = _modules_loaded_by(
        "from transferstudio.core.plugins.host import load_plugins\n"
        "h = load_plugins(autoload=False)\nassert h.backbones"
    )
    assert "torch" not in loaded


# The layers themselves (core and API free of Qt, plugins on the API only, no cycles) are
# import-linter contracts in pyproject.toml, checked by tasks.py and tests/core/test_import_contracts.py.
# The scaffold's templates are generated, not installed packages, so they are checked here.


def test_the_third_party_plugin_and_the_scaffold_templates_use_only_the_public_api(tmp_path):
    from transferstudio.scaffold import KINDS, new_plugin

    sources = sorted((ROOT / "plugins/transferstudio-efficientnet-lite/src").rglob("*.py"))
    sources += [
        path
        for kind in KINDS
        for path in (new_plugin(f"layer-{kind}", kind, tmp_path) / "src").rglob("*.py")
    ]
    assert len(sources) == 1 + len(KINDS)  # the EfficientNet-Lite plugin, one per kind
    offenders = {
        str(f): m
        for f in sources
        for m in _imports(f)
        if m.split(".")[0] == "transferstudio" and m != "transferstudio.api"
    }
    assert offenders == {}
