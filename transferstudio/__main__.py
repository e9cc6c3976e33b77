"""``python -m transferstudio`` (also what ``torchrun -m transferstudio`` runs)."""

from transferstudio.cli import main
from transferstudio.cli.common import exit_process

exit_process(main())
