#!/usr/bin/env python3
"""Regenerate the settings blocks of the docs from the code, so that they never drift:

- docs/experiments.md: the output of ``transferstudio init --method fine-tune --data images``;
- docs/methods.md: each built-in method's ``[method.params]`` table, between the markers
  ``<!-- params:NAME -->`` and ``<!-- /params -->`` at the end of its section (added there
  when missing).

Run it after changing a setting: ``python docs/generate.py``. Tests in
``tests/core/test_experiment.py`` fail when a block is stale.
"""

from __future__ import annotations

import re
from pathlib import Path

from transferstudio.core.plugins.host import load_plugins
from transferstudio.core.settings.experiment import new_experiment
from transferstudio.core.settings.params import toml_table

DOCS = Path(__file__).resolve().parent


def experiments_doc(host) -> None:
    path = DOCS / "experiments.md"
    text = path.read_text()
    spec = host.methods["fine-tune"]
    example = new_experiment(spec.name, spec.params, "/path/to/images").to_toml(comments=True)
    start = text.index("```toml", text.index("init --method fine-tune")) + len("```toml\n")
    end = text.index("```", start)
    path.write_text(text[:start] + example + text[end:])


def methods_doc(host) -> None:
    path = DOCS / "methods.md"
    text = path.read_text()
    for name, spec in host.methods.items():
        block = (
            f"<!-- params:{name} -->\n```toml\n"
            + toml_table("method.params", spec.params, {}, comments=True)
            + "```\n<!-- /params -->\n"
        )
        marked = re.compile(rf"<!-- params:{re.escape(name)} -->\n.*?<!-- /params -->\n", re.S)
        if marked.search(text):
            text = marked.sub(lambda _, new=block: new, text)
            continue
        heading = re.search(rf"^## `{re.escape(name)}`.*$", text, re.M)
        if heading is None:
            raise SystemExit(f"docs/methods.md has no section '## `{name}`'; add one first")
        following = re.compile(r"^## ", re.M).search(text, heading.end())
        end = following.start() if following else len(text)
        insert = "\nAll parameters, with defaults:\n\n" + block
        text = text[:end].rstrip("\n") + "\n" + insert + ("\n" if following else "") + text[end:]
    path.write_text(text)


if __name__ == "__main__":
    plugins = load_plugins(autoload=False)
    experiments_doc(plugins)
    methods_doc(plugins)
    print("regenerated docs/experiments.md and docs/methods.md")
