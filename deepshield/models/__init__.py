"""Generator architectures. Importing this package registers all of them."""

from deepshield.models import cyclegan, ganimation, pix2pixhd, stargan  # noqa: F401  (registration)
from deepshield.models.registry import (
    ARCHITECTURES,
    Architecture,
    CheckpointFormat,
    Generator,
    StateDict,
    get_architecture,
)

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "CheckpointFormat",
    "Generator",
    "StateDict",
    "get_architecture",
]
