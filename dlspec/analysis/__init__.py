"""Semantic analysis: names, arguments, shapes, parameters, MACs, memory and lints."""
