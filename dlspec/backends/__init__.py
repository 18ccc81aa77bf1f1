"""Backends: what a checked spec becomes (PyTorch code, ONNX, Graphviz diagrams).

Each backend consumes the analyzer's :class:`~dlspec.analysis.graph.ModelGraph` and never
branches on a layer's kind: everything layer-specific comes from the layer class.
"""
