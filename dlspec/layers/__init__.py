"""The layer kinds dlspec knows, in one registry.

Importing this package imports every layer module, and each module registers its kinds with
:func:`dlspec.layers.base.register`. To add a module of layer kinds, add it to the import
below (one line per module, alphabetical).
"""

from dlspec.layers import (  # noqa: F401  (imported to register their layer kinds)
    activation,
    arithmetic,
    attention,
    conditioning,
    conv,
    dense,
    embedding,
    merge,
    norm,
    pad,
    pool,
    recurrent,
    sampling,
    shape,
    window,
)
from dlspec.layers.base import REGISTRY, Inferred, Layer, LayerError, TensorType, TorchCall

__all__ = ["REGISTRY", "Inferred", "Layer", "LayerError", "TensorType", "TorchCall"]
