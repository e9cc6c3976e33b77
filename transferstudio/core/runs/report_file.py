"""Reading a run's ``report.json`` with messages that say what to do when it is missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_report_file(folder: str | Path) -> dict[str, Any]:
    """A run's ``report.json``; raises ValueError with a message naming the file and saying
    what to do when it is missing or unreadable."""
    path = Path(folder) / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"{path} does not exist: the run ended before its final evaluation; resume it "
            "(Runs > Resume) to finish it"
        ) from None
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}); the run's checkpoints are "
            "intact: 'transferstudio run --resume' or a new run writes a new report"
        ) from None
    if not isinstance(report, dict):
        raise ValueError(f"{path} is not a report (a JSON object was expected)")
    return report
