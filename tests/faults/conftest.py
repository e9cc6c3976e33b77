"""The fault tests drive the real window too: the same ``window`` fixture as tests/gui."""

from tests.gui.conftest import open_window, window  # noqa: F401 - fixtures, registered by being here
