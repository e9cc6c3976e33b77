"""The test kit for plugin authors.

``transferstudio.testing`` checks that a plugin keeps the contract of :mod:`transferstudio.api`,
with the real engine and exporters (no mocks), on data it generates:

- :func:`isolated_host` builds a plugin host holding only the plugins given (nothing installed
  is discovered), so a test sees exactly the plugin under test;
- :func:`check_plugin` exercises every spec a plugin provides: a backbone builds and yields its
  declared feature width (and loads the weights it ships); a method trains two steps on
  synthetic data with a finite loss; an exporter writes a small model and reloads it with the
  same outputs; a data source lists the example it writes and every listed image opens;
- :func:`assert_conforms` is the same as one assertion, for a plugin's own tests.

Installed TransferStudio registers :mod:`transferstudio.testing.fixtures` as a pytest plugin
(entry point ``pytest11``): the fixtures ``plugin_host`` and ``plugin_conformance`` are available
in every test suite without imports. The command ``transferstudio plugins check NAME`` runs the
same checks on an installed plugin.
"""

from transferstudio.testing.conformance import (
    KIT_BACKBONE,
    CheckResult,
    ConformanceReport,
    assert_conforms,
    check_plugin,
    isolated_host,
    kit_plugin,
)
from transferstudio.testing.synthetic import write_class_folders

__all__ = [
    "KIT_BACKBONE",
    "CheckResult",
    "ConformanceReport",
    "assert_conforms",
    "check_plugin",
    "isolated_host",
    "kit_plugin",
    "write_class_folders",
]
