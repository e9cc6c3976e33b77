"""The PySide6 + pyqtgraph window: adapts core objects to widgets, never holds training logic."""
