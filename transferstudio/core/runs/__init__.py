"""The workspace of runs: the SQLite index, run folders, checkpoints, resume, and a finished run's model used again."""
