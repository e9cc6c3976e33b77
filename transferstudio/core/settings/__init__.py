"""Experiment files and the settings inside them: the TOML schema, parameter dataclasses, freeze plans."""
