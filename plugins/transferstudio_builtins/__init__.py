"""TransferStudio's built-in plugins: torchvision backbones, image-folder and CSV data sources,
the Pascal VOC, COCO and YOLO detection data formats,
the fine-tune and feature-extract methods, and the safetensors, TorchScript and ONNX exporters.

They are loaded through the ``transferstudio`` entry-point group like any third-party plugin and
use only :mod:`transferstudio.api`.
"""

from transferstudio.api import hookimpl

from .backbones import torchvision_backbones
from .datasets import csv_source, image_folder_source
from .detect import DETECT
from .detection_sources import detection_sources
from .distill import DISTILL
from .domain_adapt import DAN, DANN
from .exporters import builtin_exporters
from .feature_extract import FEATURE_EXTRACT
from .fine_tune import FINE_TUNE
from .fusion import FUSION
from .maml import MAML
from .multitask import MULTITASK
from .protonet import PROTONET
from .simclr import SIMCLR
from .small_backbones import small_backbones

TRANSFERSTUDIO_API_VERSION = "1.6"


@hookimpl
def transferstudio_backbones():
    return torchvision_backbones() + small_backbones()


@hookimpl
def transferstudio_datasets():
    return [image_folder_source(), csv_source(), *detection_sources()]


@hookimpl
def transferstudio_methods():
    return [
        FINE_TUNE,
        FEATURE_EXTRACT,
        DAN,
        DANN,
        DISTILL,
        FUSION,
        PROTONET,
        MAML,
        MULTITASK,
        SIMCLR,
        DETECT,
    ]


@hookimpl
def transferstudio_exporters():
    return builtin_exporters()
