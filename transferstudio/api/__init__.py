"""The public plugin API of TransferStudio.

Everything a plugin author (and every built-in plugin) may use lives here: the ``hookimpl``
marker, the spec dataclasses the hooks return, the :class:`TransferMethod` base class, the
:class:`MethodContext` the engine hands to a method, the parameter helper :func:`param`, and the
error types whose messages are shown to users.

A plugin module declares the API version it was written for::

    TRANSFERSTUDIO_API_VERSION = "1.6"

The host accepts a plugin when the major versions match and the plugin's minor version is not
newer than the host's (:func:`is_compatible`). This package does not import torch, so listing
plugins stays fast; torch is imported where models are built or trained.

Import everything from ``transferstudio.api`` itself; the submodules only group the names:
``errors`` (messages for users), ``data`` (roles, data sources, episodes), ``detection``
(tasks, boxes and detection data), ``models``
(backbones, preprocessing, exporters), ``methods`` (the method base class, its context and
declaration) and ``freeze`` (freeze plans and BatchNorm modes).
"""

from __future__ import annotations

import pluggy

# The public names, grouped by submodule; each submodule's __all__ lists its share.
from transferstudio.api import data, detection, errors, freeze, methods, models
from transferstudio.api.data import *  # noqa: F403
from transferstudio.api.detection import *  # noqa: F403
from transferstudio.api.errors import *  # noqa: F403
from transferstudio.api.freeze import *  # noqa: F403
from transferstudio.api.methods import *  # noqa: F403
from transferstudio.api.models import *  # noqa: F403

__all__ = ["API_VERSION", "PROJECT_NAME", "hookimpl", "is_compatible"]
__all__ += data.__all__
__all__ += detection.__all__
__all__ += errors.__all__
__all__ += freeze.__all__
__all__ += methods.__all__
__all__ += models.__all__

API_VERSION = "1.6"
"""Version of this API. Minor bumps only add; a major bump may remove or change.

1.1 added data roles (``ROLE_*``, ``MethodSpec.optional_roles``), ``MethodContext.build_backbone``,
``load_run_model``, ``episodes``, ``tasks``, ``has_role``, ``backbone_name``,
``preprocessing``, ``loader(role=, views=)``, :func:`draw_episodes`, ``ExporterSpec.load``, and
``TransferMethod.evaluate``, ``epoch_diagnostics`` and ``steps_per_epoch``.

1.2 added ``MethodSpec.distributed`` (training under torchrun), ``MethodSpec.support_set`` and
``TransferMethod.classifier_from_support``: methods that
learn no fixed classes (few-shot) predict the classes of a support folder given at prediction
time; the bundle entry names ``BUNDLE_WEIGHTS_ENTRY``, ``BUNDLE_MANIFEST_ENTRY``; and
``BackboneSpec.packaged_weights`` (pretrained weights shipped with the plugin) and
``DatasetSpec.write_example`` (a small example of a data format, for the test kit).

1.3 added ``MethodSpec.baseline``: the method that trains the same model without this method's
transfer, for the transfer-gain baseline (``transferstudio baseline``).

1.4 added ``MethodContext.train``: the experiment's ``train`` settings (read-only), so a
method can read ``lr``, ``weight_decay``, ``epochs`` or ``seed``.

1.5 added ``MethodSpec.layer_tree`` (:class:`LayerTreeSpec`): a method declares that it honours
the window's layer tree, which module the tree shows and which settings carry the freeze plan
and the BN mode.

1.6 added tasks and object detection (``detection``): ``TASK_*``, ``ROLE_DETECTION``,
:class:`Box`, :class:`DetectionSample`, :class:`DetectionListing`; ``MethodSpec.task`` and
``DatasetSpec.task`` (which task a method or data format serves); ``BackboneSpec.stages`` (the
modules whose outputs are the backbone's feature maps, for detectors);
``MethodContext.build_detector``."""

PROJECT_NAME = "transferstudio"
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Decorator marking a function as a TransferStudio hook implementation."""


def is_compatible(plugin_version: str, host_version: str = API_VERSION) -> bool:
    """True when a plugin written for ``plugin_version`` can run on ``host_version``."""
    try:
        p_major, p_minor = (int(x) for x in str(plugin_version).split(".")[:2])
        h_major, h_minor = (int(x) for x in host_version.split(".")[:2])
    except ValueError:
        return False
    return p_major == h_major and p_minor <= h_minor
