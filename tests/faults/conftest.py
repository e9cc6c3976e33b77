"""The fault tests drive the real window too: the same ``window`` fixture as tests/gui."""

from tests.gui.conftest import window  # noqa: F401 - a fixture, registered by being here
