"""The dialogs the window opens over its panels."""
