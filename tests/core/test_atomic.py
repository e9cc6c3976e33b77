"""Atomic writes: the finished file has the mode any new file would get (mkstemp's 0600 made
run files unreadable to the rest of a lab group), an existing file keeps its mode, and the
temporary files of killed writes are found and removed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from transferstudio.core.files.atomic import remove_leftovers, write_text_atomic

ROOT = Path(__file__).resolve().parents[2]


def test_a_new_file_gets_the_umask_mode_not_0600(tmp_path):
    code = (
        "import os, sys; os.umask(0o022); "
        "from transferstudio.core.files.atomic import write_text_atomic; "
        "write_text_atomic(sys.argv[1], 'x')"
    )
    target = tmp_path / "report.json"
    subprocess.run([sys.executable, "-c", code, str(target)], check=True, cwd=ROOT)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_replaced_file_keeps_its_mode(tmp_path):
    target = tmp_path / "experiment.toml"
    target.write_text("old")
    os.chmod(target, 0o640)
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_leftover_temporary_files_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ".metrics.csv.abc123.tmp").write_text("half")
    (tmp_path / "metrics.csv").write_text("whole")
    removed = remove_leftovers(tmp_path)
    assert [p.name for p in removed] == [".metrics.csv.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]
