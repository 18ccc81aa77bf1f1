"""Importers: existing PyTorch and ONNX models -> dlspec spec text (and their weights).

``torch_fx`` captures a PyTorch module, ``onnx_graph`` an ONNX file (as a torch module first),
``emit`` writes what was captured as a spec, and ``pipeline`` runs the steps. Everything here
imports torch; ``dlspec check`` reaches it only for a ``MODULE:CALLABLE`` target.
"""
