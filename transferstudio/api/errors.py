"""The error types of the plugin API: their messages are shown to users as they are."""

__all__ = [
    "DataError",
    "ExperimentError",
    "PluginError",
    "TransferStudioError",
    "WeightsError",
]


class TransferStudioError(Exception):
    """An error whose message is meant for the user: it says what is wrong and what to do."""


class ExperimentError(TransferStudioError):
    """A bad experiment file or setting. ``key`` is the dotted key at fault, when there is one."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class DataError(TransferStudioError):
    """The data cannot be used as given (no images in a class, a single class, ...)."""


class WeightsError(TransferStudioError):
    """Weights could not be loaded (missing file, key mismatch, unsafe pickle)."""


class PluginError(TransferStudioError):
    """A plugin is missing, broken or incompatible."""
