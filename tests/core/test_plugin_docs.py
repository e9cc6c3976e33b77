"""docs/plugins.md documents every hook of ``hookspecs.py`` with its exact signature, and every
hook is exercised by some test."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from transferstudio import hookspecs

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "plugins.md"
HEADING = re.compile(r"^### `(transferstudio_\w+)\((.*?)\) -> (.+)`$", re.M)


def _hooks() -> dict[str, str]:
    """Hook name -> ``(params) -> return`` as written in hookspecs.py."""
    out = {}
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if not name.startswith("transferstudio_"):
            continue
        signature = inspect.signature(fn)  # annotations stay strings (postponed evaluation)
        params = ", ".join(
            f"{p.name}: {p.annotation}" if p.annotation is not p.empty else p.name
            for p in signature.parameters.values()
        )
        out[name] = f"({params}) -> {signature.return_annotation}"
    return out


def test_every_hook_is_documented_with_its_signature():
    documented = {m[1]: f"({m[2]}) -> {m[3]}" for m in HEADING.finditer(DOC.read_text())}
    hooks = _hooks()
    assert hooks, "no hooks found in hookspecs.py"
    assert sorted(hooks) == sorted(documented), (
        f"undocumented: {sorted(set(hooks) - set(documented))}; "
        f"documented but not a hook: {sorted(set(documented) - set(hooks))}"
    )
    for name, signature in hooks.items():
        assert documented[name] == signature, (
            f"{name}: docs say {documented[name]}, code {signature}"
        )


def test_every_hook_is_exercised_by_a_test():
    this = Path(__file__).resolve()
    sources = [p.read_text() for p in (ROOT / "tests").rglob("test_*.py") if p.resolve() != this]
    for name in _hooks():
        # A test implements it (keyword to plugin_from_namespace, or a def) and so calls it.
        pattern = re.compile(rf"\b{name}\s*=|def {name}\(")
        assert any(pattern.search(text) for text in sources), f"no test implements {name}"
