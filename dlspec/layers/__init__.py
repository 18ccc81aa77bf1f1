"""The layer kinds dlspec knows, in one registry.

:data:`REGISTRY` knows every kind's name from :data:`dlspec.layers.registry.KINDS` and imports
the module that defines a kind (which registers it with :func:`dlspec.layers.base.register`)
the first time the kind is looked up. To add a module of layer kinds, list its kinds there.
"""

from dlspec.layers.base import Inferred, Layer, LayerError, TensorType, TorchCall
from dlspec.layers.registry import REGISTRY

__all__ = ["REGISTRY", "Inferred", "Layer", "LayerError", "TensorType", "TorchCall"]
