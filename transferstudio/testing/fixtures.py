"""The test kit's pytest fixtures. Installed TransferStudio registers this module as a pytest
plugin (entry point ``pytest11``), so any test suite can use them without importing anything.
"""

from __future__ import annotations

import pytest

from transferstudio.testing.conformance import check_plugin, isolated_host


@pytest.fixture
def plugin_host():
    """Factory: ``plugin_host(my_plugin, builtins=False)`` -> a plugin host holding only the
    plugins given (and the kit's tiny backbone); nothing installed is discovered."""
    return isolated_host


@pytest.fixture
def plugin_conformance(tmp_path):
    """Factory: ``plugin_conformance(my_plugin, params=None)`` -> a
    :class:`~transferstudio.testing.ConformanceReport` of every spec the plugin provides
    (``report.ok``; ``report.text()`` for the assertion message). Generated data and written
    files stay under the test's ``tmp_path``."""

    def run(plugin, params=None):
        return check_plugin(plugin, params, tmp_path / "conformance")

    return run
