"""``python -m transferstudio.cli``, as the single-file module allowed (``python -m
transferstudio`` is the usual way)."""

from transferstudio.cli import main

raise SystemExit(main())
