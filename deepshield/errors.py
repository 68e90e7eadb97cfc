"""Errors whose message a user can act on. Every entry point shows `str(error)` as it is."""


class DeepshieldError(Exception):
    """Base class: the message names what went wrong and what to do about it."""


class InvalidImageError(DeepshieldError):
    """The input is not a decodable image, or is too large, empty or truncated."""


class InvalidParameterError(DeepshieldError):
    """An attack or model parameter is out of range or does not fit the model."""


class UnknownModelError(DeepshieldError):
    """The model name is not in the manifest."""


class ManifestError(DeepshieldError):
    """The weights manifest is malformed."""


class WeightsError(DeepshieldError):
    """Weights are missing, unreachable, corrupt, tampered with, or do not fit the network."""


class ServerBusyError(DeepshieldError):
    """Every protection slot is taken and the waiting line is full; retry later."""


class OutOfMemoryError(DeepshieldError):
    """A single photo does not fit in the device's memory even on its own."""


class CopyNotLocatedError(DeepshieldError):
    """A shared copy could not be found in the original: `kind` says why ("too_small",
    "not_this_photo" or "too_altered")."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
