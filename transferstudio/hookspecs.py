"""The pluggy hook specifications of TransferStudio: one file, every hook documented.

Each hook takes no arguments and returns a list (or tuple) of lightweight descriptors; the
heavy object (a network, a method) is built only when the user picks it. Hooks evolve by adding
arguments only; an implementation may accept fewer arguments than its specification.

The host calls each plugin's hooks one by one and checks every spec before registering it
(:func:`transferstudio.core.plugins.spec_checks.check_spec`): a return value that is not a list of the
hook's spec type (a dict, say), a spec whose declaration is unsound (a setting's default
outside its own range, preprocessing the pipeline cannot apply) and a name another plugin
already provides are reported on the plugin, naming it, and left out. See docs/plugins.md.
"""

from __future__ import annotations

import pluggy

from transferstudio.api import PROJECT_NAME, BackboneSpec, DatasetSpec, ExporterSpec, MethodSpec

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def transferstudio_backbones() -> list[BackboneSpec]:
    """Return the backbones this plugin provides (:class:`transferstudio.api.BackboneSpec`),
    each with a unique ``name``; its ``preprocessing`` is checked at load."""


@hookspec
def transferstudio_methods() -> list[MethodSpec]:
    """Return the transfer methods this plugin provides (:class:`transferstudio.api.MethodSpec`),
    each with a unique ``name``; every field of its ``params`` dataclass needs a default that
    fits the field's own type, range and choices."""


@hookspec
def transferstudio_exporters() -> list[ExporterSpec]:
    """Return the model file formats this plugin can write (:class:`transferstudio.api.ExporterSpec`),
    each with a unique ``format``."""


@hookspec
def transferstudio_datasets() -> list[DatasetSpec]:
    """Return the data-source formats this plugin reads (:class:`transferstudio.api.DatasetSpec`),
    each with a unique ``name`` (the value of ``data.source``)."""
