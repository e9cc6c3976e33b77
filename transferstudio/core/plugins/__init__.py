"""The plugin host: loading entry-point plugins, checking their declarations, calling their hooks without letting one failure stop the rest."""
