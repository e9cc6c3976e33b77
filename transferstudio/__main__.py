"""``python -m transferstudio`` (also what ``torchrun -m transferstudio`` runs)."""

from transferstudio.cli import main

raise SystemExit(main())
