"""The pluggy hook specifications of TransferStudio: one file, every hook documented.

Each hook returns a list of lightweight descriptors; the heavy object (a network, a method) is
built only when the user picks it. Hooks evolve by adding arguments only; an implementation may
accept fewer arguments than its specification.
"""

from __future__ import annotations

import pluggy

from transferstudio.api import PROJECT_NAME, BackboneSpec, DatasetSpec, ExporterSpec, MethodSpec

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def transferstudio_backbones() -> list[BackboneSpec]:
    """Return the backbones this plugin provides (:class:`transferstudio.api.BackboneSpec`)."""


@hookspec
def transferstudio_methods() -> list[MethodSpec]:
    """Return the transfer methods this plugin provides (:class:`transferstudio.api.MethodSpec`)."""


@hookspec
def transferstudio_exporters() -> list[ExporterSpec]:
    """Return the model file formats this plugin can write (:class:`transferstudio.api.ExporterSpec`)."""


@hookspec
def transferstudio_datasets() -> list[DatasetSpec]:
    """Return the data-source formats this plugin reads (:class:`transferstudio.api.DatasetSpec`)."""
